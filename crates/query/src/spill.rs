//! Memory limits for blocking stages, and spilling to disk when they are passed.
//!
//! A blocking `$sort` or `$group` may hold [`Limits::max_bytes`] (MongoDB's 100 MB,
//! `internalQueryMaxBlockingSortMemoryUsageBytes`) of documents, measured by
//! [`doc_size`]. Past it, without `allowDiskUse` the operation fails with
//! `QueryExceededMemoryLimitNoDiskUseAllowed` (292); with it, the buffer is written out as
//! a sorted run to a temporary file under the data directory, and the runs are merged.
//!
//! Run files are unlinked as soon as they are created: they vanish with the last handle,
//! whether the operation finishes, fails, or the server dies.

use std::cmp::Ordering;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use bson::{Bson, Document};
use errors::{ErrorCode, MongoError, Result};

/// MongoDB's default limit for a blocking stage's memory: 100 MiB.
pub const DEFAULT_MAX_BYTES: usize = 100 * 1024 * 1024;

/// How much memory a blocking stage may use, and whether and where it may spill.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes a blocking `$sort` (and a find's in-memory sort) may buffer.
    pub sort_bytes: usize,
    /// Bytes a `$group` may hold in accumulator state.
    pub group_bytes: usize,
    /// Bytes one `$push` and one `$addToSet` may hold (`internalQueryMaxPushBytes`,
    /// `internalQueryMaxAddToSetBytes`): their arrays cannot spill.
    pub push_bytes: usize,
    pub add_to_set_bytes: usize,
    /// `allowDiskUse`.
    pub allow_disk_use: bool,
    /// Where run files go (`<dbpath>/_tmp`); `None` means spilling is impossible.
    pub spill_dir: Option<PathBuf>,
}

static DEFAULT_DIR: std::sync::RwLock<Option<PathBuf>> = std::sync::RwLock::new(None);

/// Where operations without their own limits (a view's pipeline, a change stream's) spill:
/// the server sets it to `<dbpath>/_tmp` when it starts.
pub fn set_default_spill_dir(dir: PathBuf) {
    *DEFAULT_DIR
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(dir);
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            sort_bytes: DEFAULT_MAX_BYTES,
            group_bytes: DEFAULT_MAX_BYTES,
            push_bytes: DEFAULT_MAX_BYTES,
            add_to_set_bytes: DEFAULT_MAX_BYTES,
            allow_disk_use: true,
            spill_dir: DEFAULT_DIR
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        }
    }
}

/// An estimate of a value's size in memory (its heap data plus the container's overhead),
/// the measure the limits apply to.
pub fn bson_size(v: &Bson) -> usize {
    match v {
        Bson::Document(d) => doc_size(d),
        Bson::Array(a) => 24 + a.iter().map(|x| 8 + bson_size(x)).sum::<usize>(),
        Bson::String(s) | Bson::Symbol(s) | Bson::JavaScriptCode(s) => 24 + s.len(),
        Bson::Binary(b) => 32 + b.bytes.len(),
        Bson::RegularExpression(r) => 48 + r.pattern.len() + r.options.len(),
        Bson::JavaScriptCodeWithScope(c) => 48 + c.code.len() + doc_size(&c.scope),
        _ => 16,
    }
}

/// An estimate of a document's size in memory.
pub fn doc_size(d: &Document) -> usize {
    48 + d
        .iter()
        .map(|(k, v)| 40 + k.len() + bson_size(v))
        .sum::<usize>()
}

/// The error for a stage that passed its limit without `allowDiskUse`.
pub fn sort_limit_error(limit: usize) -> MongoError {
    MongoError::new(
        ErrorCode::QueryExceededMemoryLimitNoDiskUseAllowed,
        format!(
            "Sort exceeded memory limit of {limit} bytes, but did not opt in to external sorting."
        ),
    )
}

/// `$group`'s wording of the same error.
pub fn group_limit_error() -> MongoError {
    MongoError::new(
        ErrorCode::QueryExceededMemoryLimitNoDiskUseAllowed,
        "Exceeded memory limit for $group, but didn't allow external sort. Pass allowDiskUse:true to opt in.",
    )
}

fn io_err(e: std::io::Error) -> MongoError {
    MongoError::internal(format!("spill file: {e}"))
}

static RUN_SEQ: AtomicU64 = AtomicU64::new(0);

/// How many run files this process has written (for tests and figures).
pub static SPILLED_RUNS: AtomicU64 = AtomicU64::new(0);

/// One sorted run on disk: BSON documents back to back.
pub(crate) struct Run {
    reader: BufReader<File>,
}

impl Run {
    /// Writes documents to a new, already unlinked, file under `dir`.
    pub(crate) fn write<'a>(
        dir: &std::path::Path,
        docs: impl Iterator<Item = &'a Document>,
    ) -> Result<Run> {
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let n = RUN_SEQ.fetch_add(1, AtomicOrdering::Relaxed);
        let path = dir.join(format!("extsort-{}-{n}", std::process::id()));
        let mut file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err)?;
        let _ = std::fs::remove_file(&path);
        {
            let mut w = BufWriter::with_capacity(1 << 20, &mut file);
            for d in docs {
                d.to_writer(&mut w)
                    .map_err(|e| MongoError::internal(format!("spill file: {e}")))?;
            }
            w.flush().map_err(io_err)?;
        }
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        SPILLED_RUNS.fetch_add(1, AtomicOrdering::Relaxed);
        Ok(Run {
            reader: BufReader::with_capacity(256 << 10, file),
        })
    }

    /// The next document, `None` at the end.
    pub(crate) fn next_doc(&mut self) -> Result<Option<Document>> {
        let mut len = [0u8; 4];
        match self.reader.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(io_err(e)),
        }
        let n = i32::from_le_bytes(len);
        if n < 5 {
            return Err(MongoError::internal("spill file: bad document length"));
        }
        let mut buf = vec![0u8; n as usize];
        buf[..4].copy_from_slice(&len);
        self.reader.read_exact(&mut buf[4..]).map_err(io_err)?;
        Document::from_reader(&mut buf.as_slice())
            .map(Some)
            .map_err(|e| MongoError::internal(format!("spill file: {e}")))
    }
}

/// A run's documents in the order written; ends after an error.
pub(crate) struct RunDocs {
    run: Option<Run>,
}

impl RunDocs {
    pub(crate) fn new(run: Run) -> RunDocs {
        RunDocs { run: Some(run) }
    }
}

impl Iterator for RunDocs {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Result<Document>> {
        let r = self.run.as_mut()?.next_doc();
        match r {
            Ok(Some(d)) => Some(Ok(d)),
            Ok(None) => {
                self.run = None;
                None
            }
            Err(e) => {
                self.run = None;
                Some(Err(e))
            }
        }
    }
}

/// A k-way merge of sorted runs by a key each document is given by `key`, ties broken by
/// run order (runs are written in input order, so the merge is stable). Runs are few (one
/// per limit's worth of input), so the smallest head is found by a linear scan.
pub(crate) struct Merge<K> {
    runs: Vec<Run>,
    heads: Vec<Option<(K, Document)>>,
    started: bool,
}

impl<K> Merge<K> {
    pub(crate) fn new(runs: Vec<Run>) -> Merge<K> {
        Merge {
            heads: runs.iter().map(|_| None).collect(),
            runs,
            started: false,
        }
    }

    /// The next document in merged order, with its key.
    pub(crate) fn next_by(
        &mut self,
        key: &mut dyn FnMut(&Document) -> Result<K>,
        cmp: &dyn Fn(&K, &K) -> Ordering,
    ) -> Result<Option<(K, Document)>> {
        if !self.started {
            self.started = true;
            for r in 0..self.runs.len() {
                self.heads[r] = match self.runs[r].next_doc()? {
                    Some(d) => Some((key(&d)?, d)),
                    None => None,
                };
            }
        }
        let mut best: Option<usize> = None;
        for (i, h) in self.heads.iter().enumerate() {
            let Some((k, _)) = h else { continue };
            let better = match best.and_then(|b| self.heads[b].as_ref()) {
                None => true,
                Some((bk, _)) => cmp(k, bk) == Ordering::Less,
            };
            if better {
                best = Some(i);
            }
        }
        let Some(b) = best else { return Ok(None) };
        let next = match self.runs[b].next_doc()? {
            Some(d) => Some((key(&d)?, d)),
            None => None,
        };
        Ok(std::mem::replace(&mut self.heads[b], next))
    }
}
