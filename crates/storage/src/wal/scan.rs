//! Reading segments frame by frame, start-up recovery, and the reports of
//! `eddy log inspect` and `eddy log verify`.
//!
//! Recovery reads every retained segment from the first, checking both CRCs of every
//! frame and that lsns follow one another, and hands each frame after the checkpoint to
//! the caller to replay. What it tolerates, and what it refuses:
//! - Zeros where a frame would start: the end of that segment's frames.
//! - A bad frame (torn, cut short, failing a CRC) in the newest segment with no intact
//!   frame after it: the tail of a write that a crash cut before its fdatasync returned,
//!   so never acknowledged. It is dropped (zeroed), with a warning.
//! - A bad frame anywhere else, or one followed by an intact later frame: damage. A group
//!   is written only after the one before it was made durable, so an intact frame after a
//!   bad one means the bad one had been durable. Start-up stops, naming the segment and
//!   offset; nothing is ever skipped silently.
//! - A checkpoint that is not continuous with the log (its lsn before the first retained
//!   frame, or after the last one): damage.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::frame::{
    self, FRAME_ALIGN, FRAME_HEADER_BYTES, FRAME_MAGIC, FrameHeader, Parsed, SEG_HEADER_BYTES,
};
use super::{Seg, seg_path};

/// What the next position of a segment holds.
pub enum Step {
    /// An intact frame: its header, entries section and (if asked for) redo section.
    Frame {
        at: u64,
        h: FrameHeader,
        entries: Vec<u8>,
        redo: Vec<u8>,
    },
    /// No more frames.
    End { at: u64 },
    /// Not an intact frame.
    Bad { at: u64, why: String },
}

/// Reads a segment's frames in order.
pub struct SegReader {
    r: BufReader<File>,
    offset: u64,
    limit: u64,
}

impl SegReader {
    /// Opens `path` to read frames from `from` up to `limit` (an offset; `u64::MAX` for the
    /// whole file).
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path, from: u64, limit: u64) -> io::Result<SegReader> {
        let f = File::open(path)?;
        let len = f.metadata()?.len();
        let mut r = BufReader::with_capacity(256 * 1024, f);
        r.seek(io::SeekFrom::Start(from))?;
        Ok(SegReader {
            r,
            offset: from,
            limit: limit.min(len),
        })
    }

    /// The offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads the next frame; `with_redo` also reads and checks its redo section (else it
    /// is skipped unchecked).
    ///
    /// # Errors
    /// On I/O failure.
    pub fn next(&mut self, with_redo: bool) -> io::Result<Step> {
        let at = self.offset;
        if at >= self.limit {
            return Ok(Step::End { at });
        }
        let room = self.limit - at;
        let mut hb = [0u8; FRAME_HEADER_BYTES];
        if room < FRAME_HEADER_BYTES as u64 {
            let mut rest = vec![0u8; room as usize];
            self.r.read_exact(&mut rest)?;
            self.offset = self.limit;
            return Ok(if rest.iter().all(|&b| b == 0) {
                Step::End { at }
            } else {
                Step::Bad {
                    at,
                    why: "frame header cut short by the end of the file".into(),
                }
            });
        }
        self.r.read_exact(&mut hb)?;
        let h = match frame::parse_header(&hb) {
            Parsed::End => {
                // Unread: a later append may fill it.
                self.r.seek_relative(-(FRAME_HEADER_BYTES as i64))?;
                return Ok(Step::End { at });
            }
            Parsed::Bad(why) => return Ok(self.bad(at, why)),
            Parsed::Header(h) => h,
        };
        if u64::from(h.total_len) > room {
            return Ok(self.bad(at, "frame runs past the end of the written log"));
        }
        let mut entries = vec![0u8; h.entries_len as usize];
        self.r.read_exact(&mut entries)?;
        if !frame::head_ok(&hb, &entries) {
            return Ok(self.bad(at, "checksum mismatch in the frame header or entries"));
        }
        let redo_len = h.redo_len();
        let mut redo = Vec::new();
        if with_redo {
            redo.resize(redo_len, 0);
            self.r.read_exact(&mut redo)?;
            if !frame::redo_ok(&h, &redo) {
                return Ok(self.bad(at, "checksum mismatch in the redo section"));
            }
        } else {
            self.r.seek_relative(redo_len as i64)?;
        }
        let next = h.next_offset(at).min(self.limit);
        let pad = next - (at + u64::from(h.total_len));
        self.r.seek_relative(pad as i64)?;
        self.offset = next;
        Ok(Step::Frame {
            at,
            h,
            entries,
            redo,
        })
    }

    fn bad(&mut self, at: u64, why: &str) -> Step {
        // Stop here: nothing after a bad frame is read as frames.
        self.limit = at;
        Step::Bad {
            at,
            why: why.to_string(),
        }
    }
}

/// Whether an intact frame with an lsn above `after_lsn` lies after `from` in `f`; also
/// returns the end of the last non-zero byte seen (for zeroing a torn tail).
fn intact_frame_after(f: &File, from: u64, after_lsn: u64) -> io::Result<(Option<u64>, u64)> {
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut base = from;
    let mut last_nonzero = from;
    while base < len {
        let n = ((len - base) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], base)?;
        if let Some(p) = buf[..n].iter().rposition(|&b| b != 0) {
            last_nonzero = base + p as u64 + 1;
        }
        let mut i = (FRAME_ALIGN - base % FRAME_ALIGN) % FRAME_ALIGN;
        // Skip the bad frame's own magic at `from`.
        if base == from {
            i += FRAME_ALIGN;
        }
        while (i as usize) + 4 <= n {
            let w = u32::from_le_bytes(buf[i as usize..i as usize + 4].try_into().unwrap());
            if w == FRAME_MAGIC {
                let at = base + i;
                if let Some(h) = frame_at(f, at, len)? {
                    if h.lsn > after_lsn {
                        return Ok((Some(at), last_nonzero));
                    }
                }
            }
            i += FRAME_ALIGN;
        }
        base += n as u64;
    }
    Ok((None, last_nonzero))
}

/// The intact frame at `at`, if there is one.
fn frame_at(f: &File, at: u64, len: u64) -> io::Result<Option<FrameHeader>> {
    if at + FRAME_HEADER_BYTES as u64 > len {
        return Ok(None);
    }
    let mut hb = [0u8; FRAME_HEADER_BYTES];
    f.read_exact_at(&mut hb, at)?;
    let Parsed::Header(h) = frame::parse_header(&hb) else {
        return Ok(None);
    };
    if at + u64::from(h.total_len) > len {
        return Ok(None);
    }
    let mut body = vec![0u8; h.total_len as usize - FRAME_HEADER_BYTES];
    f.read_exact_at(&mut body, at + FRAME_HEADER_BYTES as u64)?;
    let (entries, redo) = body.split_at(h.entries_len as usize);
    Ok((frame::head_ok(&hb, entries) && frame::redo_ok(&h, redo)).then_some(h))
}

/// The segment files in `dir`, by sequence number.
///
/// # Errors
/// When the directory cannot be read.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let seq = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            out.push((seq, p));
        }
    }
    out.sort();
    Ok(out)
}

/// How [`scan_log`] treats what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Start-up: drop a torn tail and unused trailing segments, refuse damage.
    Recover,
    /// Read only: report everything, change nothing.
    Report,
}

/// One segment as a scan found it.
#[derive(Debug, Clone)]
pub struct SegReport {
    pub seq: u64,
    pub path: PathBuf,
    pub file_bytes: u64,
    pub frames: u64,
    pub seg: Seg,
    /// The clusterTime key of the first entry, if any.
    pub first_entry_ts: Option<u64>,
}

/// What a scan of the whole log found.
#[derive(Debug, Default)]
pub struct ScanReport {
    pub segs: Vec<SegReport>,
    /// A torn tail: segment path, offset, and why.
    pub torn: Option<(PathBuf, u64, String)>,
    /// Damage that makes the log unusable, with where it is.
    pub damage: Vec<String>,
    pub last_lsn: u64,
    pub last_ts: u64,
    /// Empty segments after the last written one (prepared ahead; removed on recovery).
    pub unused: Vec<PathBuf>,
}

/// Reads every retained segment from the first, checking every frame. Call
/// [`Scanner::next_frame`] until it returns `None`, then [`Scanner::finish`].
pub struct Scanner {
    mode: Mode,
    checkpoint_lsn: u64,
    rep: ScanReport,
    files: std::vec::IntoIter<(u64, PathBuf, u64)>,
    n_left: usize,
    cur: Option<Cur>,
    prev_lsn: Option<u64>,
    last_ts: u64,
}

struct Cur {
    r: SegReader,
    report: SegReport,
    newest: bool,
}

/// One intact frame: header, entries section, redo section.
pub type ScannedFrame = (FrameHeader, Vec<u8>, Vec<u8>);

impl Scanner {
    /// Lists and checks the segment files of `dir`; `checkpoint_lsn` is the lsn the
    /// tables hold (for the continuity check).
    ///
    /// # Errors
    /// I/O failures; in [`Mode::Recover`], damage.
    pub fn new(dir: &Path, mode: Mode, checkpoint_lsn: u64) -> Result<Scanner, String> {
        let files = list_segments(dir).map_err(|e| io_err(dir, &e))?;
        let mut rep = ScanReport::default();
        // Which files hold frames: the first frame position is not zeros.
        let mut written = Vec::new();
        for (seq, path) in &files {
            let f = File::open(path).map_err(|e| io_err(path, &e))?;
            let len = f.metadata().map_err(|e| io_err(path, &e))?.len();
            let want = (SEG_HEADER_BYTES as usize + FRAME_HEADER_BYTES).min(len as usize);
            let mut head = vec![0u8; want];
            f.read_exact_at(&mut head, 0)
                .map_err(|e| io_err(path, &e))?;
            let has_frames = head.len() > SEG_HEADER_BYTES as usize
                && head[SEG_HEADER_BYTES as usize..].iter().any(|&b| b != 0);
            match frame::check_segment_header(&head) {
                Ok(s) if s == *seq => written.push((*seq, path.clone(), len, has_frames)),
                Ok(s) => rep
                    .damage
                    .push(format!("{}: its header says segment {s}", path.display())),
                // A file the preparer was creating when the server stopped: never used.
                Err(_) if head.iter().all(|&b| b == 0) => rep.unused.push(path.clone()),
                Err(why) => rep.damage.push(format!("{}: {why}", path.display())),
            }
        }
        // Trailing segments without frames were prepared ahead and never written.
        while written.len() > 1 && written.last().is_some_and(|w| !w.3) {
            rep.unused.push(written.pop().unwrap().1);
        }
        for w in written.windows(2) {
            if w[1].0 != w[0].0 + 1 {
                rep.damage.push(format!(
                    "segment {} is missing (between {} and {})",
                    w[0].0 + 1,
                    w[0].1.display(),
                    w[1].1.display()
                ));
            }
        }
        if mode == Mode::Recover && !rep.damage.is_empty() {
            return Err(damage_message(&rep.damage));
        }
        let n_left = written.len();
        let files: Vec<_> = written.into_iter().map(|(s, p, l, _)| (s, p, l)).collect();
        Ok(Scanner {
            mode,
            checkpoint_lsn,
            rep,
            files: files.into_iter(),
            n_left,
            cur: None,
            prev_lsn: None,
            last_ts: 0,
        })
    }

    /// The next intact frame, in lsn order.
    ///
    /// # Errors
    /// I/O failures; in [`Mode::Recover`], damage.
    pub fn next_frame(&mut self) -> Result<Option<ScannedFrame>, String> {
        loop {
            if self.cur.is_none() {
                let Some((seq, path, len)) = self.files.next() else {
                    return Ok(None);
                };
                self.n_left -= 1;
                let r = SegReader::open(&path, SEG_HEADER_BYTES, u64::MAX)
                    .map_err(|e| io_err(&path, &e))?;
                self.cur = Some(Cur {
                    r,
                    report: SegReport {
                        seq,
                        path,
                        file_bytes: len,
                        frames: 0,
                        seg: Seg::empty(seq, self.last_ts),
                        first_entry_ts: None,
                    },
                    newest: self.n_left == 0,
                });
            }
            let cur = self.cur.as_mut().unwrap();
            let path = cur.report.path.clone();
            let step = cur.r.next(true).map_err(|e| io_err(&path, &e))?;
            match step {
                Step::Frame {
                    at,
                    h,
                    entries,
                    redo,
                } => {
                    let mut bad = None;
                    if let Some(p) = self.prev_lsn {
                        if h.lsn != p + 1 {
                            bad = Some(format!("lsn {} follows lsn {p}", h.lsn));
                        }
                    }
                    if h.prior_ts < self.last_ts {
                        bad = Some("clusterTimes go backwards".into());
                    }
                    for e in frame::entries(&entries) {
                        match e {
                            Ok((ts, _)) => {
                                cur.report.first_entry_ts.get_or_insert(ts);
                            }
                            Err(why) => bad = Some(why.into()),
                        }
                    }
                    if let Some(why) = bad {
                        self.rep
                            .damage
                            .push(format!("{} offset {at}: {why}", path.display()));
                        self.end_segment()?;
                        continue;
                    }
                    self.prev_lsn = Some(h.lsn);
                    self.last_ts = h.last_ts;
                    cur.report
                        .seg
                        .add_frame(&h, at, at + u64::from(h.total_len));
                    cur.report.frames += 1;
                    return Ok(Some((h, entries, redo)));
                }
                Step::End { .. } => self.end_segment()?,
                Step::Bad { at, why } => {
                    let f = File::open(&path).map_err(|e| io_err(&path, &e))?;
                    let (later, last_nonzero) =
                        intact_frame_after(&f, at, self.prev_lsn.unwrap_or(0))
                            .map_err(|e| io_err(&path, &e))?;
                    if !cur.newest || later.is_some() {
                        let after = match later {
                            Some(l) => format!(", and an intact frame follows at offset {l}"),
                            None => String::new(),
                        };
                        self.rep.damage.push(format!(
                            "{} is damaged at offset {at}: {why}{after}",
                            path.display()
                        ));
                    } else {
                        self.rep.torn = Some((path.clone(), at, why));
                        if self.mode == Mode::Recover {
                            zero(&path, at, last_nonzero).map_err(|e| io_err(&path, &e))?;
                        }
                    }
                    self.end_segment()?;
                }
            }
        }
    }

    fn end_segment(&mut self) -> Result<(), String> {
        if let Some(cur) = self.cur.take() {
            self.rep.segs.push(cur.report);
        }
        if self.mode == Mode::Recover && !self.rep.damage.is_empty() {
            return Err(damage_message(&self.rep.damage));
        }
        Ok(())
    }

    /// Checks the checkpoint against the log and, when recovering, removes unused
    /// segments.
    ///
    /// # Errors
    /// I/O failures; in [`Mode::Recover`], damage.
    pub fn finish(mut self) -> Result<ScanReport, String> {
        while self.next_frame()?.is_some() {}
        let mut rep = self.rep;
        rep.last_lsn = self.prev_lsn.unwrap_or(0);
        rep.last_ts = self.last_ts;
        let cp = self.checkpoint_lsn;
        if let Some(first) = rep.segs.iter().find(|s| s.seg.first_lsn != 0) {
            if cp + 1 < first.seg.first_lsn {
                rep.damage.push(format!(
                    "the checkpoint holds lsn {cp}, but the log starts at lsn {} ({}): records in between are missing",
                    first.seg.first_lsn,
                    first.path.display()
                ));
            }
        }
        if cp > rep.last_lsn {
            rep.damage.push(format!(
                "the checkpoint holds lsn {cp}, but the log ends at lsn {}: records the checkpoint depends on are missing",
                rep.last_lsn
            ));
        }
        if self.mode == Mode::Recover {
            if !rep.damage.is_empty() {
                return Err(damage_message(&rep.damage));
            }
            for p in &rep.unused {
                std::fs::remove_file(p).map_err(|e| io_err(p, &e))?;
            }
        }
        Ok(rep)
    }
}

fn io_err(p: &Path, e: &io::Error) -> String {
    format!("cannot read {}: {e}", p.display())
}

fn damage_message(damage: &[String]) -> String {
    format!(
        "the write-ahead log is damaged; refusing to start (run `eddy log verify --dbpath <dir>` for a full report): {}",
        damage.join("; ")
    )
}

/// Zeroes `[from, to)` of a segment and makes it durable.
fn zero(path: &Path, from: u64, to: u64) -> io::Result<()> {
    let f = File::options().write(true).open(path)?;
    let z = vec![0u8; 64 * 1024];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(z.len());
        f.write_all_at(&z[..n], at)?;
        at += n as u64;
    }
    f.sync_data()
}

/// The path of the segment numbered `seq` (for messages).
pub fn path_of(dir: &Path, seq: u64) -> PathBuf {
    seg_path(dir, seq)
}
