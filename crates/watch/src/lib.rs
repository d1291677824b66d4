//! `eddy watch`: a change stream tail for the terminal.
//!
//! It is a client like any other: it opens a change stream with `aggregate` and reads it
//! with `getMore` through the `mongodb` crate, so it works against Eddy or mongod alike.
//! Running the cursor commands itself (rather than through the driver's change stream)
//! gives it the batch boundaries, which is where it saves its position: after a batch is
//! written, the batch's `postBatchResumeToken` goes to the `--state` file, so a restart
//! carries on from exactly there, and an idle stream's position keeps moving.
//!
//! With `--out FILE` as well, a restart is exactly once even after `kill -9`: the state
//! records how long the file was when the token was saved, so lines written after it (a
//! batch cut short by the kill) are recognised, a torn last line is cut off, and that
//! many events of the resumed stream are not written again. To standard output, a kill
//! between writing a batch and saving its token repeats that batch.
//!
//! Network errors and the server's resumable errors (a restart, a step-down) reopen the
//! stream after the last token, waiting up to two seconds between tries, as long as it
//! takes. Errors a retry cannot fix (a bad filter, lost history, no privilege) end it.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bson::{Bson, Document, Timestamp, doc};
use clap::{Args as ClapArgs, ValueEnum};
use mongodb::error::{Error as DriverError, ErrorKind};

/// `eddy watch`'s command line.
#[derive(ClapArgs, Debug, Clone)]
#[command(after_help = "\
Output: one change event per line, as canonical Extended JSON (what `--format json` \
gives), or with `--format pretty` a compact coloured line per event: time, operation, \
namespace, document key and the document or the fields changed. `auto` is pretty on a \
terminal and json otherwise.

Exit status: 0 when the stream ends (an invalidate event: the watched collection or \
database was dropped or renamed), 1 when the server refuses the stream or a retry \
cannot help (a bad filter, history lost, no privilege), 2 for a bad argument.")]
pub struct Args {
    /// Server to connect to, as a MongoDB connection string.
    #[arg(default_value = "mongodb://127.0.0.1:27017")]
    pub uri: String,
    /// Database to watch (without it: every database).
    #[arg(long)]
    pub db: Option<String>,
    /// Collection to watch, in --db (without it: the whole database).
    #[arg(long, requires = "db")]
    pub coll: Option<String>,
    /// A `$match` filter on the events, as (relaxed or canonical) Extended JSON, e.g.
    /// '{"operationType": "insert", "fullDocument.status": "new"}'.
    #[arg(long, value_name = "JSON")]
    pub filter: Option<String>,
    /// fullDocument mode: default, updateLookup, whenAvailable or required.
    #[arg(long = "full-document", value_name = "MODE", value_enum, default_value_t = FullDocument::Default)]
    pub full_document: FullDocument,
    /// fullDocumentBeforeChange mode: off, whenAvailable or required (needs
    /// changeStreamPreAndPostImages on the collection).
    #[arg(long = "full-document-before-change", value_name = "MODE", value_enum, default_value_t = BeforeChange::Off)]
    pub full_document_before_change: BeforeChange,
    /// Resume after this token: the event `_id` as JSON ({"_data": "..."}) or its hex
    /// `_data` string.
    #[arg(
        long = "resume-after",
        value_name = "TOKEN",
        conflicts_with = "start_at"
    )]
    pub resume_after: Option<String>,
    /// Start at this cluster time: seconds since the epoch, `SECONDS,INCREMENT`, or an
    /// RFC 3339 date such as 2026-12-07T10:00:00Z.
    #[arg(long = "start-at", value_name = "TIME")]
    pub start_at: Option<String>,
    /// Keep the position in this file: it is read at start (and takes precedence over
    /// --resume-after/--start-at once it holds a token), and rewritten after each batch.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Append the events to this file rather than standard output; with --state, a
    /// restart after a crash writes each event exactly once.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Auto)]
    pub format: Format,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Events per batch the server may return (the aggregate's and getMore's batchSize).
    #[arg(long = "batch-size", value_name = "N")]
    pub batch_size: Option<u32>,
    /// How long each getMore waits for new events on the server, in milliseconds.
    #[arg(long = "max-await-ms", value_name = "MS", default_value_t = 1000)]
    pub max_await_ms: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
#[value(rename_all = "verbatim")]
pub enum FullDocument {
    #[value(name = "default")]
    Default,
    #[value(name = "updateLookup")]
    UpdateLookup,
    #[value(name = "whenAvailable")]
    WhenAvailable,
    #[value(name = "required")]
    Required,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeforeChange {
    #[value(name = "off")]
    Off,
    #[value(name = "whenAvailable")]
    WhenAvailable,
    #[value(name = "required")]
    Required,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Auto,
    Json,
    Pretty,
}

/// Why the tail stopped.
#[derive(Debug)]
pub enum Failure {
    /// A bad argument (exit status 2).
    Usage(String),
    /// The server refused, or something a retry cannot fix (exit status 1).
    Fatal(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(m) | Failure::Fatal(m) => f.write_str(m),
        }
    }
}

/// Runs the tail until the stream ends, `--limit` is reached or an error a retry cannot
/// fix; prints the error and returns the exit status.
pub async fn main(args: Args) -> ExitCode {
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("eddy watch: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Fatal(m)) => {
            eprintln!("eddy watch: {m}");
            ExitCode::from(1)
        }
    }
}

/// Where the stream starts.
#[derive(Debug, Clone, PartialEq)]
enum Start {
    Now,
    /// `startAfter` a token: what a saved position resumes with (it also works after an
    /// invalidate event).
    After(Document),
    At(Timestamp),
}

/// The `--state` file: the last token saved and the `--out` file's length then.
#[derive(Debug, Clone, PartialEq)]
struct State {
    token: Document,
    out_bytes: Option<u64>,
}

fn read_state(path: &Path) -> Result<Option<State>, Failure> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Failure::Fatal(format!(
                "cannot read the state file {}: {e}",
                path.display()
            )));
        }
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    let bad = |why: String| Failure::Fatal(format!("state file {}: {why}", path.display()));
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let doc = match Bson::try_from(json) {
        Ok(Bson::Document(d)) => d,
        _ => return Err(bad("not a JSON object".into())),
    };
    let token = doc
        .get_document("resumeToken")
        .map_err(|_| bad("no resumeToken object".into()))?
        .clone();
    let out_bytes = match doc.get("outBytes") {
        Some(Bson::Int64(n)) => Some(u64::try_from(*n).unwrap_or(0)),
        Some(Bson::Int32(n)) => Some(u64::try_from(*n).unwrap_or(0)),
        _ => None,
    };
    Ok(Some(State { token, out_bytes }))
}

/// Writes the state beside its final name, syncs it and renames it over, so the file
/// always holds a whole state.
fn write_state(path: &Path, state: &State) -> std::io::Result<()> {
    let mut d = doc! {"resumeToken": state.token.clone()};
    if let Some(n) = state.out_bytes {
        d.insert("outBytes", n as i64);
    }
    let text = Bson::Document(d).into_canonical_extjson().to_string();
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)
}

/// `--resume-after`: `{"_data": "..."}` or the bare hex string.
fn parse_token(s: &str) -> Result<Document, Failure> {
    let s = s.trim();
    if !s.starts_with('{') {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(doc! {"_data": s});
        }
        return Err(Failure::Usage(format!(
            "--resume-after expects a token such as {{\"_data\": \"8263...\"}} or its hex string, got '{s}'"
        )));
    }
    match parse_json_doc(s) {
        Ok(d) => Ok(d),
        Err(e) => Err(Failure::Usage(format!("--resume-after: {e}"))),
    }
}

/// `--start-at`: seconds, `seconds,increment`, or an RFC 3339 date.
fn parse_time(s: &str) -> Result<Timestamp, Failure> {
    let s = s.trim();
    let bad = || {
        Failure::Usage(format!(
            "--start-at expects seconds since the epoch, SECONDS,INCREMENT or an RFC 3339 date, got '{s}'"
        ))
    };
    if let Some((t, i)) = s.split_once(',') {
        let time = t.trim().parse().map_err(|_| bad())?;
        let increment = i.trim().parse().map_err(|_| bad())?;
        return Ok(Timestamp { time, increment });
    }
    if let Ok(time) = s.parse::<u32>() {
        return Ok(Timestamp { time, increment: 0 });
    }
    let date = bson::DateTime::parse_rfc3339_str(s).map_err(|_| bad())?;
    let time = u32::try_from(date.timestamp_millis().div_euclid(1000)).map_err(|_| bad())?;
    Ok(Timestamp { time, increment: 0 })
}

/// A JSON object as a document, with Extended JSON (`{"$date": ...}`, `{"$oid": ...}`)
/// understood.
fn parse_json_doc(s: &str) -> Result<Document, String> {
    let json: serde_json::Value =
        serde_json::from_str(s).map_err(|e| format!("not valid JSON: {e}"))?;
    match Bson::try_from(json) {
        Ok(Bson::Document(d)) => Ok(d),
        Ok(_) => Err("expected a JSON object".into()),
        Err(e) => Err(format!("not valid Extended JSON: {e}")),
    }
}

/// The output: standard output or an `--out` file, and how many events of a resumed
/// stream were already written to it.
struct Output {
    file: Option<std::fs::File>,
    pretty: bool,
    /// Events the resumed stream will deliver again that the file already holds.
    skip: u64,
}

impl Output {
    fn open(args: &Args, saved: Option<&State>) -> Result<Output, Failure> {
        let pretty = match args.format {
            Format::Json => false,
            Format::Pretty => true,
            Format::Auto => args.out.is_none() && std::io::stdout().is_terminal(),
        };
        let Some(path) = &args.out else {
            return Ok(Output {
                file: None,
                pretty,
                skip: 0,
            });
        };
        let cannot = |e: std::io::Error| {
            Failure::Fatal(format!("cannot open --out {}: {e}", path.display()))
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)
            .map_err(cannot)?;
        let mut skip = 0;
        if let Some(saved_len) = saved.and_then(|s| s.out_bytes) {
            let bytes = std::fs::read(path).map_err(cannot)?;
            let len = bytes.len() as u64;
            if len < saved_len {
                return Err(Failure::Fatal(format!(
                    "--out {} is {len} bytes, shorter than the {saved_len} the state file recorded: it was truncated or replaced",
                    path.display()
                )));
            }
            let tail = &bytes[usize::try_from(saved_len)
                .unwrap_or(usize::MAX)
                .min(bytes.len())..];
            // Whole lines written after the state was saved are events the resumed stream
            // delivers again; a torn last line is cut off and written again whole.
            let whole = tail.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            if whole < tail.len() {
                file.set_len(saved_len + whole as u64).map_err(cannot)?;
            }
            skip = tail[..whole].iter().filter(|&&b| b == b'\n').count() as u64;
        }
        Ok(Output {
            file: Some(file),
            pretty,
            skip,
        })
    }

    /// Writes a batch's lines; returns the `--out` file's length after them.
    fn write(&mut self, text: &str) -> std::io::Result<Option<u64>> {
        match &mut self.file {
            Some(f) => {
                f.write_all(text.as_bytes())?;
                f.sync_data()?;
                Ok(Some(f.metadata()?.len()))
            }
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(text.as_bytes())?;
                out.flush()?;
                Ok(None)
            }
        }
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    let filter = match &args.filter {
        Some(f) => Some(parse_json_doc(f).map_err(|e| Failure::Usage(format!("--filter: {e}")))?),
        None => None,
    };
    let saved = match &args.state {
        Some(p) => read_state(p)?,
        None => None,
    };
    let mut start = match (&saved, &args.resume_after, &args.start_at) {
        (Some(s), _, _) => Start::After(s.token.clone()),
        (None, Some(t), _) => Start::After(parse_token(t)?),
        (None, None, Some(t)) => Start::At(parse_time(t)?),
        (None, None, None) => Start::Now,
    };
    let mut out = Output::open(&args, saved.as_ref())?;
    let client = mongodb::Client::with_uri_str(&args.uri)
        .await
        .map_err(|e| Failure::Usage(format!("bad connection string: {e}")))?;
    let db = client.database(args.db.as_deref().unwrap_or("admin"));
    let mut written = 0u64;
    let mut backoff = Duration::from_millis(100);
    let mut outage = false;
    loop {
        let mut session = match client.start_session().await {
            Ok(s) => s,
            Err(e) if retryable(&e) => {
                outage = wait_out(&e, &mut backoff, outage).await;
                continue;
            }
            Err(e) => return Err(Failure::Fatal(e.to_string())),
        };
        let open = open_command(&args, filter.as_ref(), &start);
        let reply = match db.run_command(open).session(&mut session).await {
            Ok(r) => r,
            Err(e) if retryable(&e) => {
                outage = wait_out(&e, &mut backoff, outage).await;
                continue;
            }
            Err(e) => return Err(refused(&e)),
        };
        if outage {
            eprintln!("eddy watch: reconnected");
            outage = false;
        }
        backoff = Duration::from_millis(100);
        let mut reply = reply;
        let mut batch_key = "firstBatch";
        loop {
            let cursor = reply.get_document("cursor").map_err(|_| {
                Failure::Fatal(format!("the server's reply has no cursor: {reply}"))
            })?;
            let id = cursor.get_i64("id").unwrap_or(0);
            let ns = cursor.get_str("ns").unwrap_or("").to_string();
            let events = cursor.get_array(batch_key).cloned().unwrap_or_default();
            let post_batch = cursor.get_document("postBatchResumeToken").ok().cloned();
            let mut text = String::new();
            let mut last_token = None;
            let mut ended = false;
            for ev in events {
                let Bson::Document(ev) = ev else { continue };
                last_token = ev.get_document("_id").ok().cloned();
                if ev.get_str("operationType") == Ok("invalidate") {
                    ended = true;
                }
                if out.skip > 0 {
                    out.skip -= 1;
                } else if args.limit.is_none_or(|l| written < l) {
                    line(&mut text, &ev, out.pretty);
                    written += 1;
                }
                if ended || args.limit.is_some_and(|l| written >= l) {
                    break;
                }
            }
            let stop = ended || args.limit.is_some_and(|l| written >= l);
            // The batch's position: its postBatchResumeToken when the whole batch was
            // read, else the last event read.
            let token = if stop {
                last_token
            } else {
                post_batch.or(last_token)
            };
            let out_bytes = if text.is_empty() && out.file.is_none() {
                None
            } else {
                out.write(&text)
                    .map_err(|e| Failure::Fatal(format!("cannot write the events: {e}")))?
            };
            if let Some(t) = token {
                if let Some(p) = &args.state {
                    let len = match (out_bytes, &out.file) {
                        (Some(n), _) => Some(n),
                        (None, Some(f)) => f.metadata().ok().map(|m| m.len()),
                        (None, None) => None,
                    };
                    let s = State {
                        token: t.clone(),
                        out_bytes: len,
                    };
                    write_state(p, &s).map_err(|e| {
                        Failure::Fatal(format!("cannot write the state file {}: {e}", p.display()))
                    })?;
                }
                start = Start::After(t);
            }
            if stop {
                if id != 0 {
                    let coll = ns.split_once('.').map_or(ns.as_str(), |(_, c)| c);
                    let _ = db
                        .run_command(doc! {"killCursors": coll, "cursors": [id]})
                        .session(&mut session)
                        .await;
                }
                return Ok(());
            }
            if id == 0 {
                // The server closed the cursor without an invalidate: reopen after it.
                break;
            }
            let coll = ns.split_once('.').map_or(ns.as_str(), |(_, c)| c);
            let mut get_more = doc! {
                "getMore": id,
                "collection": coll,
                "maxTimeMS": i64::try_from(args.max_await_ms).unwrap_or(i64::MAX),
            };
            if let Some(n) = args.batch_size {
                get_more.insert("batchSize", i64::from(n));
            }
            match db.run_command(get_more).session(&mut session).await {
                Ok(r) => {
                    reply = r;
                    batch_key = "nextBatch";
                }
                Err(e) if retryable(&e) => {
                    outage = wait_out(&e, &mut backoff, outage).await;
                    break;
                }
                Err(e) => return Err(refused(&e)),
            }
        }
    }
}

/// The `aggregate` that opens the stream.
fn open_command(args: &Args, filter: Option<&Document>, start: &Start) -> Document {
    let mut spec = Document::new();
    if args.db.is_none() {
        spec.insert("allChangesForCluster", true);
    }
    let full = match args.full_document {
        FullDocument::Default => None,
        FullDocument::UpdateLookup => Some("updateLookup"),
        FullDocument::WhenAvailable => Some("whenAvailable"),
        FullDocument::Required => Some("required"),
    };
    if let Some(f) = full {
        spec.insert("fullDocument", f);
    }
    let before = match args.full_document_before_change {
        BeforeChange::Off => None,
        BeforeChange::WhenAvailable => Some("whenAvailable"),
        BeforeChange::Required => Some("required"),
    };
    if let Some(b) = before {
        spec.insert("fullDocumentBeforeChange", b);
    }
    match start {
        Start::Now => {}
        Start::After(t) => {
            spec.insert("startAfter", t.clone());
        }
        Start::At(ts) => {
            spec.insert("startAtOperationTime", *ts);
        }
    }
    let mut pipeline = vec![Bson::Document(doc! {"$changeStream": spec})];
    if let Some(f) = filter {
        pipeline.push(Bson::Document(doc! {"$match": f.clone()}));
    }
    let mut cursor = Document::new();
    if let Some(n) = args.batch_size {
        cursor.insert("batchSize", i64::from(n));
    }
    let target = match &args.coll {
        Some(c) => Bson::String(c.clone()),
        None => Bson::Int32(1),
    };
    doc! {"aggregate": target, "pipeline": pipeline, "cursor": cursor}
}

/// Errors after which reopening the stream from the last token can succeed: the
/// network, and the codes the change stream specification calls resumable.
fn retryable(e: &DriverError) -> bool {
    if e.contains_label("ResumableChangeStreamError") || e.contains_label("RetryableWriteError") {
        return true;
    }
    match &*e.kind {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. } => true,
        // The specification's resumable codes, and a cursor the server no longer has
        // (CursorNotFound) or a shard's stale routing (StaleConfig).
        ErrorKind::Command(c) => {
            errors::RESUMABLE_CHANGE_STREAM_CODES.contains(&c.code) || matches!(c.code, 43 | 13388)
        }
        _ => false,
    }
}

/// Waits before the next try, doubling up to two seconds; says so once per outage.
async fn wait_out(e: &DriverError, backoff: &mut Duration, outage: bool) -> bool {
    if !outage {
        eprintln!("eddy watch: {}; retrying", short(e));
    }
    tokio::time::sleep(*backoff).await;
    *backoff = (*backoff * 2).min(Duration::from_secs(2));
    true
}

/// The server's refusal as one line: its message, code name and code.
fn refused(e: &DriverError) -> Failure {
    match &*e.kind {
        ErrorKind::Command(c) => Failure::Fatal(format!(
            "the server refused the change stream: {} ({}, code {})",
            c.message, c.code_name, c.code
        )),
        _ => Failure::Fatal(short(e)),
    }
}

fn short(e: &DriverError) -> String {
    match &*e.kind {
        ErrorKind::ServerSelection { message, .. } => {
            format!(
                "cannot reach the server: {}",
                message.lines().next().unwrap_or("")
            )
        }
        ErrorKind::Io(io) => format!("connection lost: {io}"),
        _ => e.to_string(),
    }
}

/// Appends an event's line to `out`.
fn line(out: &mut String, ev: &Document, pretty: bool) {
    if !pretty {
        out.push_str(
            &Bson::Document(ev.clone())
                .into_canonical_extjson()
                .to_string(),
        );
        out.push('\n');
        return;
    }
    use std::fmt::Write as _;
    let op = ev.get_str("operationType").unwrap_or("?");
    let colour = match op {
        "insert" => "32",
        "update" | "replace" => "33",
        "delete" => "31",
        _ => "35",
    };
    let time = match ev.get("wallTime") {
        Some(Bson::DateTime(d)) => d
            .try_to_rfc3339_string()
            .ok()
            .and_then(|s| s.get(11..23).map(str::to_string))
            .unwrap_or_default(),
        _ => match ev.get("clusterTime") {
            Some(Bson::Timestamp(t)) => format!("{}.{}", t.time, t.increment),
            _ => String::new(),
        },
    };
    let ns = ev
        .get_document("ns")
        .map(|n| match (n.get_str("db"), n.get_str("coll")) {
            (Ok(d), Ok(c)) => format!("{d}.{c}"),
            (Ok(d), Err(_)) => d.to_string(),
            _ => String::new(),
        })
        .unwrap_or_default();
    let relaxed = |b: &Bson| b.clone().into_relaxed_extjson().to_string();
    let _ = write!(
        out,
        "\x1b[2m{time}\x1b[0m \x1b[1;{colour}m{op:<8}\x1b[0m {ns}"
    );
    if let Some(k) = ev.get("documentKey") {
        let _ = write!(out, " \x1b[36m{}\x1b[0m", relaxed(k));
    }
    match op {
        "update" => {
            if let Ok(u) = ev.get_document("updateDescription") {
                if let Some(f) = u.get("updatedFields") {
                    let _ = write!(out, " set {}", relaxed(f));
                }
                if let Ok(r) = u.get_array("removedFields") {
                    if !r.is_empty() {
                        let _ = write!(out, " unset {}", relaxed(&Bson::Array(r.clone())));
                    }
                }
            }
        }
        "rename" => {
            if let Some(to) = ev.get("to") {
                let _ = write!(out, " to {}", relaxed(to));
            }
        }
        _ => {}
    }
    if let Some(d) = ev.get("fullDocument").filter(|d| !matches!(d, Bson::Null)) {
        let _ = write!(out, " {}", relaxed(d));
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_times_parse() {
        assert_eq!(parse_token("8263AB").unwrap(), doc! {"_data": "8263AB"});
        assert_eq!(
            parse_token(r#"{"_data": "82"}"#).unwrap(),
            doc! {"_data": "82"}
        );
        assert!(parse_token("nope").is_err());
        assert_eq!(
            parse_time("100,3").unwrap(),
            Timestamp {
                time: 100,
                increment: 3
            }
        );
        assert_eq!(parse_time("100").unwrap().time, 100);
        assert_eq!(parse_time("1970-01-01T00:01:40Z").unwrap().time, 100);
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn state_round_trips() {
        let dir = std::env::temp_dir().join(format!("eddy-watch-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.json");
        assert_eq!(read_state(&p).unwrap(), None);
        let s = State {
            token: doc! {"_data": "8263"},
            out_bytes: Some(42),
        };
        write_state(&p, &s).unwrap();
        assert_eq!(read_state(&p).unwrap(), Some(s));
        std::fs::write(&p, "{").unwrap();
        assert!(read_state(&p).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lines_after_the_saved_length_are_skipped_and_a_torn_one_cut() {
        let dir = std::env::temp_dir().join(format!("eddy-watch-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("o.jsonl");
        std::fs::write(&out, "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n{\"a\":").unwrap();
        let args = Args {
            uri: String::new(),
            db: None,
            coll: None,
            filter: None,
            full_document: FullDocument::Default,
            full_document_before_change: BeforeChange::Off,
            resume_after: None,
            start_at: None,
            state: None,
            out: Some(out.clone()),
            format: Format::Auto,
            limit: None,
            batch_size: None,
            max_await_ms: 1000,
        };
        let saved = State {
            token: doc! {"_data": "82"},
            out_bytes: Some(8),
        };
        let o = Output::open(&args, Some(&saved)).unwrap();
        assert_eq!(o.skip, 2);
        assert!(!o.pretty);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "{\"a\":1}\n{\"a\":2}\n{\"a\":3}\n"
        );
        let shorter = State {
            token: doc! {"_data": "82"},
            out_bytes: Some(1000),
        };
        assert!(Output::open(&args, Some(&shorter)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn filters_are_extended_json_objects() {
        assert_eq!(
            parse_json_doc(r#"{"a": {"$date": "2026-01-01T00:00:00Z"}}"#)
                .unwrap()
                .get("a")
                .map(Bson::element_type),
            Some(bson::spec::ElementType::DateTime)
        );
        assert!(parse_json_doc("[1]").is_err());
        assert!(parse_json_doc("{").unwrap_err().contains("not valid JSON"));
    }

    #[test]
    fn pretty_lines_say_what_changed() {
        let mut s = String::new();
        line(
            &mut s,
            &doc! {"operationType": "update", "ns": {"db": "d", "coll": "c"}, "documentKey": {"_id": 1},
            "updateDescription": {"updatedFields": {"a": 2}, "removedFields": ["b"]}},
            true,
        );
        assert!(
            s.contains("update")
                && s.contains("d.c")
                && s.contains("{\"a\":2}")
                && s.contains("unset"),
            "{s}"
        );
        let mut j = String::new();
        line(&mut j, &doc! {"_id": {"_data": "82"}, "n": 1i64}, false);
        assert_eq!(
            j,
            "{\"_id\":{\"_data\":\"82\"},\"n\":{\"$numberLong\":\"1\"}}\n"
        );
    }
}
