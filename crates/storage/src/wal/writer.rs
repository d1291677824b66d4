//! Appending frames: one `pwrite` and one `fdatasync` per commit batch, segment rotation,
//! and the preparer thread that zero-fills space ahead of the writer.
//!
//! The preparer and the writer share the active segment's `prepared_end`: the preparer
//! only writes zeros at or beyond the `prepared_end` it started from, and the writer only
//! writes past `prepared_end` while the preparer is idle (then moving `prepared_end` past
//! its own frame). So the two never write the same bytes, and a frame is never overwritten
//! with zeros. Preparation is only about speed: a frame written past the prepared space is
//! just as durable, its fdatasync merely also journals the file's new size.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use super::frame::{self, FrameHeader, SEG_HEADER_BYTES};
use super::{Log, Seg, seg_path};

/// Largest zero-filling step, and the size of a fresh segment file.
const MAX_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

struct PrepState {
    active: Option<Arc<File>>,
    prepared_end: u64,
    busy: bool,
    extend_wanted: bool,
    /// The next segment to create, and the one created.
    next_wanted: Option<u64>,
    next_ready: Option<(u64, File)>,
    creating: bool,
    stop: bool,
}

struct Prep {
    m: Mutex<PrepState>,
    cv: Condvar,
    dir: PathBuf,
    chunk: u64,
}

/// Writes zeros over `[from, to)`.
fn zero_fill(f: &File, from: u64, to: u64) -> io::Result<()> {
    static ZEROS: [u8; 256 * 1024] = [0; 256 * 1024];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(ZEROS.len());
        f.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Makes a directory entry durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates segment `seq`: header, zeros up to `len`, durable (file and directory entry).
pub(crate) fn create_segment(dir: &Path, seq: u64, len: u64) -> io::Result<File> {
    let path = seg_path(dir, seq);
    let f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    f.write_all_at(&frame::segment_header(seq), 0)?;
    zero_fill(&f, SEG_HEADER_BYTES, len.max(SEG_HEADER_BYTES))?;
    f.sync_all()?;
    sync_dir(dir)?;
    Ok(f)
}

fn preparer(p: &Prep) {
    let mut st = p.m.lock().unwrap();
    loop {
        if st.stop {
            return;
        }
        if st.extend_wanted && !st.busy && st.active.is_some() {
            st.extend_wanted = false;
            st.busy = true;
            let file = st.active.clone().unwrap();
            let start = st.prepared_end;
            let end = start + p.chunk;
            drop(st);
            let r = zero_fill(&file, start, end).and_then(|()| file.sync_data());
            st = p.m.lock().unwrap();
            st.busy = false;
            match r {
                Ok(()) => st.prepared_end = st.prepared_end.max(end),
                Err(e) => {
                    tracing::warn!(error = %e, "could not zero-fill the log ahead of the writer")
                }
            }
            p.cv.notify_all();
            continue;
        }
        if let Some(seq) = st.next_wanted.take() {
            st.creating = true;
            drop(st);
            let r = create_segment(&p.dir, seq, p.chunk);
            st = p.m.lock().unwrap();
            st.creating = false;
            match r {
                Ok(f) => st.next_ready = Some((seq, f)),
                Err(e) => tracing::warn!(error = %e, seq, "could not prepare the next log segment"),
            }
            p.cv.notify_all();
            continue;
        }
        st = p.cv.wait(st).unwrap();
    }
}

/// The commit pipeline's end of the log.
pub(crate) struct LogWriter {
    log: Arc<Log>,
    file: Arc<File>,
    seq: u64,
    pos: u64,
    seg_max: u64,
    prep: Arc<Prep>,
    prep_thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Continues the log in segment `seq` (which the read side already lists) at `pos`.
    ///
    /// # Errors
    /// When the segment cannot be opened or the preparer thread cannot start.
    pub(crate) fn open(log: Arc<Log>, seq: u64, pos: u64, seg_max: u64) -> io::Result<LogWriter> {
        let path = seg_path(log.dir(), seq);
        let file = Arc::new(File::options().read(true).write(true).open(path)?);
        let len = file.metadata()?.len();
        let prep = Arc::new(Prep {
            m: Mutex::new(PrepState {
                active: Some(file.clone()),
                prepared_end: len,
                busy: false,
                extend_wanted: false,
                next_wanted: Some(seq + 1),
                next_ready: None,
                creating: false,
                stop: false,
            }),
            cv: Condvar::new(),
            dir: log.dir().to_path_buf(),
            chunk: seg_max.min(MAX_CHUNK_BYTES),
        });
        let p = prep.clone();
        let prep_thread = std::thread::Builder::new()
            .name("eddy-log-prep".into())
            .spawn(move || preparer(&p))?;
        Ok(LogWriter {
            log,
            file,
            seq,
            pos: frame::align(pos),
            seg_max,
            prep,
            prep_thread: Some(prep_thread),
        })
    }

    /// Appends one frame and makes it durable; `h` describes it.
    ///
    /// # Errors
    /// On I/O failure: the log may then hold part of the frame, and nothing more may be
    /// appended (the caller must stop writing).
    pub(crate) fn append(&mut self, bytes: &[u8], h: &FrameHeader) -> io::Result<()> {
        if self.pos >= self.seg_max {
            self.rotate()?;
        }
        let len = bytes.len() as u64;
        self.reserve(len);
        self.file.write_all_at(bytes, self.pos)?;
        let t = std::time::Instant::now();
        self.file.sync_data()?;
        let m = &*crate::metrics::METRICS;
        m.fsync_seconds.observe(t.elapsed().as_secs_f64());
        m.fsyncs.inc();
        m.log_bytes.inc_by(len);
        let at = self.pos;
        self.pos += len;
        let seq = self.seq;
        self.log.with_segs(|segs| {
            if let Some(s) = segs.iter_mut().rev().find(|s| s.seq == seq) {
                s.add_frame(h, at, at + u64::from(h.total_len));
            }
        });
        Ok(())
    }

    /// Removes the frames from `lsn` on (the replicated log truncates entries its leader
    /// does not have): zeros them, durably, deletes later segments, and continues writing
    /// where the frame before `lsn` ended.
    ///
    /// # Errors
    /// On I/O failure; the log may then be left partly truncated, and nothing more may be
    /// appended.
    pub(crate) fn truncate_from(&mut self, lsn: u64) -> io::Result<()> {
        let segs = self.log.segs();
        let Some(target) = segs
            .iter()
            .find(|s| s.first_lsn != 0 && s.first_lsn <= lsn && lsn <= s.last_lsn)
            .cloned()
        else {
            return Ok(());
        };
        // The frame's offset, found from the nearest index point.
        let path = seg_path(self.log.dir(), target.seq);
        let mut r = super::scan::SegReader::open(&path, target.lsn_offset(lsn), target.end)?;
        let at = loop {
            match r.next(false)? {
                super::scan::Step::Frame { at, h, .. } if h.lsn == lsn => break at,
                super::scan::Step::Frame { .. } => {}
                _ => {
                    return Err(io::Error::other(format!(
                        "log frame {lsn} not found in segment {}",
                        target.seq
                    )));
                }
            }
        };
        // Let the preparer finish whatever it is doing; the next segment is made afresh.
        let p = self.prep.clone();
        {
            let mut st = p.m.lock().unwrap();
            while st.busy || st.creating {
                st = p.cv.wait(st).unwrap();
            }
            st.next_wanted = None;
            if let Some((seq, _)) = st.next_ready.take() {
                let _ = std::fs::remove_file(seg_path(self.log.dir(), seq));
            }
        }
        for s in segs.iter().filter(|s| s.seq > target.seq) {
            match std::fs::remove_file(seg_path(self.log.dir(), s.seq)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let file = if target.seq == self.seq {
            self.file.clone()
        } else {
            Arc::new(File::options().read(true).write(true).open(&path)?)
        };
        let old_end = if target.seq == self.seq {
            self.pos
        } else {
            target.end
        };
        zero_fill(&file, at, old_end.max(at))?;
        file.sync_data()?;
        sync_dir(self.log.dir())?;
        // The segment as it now is: its frames before `at`.
        let mut seg = Seg::empty(target.seq, target.prior_ts);
        let mut r = super::scan::SegReader::open(&path, SEG_HEADER_BYTES, at)?;
        while let super::scan::Step::Frame { at, h, .. } = r.next(false)? {
            seg.add_frame(&h, at, at + u64::from(h.total_len));
        }
        self.log.with_segs(|segs| {
            segs.retain(|s| s.seq < target.seq);
            segs.push(seg);
        });
        self.log.trim_tail(target_prior(&self.log));
        let len = file.metadata()?.len();
        {
            let mut st = p.m.lock().unwrap();
            st.active = Some(file.clone());
            st.prepared_end = len.max(at);
            st.extend_wanted = false;
            st.next_wanted = Some(target.seq + 1);
            p.cv.notify_all();
        }
        self.file = file;
        self.seq = target.seq;
        self.pos = at;
        Ok(())
    }

    /// Starts the log afresh after an installed image (see `crate::image`): continues in
    /// a new, empty segment whose history begins at clusterTime key `prior_ts`, and
    /// deletes every older segment.
    ///
    /// # Errors
    /// On I/O failure; nothing more may be appended then.
    pub(crate) fn restart(&mut self, prior_ts: u64) -> io::Result<()> {
        self.rotate()?;
        let seq = self.seq;
        self.log.with_segs(|segs| {
            if let Some(s) = segs.last_mut() {
                s.prior_ts = prior_ts;
                s.last_ts = prior_ts;
            }
        });
        let failed = self.log.remove_before(seq);
        self.log.trim_tail(prior_ts);
        if let Some((_, e)) = failed.into_iter().next() {
            return Err(e);
        }
        sync_dir(self.log.dir())
    }

    /// Waits, if needed, until the frame about to be written cannot meet the preparer's
    /// zeros, and asks for more zeros when they run low.
    fn reserve(&self, len: u64) {
        let p = &self.prep;
        let want = self.pos + len;
        let mut st = p.m.lock().unwrap();
        loop {
            if want <= st.prepared_end {
                break;
            }
            if st.busy {
                st = p.cv.wait(st).unwrap();
                continue;
            }
            st.prepared_end = want;
            break;
        }
        if st.prepared_end - want < p.chunk / 2 && !st.busy && !st.extend_wanted {
            st.extend_wanted = true;
            p.cv.notify_all();
        }
    }

    /// Seals the active segment and continues in the next one.
    fn rotate(&mut self) -> io::Result<()> {
        let next = self.seq + 1;
        let p = self.prep.clone();
        let ready = {
            let mut st = p.m.lock().unwrap();
            while st.busy || st.creating || st.next_wanted == Some(next) {
                st = p.cv.wait(st).unwrap();
            }
            st.next_ready.take().filter(|(s, _)| *s == next)
        };
        let file = match ready {
            Some((_, f)) => f,
            None => create_segment(&p.dir, next, p.chunk)?,
        };
        let file = Arc::new(file);
        let len = file.metadata()?.len();
        // The sealed segment's zeros past its last frame are no longer needed.
        self.file.set_len(self.pos)?;
        self.log.with_segs(|segs| {
            let prior = segs.last().map_or(0, |s| s.last_ts);
            segs.push(Seg::empty(next, prior));
        });
        {
            let mut st = p.m.lock().unwrap();
            st.active = Some(file.clone());
            st.prepared_end = len;
            st.extend_wanted = false;
            st.next_wanted = Some(next + 1);
            p.cv.notify_all();
        }
        self.file = file;
        self.seq = next;
        self.pos = SEG_HEADER_BYTES;
        Ok(())
    }
}

/// The newest clusterTime key the log still holds.
fn target_prior(log: &Log) -> u64 {
    log.segs().last().map_or(0, |s| s.last_ts)
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.prep.m.lock().unwrap().stop = true;
        self.prep.cv.notify_all();
        if let Some(h) = self.prep_thread.take() {
            let _ = h.join();
        }
    }
}
