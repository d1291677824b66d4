//! `eddy log inspect` and `eddy log verify`: what the log holds, and whether it is intact.
//! Both only read; neither needs the server to be stopped.

use std::fmt::Write as _;
use std::path::Path;

use super::read_checkpoint;
use super::scan::{Mode, ScanReport, Scanner};
use crate::oplog::key_ts;

/// A clusterTime key as MongoDB prints it, with its date.
fn ts_text(k: u64) -> String {
    let t = key_ts(k);
    let date = bson::DateTime::from_millis(i64::from(t.time) * 1000)
        .try_to_rfc3339_string()
        .unwrap_or_default();
    format!("Timestamp({}, {}) {date}", t.time, t.increment)
}

fn scan(dbpath: &Path) -> Result<(ScanReport, Option<(u64, u64)>), String> {
    let dir = dbpath.join("log");
    if !dir.is_dir() {
        return Err(format!(
            "{} holds no write-ahead log (no {} directory)",
            dbpath.display(),
            dir.display()
        ));
    }
    let cp = read_checkpoint(&dir);
    let sc = Scanner::new(&dir, Mode::Report, cp.map_or(0, |c| c.0))?;
    Ok((sc.finish()?, cp))
}

fn describe(rep: &ScanReport, cp: Option<(u64, u64)>, out: &mut String) {
    let bytes: u64 = rep.segs.iter().map(|s| s.file_bytes).sum();
    let frames: u64 = rep.segs.iter().map(|s| s.frames).sum();
    let entries: u64 = rep.segs.iter().map(|s| s.seg.entries).sum();
    let _ = writeln!(
        out,
        "{} segments, {:.1} MB on disk, {frames} frames, {entries} oplog entries, lsn {}..{}",
        rep.segs.len(),
        bytes as f64 / 1e6,
        rep.segs
            .iter()
            .find(|s| s.seg.first_lsn != 0)
            .map_or(0, |s| s.seg.first_lsn),
        rep.last_lsn
    );
    match cp {
        Some((lsn, ts)) => {
            let _ = writeln!(out, "checkpoint: lsn {lsn}, {}", ts_text(ts));
        }
        None => {
            let _ = writeln!(out, "checkpoint: none recorded");
        }
    }
    for s in &rep.segs {
        let range = match (s.first_entry_ts, s.seg.entries) {
            (Some(f), n) if n > 0 => format!("{} .. {}", ts_text(f), ts_text(s.seg.last_ts)),
            _ => "no entries".into(),
        };
        let lsns = if s.seg.first_lsn == 0 {
            "empty".to_string()
        } else {
            format!("lsn {}..{}", s.seg.first_lsn, s.seg.last_lsn)
        };
        let _ = writeln!(
            out,
            "  {}  {:>12} bytes  {:>9} frames  {:>9} entries  {lsns}  {range}",
            s.path.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
            s.file_bytes,
            s.frames,
            s.seg.entries
        );
    }
    for p in &rep.unused {
        let _ = writeln!(out, "  {} (prepared, unused)", p.display());
    }
    if let Some((p, at, why)) = &rep.torn {
        let _ = writeln!(
            out,
            "torn tail: {} offset {at}: {why} (a write cut by a crash before it was acknowledged; dropped at the next start)",
            p.display()
        );
    }
}

/// The report of `eddy log inspect`: segments, their sizes, lsn and clusterTime ranges.
///
/// # Errors
/// When the log cannot be read.
pub fn inspect(dbpath: &Path) -> Result<String, String> {
    let (rep, cp) = scan(dbpath)?;
    let mut out = format!("log: {}\n", dbpath.join("log").display());
    describe(&rep, cp, &mut out);
    for d in &rep.damage {
        let _ = writeln!(out, "DAMAGE: {d}");
    }
    Ok(out)
}

/// The report of `eddy log verify` (every CRC, lsn continuity, and the checkpoint's
/// continuity with the log), and whether the log is intact.
///
/// # Errors
/// When the log cannot be read.
pub fn verify(dbpath: &Path) -> Result<(String, bool), String> {
    let (rep, cp) = scan(dbpath)?;
    let mut out = String::new();
    describe(&rep, cp, &mut out);
    if rep.damage.is_empty() {
        let _ = writeln!(
            out,
            "ok: every frame's checksums match, lsns are continuous, and the checkpoint is continuous with the log"
        );
        Ok((out, true))
    } else {
        for d in &rep.damage {
            let _ = writeln!(out, "DAMAGE: {d}");
        }
        Ok((out, false))
    }
}
