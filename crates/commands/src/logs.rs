//! The server log as commands see it: the `getLog` ring of recent lines (mongod's RamLog:
//! the last 1,024 lines, at most 1 MiB of them), log verbosity per component
//! (`logLevel`, `logComponentVerbosity`, mongosh's `db.setLogLevel`), and the profiler's
//! `slowms` / `sampleRate` (`profile`, `db.setProfilingLevel`).
//!
//! The binary installs a tracing layer that formats each event as a mongod JSON log line
//! and [`push`]es it here, and registers a hook that turns verbosity changes into its
//! filter ([`set_filter_hook`]).

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};

use bson::{Bson, Document, doc};
use errors::{ErrorCode, MongoError, Result};

/// Lines `getLog: "global"` keeps.
const RAM_LINES: usize = 1024;
/// Bytes of lines `getLog` keeps; the oldest go first. Lines are never cut, so each stays
/// valid JSON (long attributes are truncated when the line is built).
const RAM_BYTES: usize = 1024 * 1024;

struct RamLog {
    lines: VecDeque<String>,
    bytes: usize,
    total: u64,
}

static GLOBAL: Mutex<RamLog> = Mutex::new(RamLog {
    lines: VecDeque::new(),
    bytes: 0,
    total: 0,
});

/// Records one log line.
pub fn push(line: String) {
    let mut g = GLOBAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    g.total += 1;
    g.bytes += line.len();
    g.lines.push_back(line);
    while g.lines.len() > RAM_LINES || (g.bytes > RAM_BYTES && g.lines.len() > 1) {
        if let Some(old) = g.lines.pop_front() {
            g.bytes -= old.len();
        }
    }
}

/// `getLog`.
///
/// # Errors
/// OperationFailed for an unknown log name, TypeMismatch for a non-string.
pub fn get_log(cmd: &Document) -> Result<Document> {
    match cmd.get("getLog") {
        Some(Bson::String(s)) if s == "*" => Ok(doc! {"names": ["global", "startupWarnings"]}),
        Some(Bson::String(s)) if s == "global" => {
            let g = GLOBAL
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let lines: Vec<Bson> = g.lines.iter().cloned().map(Bson::String).collect();
            Ok(doc! {"totalLinesWritten": total_as_bson(g.total), "log": lines})
        }
        // Eddy writes no start-up warnings.
        Some(Bson::String(s)) if s == "startupWarnings" => {
            Ok(doc! {"totalLinesWritten": 0, "log": []})
        }
        Some(Bson::String(s)) => Err(MongoError::new(
            ErrorCode::OperationFailed,
            format!("No log named '{s}'"),
        )),
        Some(other) => Err(MongoError::type_mismatch(format!(
            "Argument to getLog must be of type String; found {other} of type {}",
            doc::compare::type_name(other)
        ))),
        None => Err(MongoError::failed_to_parse("getLog requires an argument")),
    }
}

fn total_as_bson(n: u64) -> Bson {
    match i32::try_from(n) {
        Ok(i) => Bson::Int32(i),
        Err(_) => Bson::Int64(n as i64),
    }
}

/// mongod's log components, as `logComponentVerbosity` nests them. Eddy's code logs
/// under `command`, `storage`, `network`, `query`, `replication` and `control`; the others
/// are kept so that settings round-trip.
const COMPONENTS: &[(&str, &[&str])] = &[
    ("accessControl", &[]),
    ("assert", &[]),
    ("command", &[]),
    ("control", &[]),
    ("executor", &[]),
    ("geo", &[]),
    ("globalIndex", &[]),
    ("index", &[]),
    ("network", &["asio", "bridge", "connectionPool"]),
    ("processHealth", &[]),
    ("query", &[]),
    (
        "replication",
        &["election", "heartbeats", "initialSync", "rollback"],
    ),
    (
        "sharding",
        &[
            "rangeDeleter",
            "shardingCatalogRefresh",
            "migration",
            "reshard",
            "migrationPerf",
        ],
    ),
    ("storage", &["recovery", "journal", "wt"]),
    ("write", &[]),
    ("ftdc", &[]),
    ("tracking", &[]),
    ("transaction", &[]),
    ("tenantMigration", &[]),
    ("test", &[]),
    ("resourceConsumption", &[]),
];

/// Verbosity settings: the default, and each component's (-1 inherits).
struct Verbosity {
    default: i32,
    tree: Document,
}

fn initial_tree() -> Document {
    let mut t = Document::new();
    for (c, subs) in COMPONENTS {
        let mut d = doc! {"verbosity": -1};
        for s in *subs {
            d.insert(*s, doc! {"verbosity": -1});
        }
        t.insert(*c, d);
    }
    t
}

static VERBOSITY: Mutex<Option<Verbosity>> = Mutex::new(None);

type Hook = Box<dyn Fn(i32, &[(&'static str, i32)]) + Send + Sync>;
/// Rotates the log file: `Err` with the reason when it could not.
pub type RotateHook = Box<dyn Fn() -> std::result::Result<(), String> + Send + Sync>;

static ROTATE_HOOK: OnceLock<RotateHook> = OnceLock::new();

/// Registers what `logRotate` does: the binary's file log, when it writes one.
pub fn set_rotate_hook(f: RotateHook) {
    let _ = ROTATE_HOOK.set(f);
}

/// `logRotate` (admin): `1` or `"server"` rotates the server's log file (`--logpath`),
/// renaming it with a timestamp suffix and opening a new one; logging to standard error,
/// there is no file and nothing to do. `"audit"` fails: Eddy keeps no audit log.
///
/// # Errors
/// Unauthorized off admin; NoSuchKey (4) for another log type or a failed rotation.
pub fn log_rotate(db: &str, cmd: &Document) -> Result<Document> {
    if db != "admin" {
        return Err(MongoError::new(
            ErrorCode::Unauthorized,
            "logRotate may only be run against the admin database.",
        ));
    }
    let failed = || MongoError::with_code(4, "Log rotation failed due to one or more errors");
    match cmd.get("logRotate") {
        Some(Bson::String(s)) if s == "server" => {}
        Some(Bson::String(_)) => return Err(failed()),
        Some(v) if doc::compare::as_f64(v).is_some() => {}
        _ => return Err(failed()),
    }
    if let Some(rotate) = ROTATE_HOOK.get() {
        if let Err(e) = rotate() {
            tracing::warn!(error = %e, "log rotation failed");
            return Err(failed());
        }
    }
    if let Ok(c) = cmd.get_str("comment") {
        tracing::info!(comment = c, "Log rotation initiated");
    }
    Ok(Document::new())
}

static FILTER_HOOK: OnceLock<Hook> = OnceLock::new();

/// Registers what applies verbosity changes: called with the default verbosity and the
/// verbosity of each component Eddy logs under (`command`, `storage`, ...), -1 where it
/// inherits.
pub fn set_filter_hook(f: Hook) {
    let _ = FILTER_HOOK.set(f);
}

fn with_verbosity<T>(f: impl FnOnce(&mut Verbosity) -> T) -> T {
    let mut g = VERBOSITY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let v = g.get_or_insert_with(|| Verbosity {
        default: 0,
        tree: initial_tree(),
    });
    f(v)
}

fn apply() {
    let (default, levels) = with_verbosity(|v| {
        let get = |c: &str| {
            v.tree
                .get_document(c)
                .ok()
                .and_then(|d| d.get_i32("verbosity").ok())
                .unwrap_or(-1)
        };
        let levels: Vec<(&'static str, i32)> = [
            "command",
            "storage",
            "network",
            "query",
            "replication",
            "control",
            "write",
        ]
        .into_iter()
        .map(|c| (c, get(c)))
        .collect();
        (v.default, levels)
    });
    if let Some(h) = FILTER_HOOK.get() {
        h(default, &levels);
    }
}

/// `getParameter logLevel`.
pub fn log_level() -> i32 {
    with_verbosity(|v| v.default)
}

/// `getParameter logComponentVerbosity`.
pub fn component_verbosity() -> Document {
    with_verbosity(|v| {
        let mut d = doc! {"verbosity": v.default};
        d.extend(v.tree.clone());
        d
    })
}

fn level_of(v: &Bson, what: &str) -> Result<i32> {
    let n = doc::compare::as_f64(v)
        .ok_or_else(|| MongoError::bad_value(format!("Invalid value for {what}: {v}")))?;
    Ok(n as i32)
}

/// `setParameter logLevel`; returns the old value.
///
/// # Errors
/// BadValue for a negative or non-numeric level.
pub fn set_log_level(v: &Bson) -> Result<Bson> {
    let n = level_of(v, "logLevel")?;
    if n < 0 {
        return Err(MongoError::bad_value(format!(
            "Invalid value for logLevel: {v}"
        )));
    }
    let was = with_verbosity(|s| std::mem::replace(&mut s.default, n));
    apply();
    Ok(Bson::Int32(was))
}

/// `setParameter logComponentVerbosity`; returns the old settings.
///
/// # Errors
/// TypeMismatch for a non-document, BadValue for an unknown component.
pub fn set_component_verbosity(v: &Bson) -> Result<Bson> {
    let Bson::Document(d) = v else {
        return Err(MongoError::type_mismatch(format!(
            "log component verbosity is not a BSON object: {v}"
        )));
    };
    let was = component_verbosity();
    with_verbosity(|s| -> Result<()> {
        let mut tree = s.tree.clone();
        let mut default = s.default;
        merge(&mut tree, &mut default, d, "", true)?;
        s.tree = tree;
        s.default = default;
        Ok(())
    })?;
    apply();
    Ok(Bson::Document(was))
}

fn merge(tree: &mut Document, own: &mut i32, d: &Document, path: &str, top: bool) -> Result<()> {
    for (k, x) in d {
        if k == "verbosity" {
            let n = level_of(x, "verbosity")?;
            *own = if top { n.max(0) } else { n.max(-1) };
            continue;
        }
        let Bson::Document(sub) = x else {
            return Err(MongoError::bad_value(format!(
                "Invalid component name {path}{k}"
            )));
        };
        let Ok(node) = tree.get_document_mut(k) else {
            return Err(MongoError::bad_value(format!(
                "Invalid component name {path}{k}"
            )));
        };
        let mut level = node.get_i32("verbosity").unwrap_or(-1);
        let mut children = node.clone();
        children.remove("verbosity");
        merge(
            &mut children,
            &mut level,
            sub,
            &format!("{path}{k}."),
            false,
        )?;
        let mut rebuilt = doc! {"verbosity": level};
        rebuilt.extend(children);
        *node = rebuilt;
    }
    Ok(())
}

/// The profiler's settings: each database's level (0 when unset), and the server-wide
/// `slowms` and `sampleRate`.
struct Profile {
    levels: std::collections::BTreeMap<String, i32>,
    slowms: i64,
    sample_rate: f64,
}

static PROFILE: Mutex<Profile> = Mutex::new(Profile {
    levels: std::collections::BTreeMap::new(),
    slowms: 100,
    sample_rate: 1.0,
});

fn profile_settings() -> std::sync::MutexGuard<'static, Profile> {
    PROFILE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The slow-operation threshold and sample rate.
pub fn slow_settings() -> (i64, f64) {
    let p = profile_settings();
    (p.slowms, p.sample_rate)
}

/// Sets the slow-operation threshold and sample rate at start-up (`--slowms`,
/// `--slowOpSampleRate`).
pub fn set_slow_settings(slowms: i64, sample_rate: f64) {
    let mut p = profile_settings();
    p.slowms = slowms;
    p.sample_rate = sample_rate.clamp(0.0, 1.0);
}

/// `profile`: reports the previous settings, and changes the database's level (1: slow
/// operations, 2: all of them, written to its `system.profile`), `slowms` and
/// `sampleRate`.
///
/// # Errors
/// `filter`, and out-of-range values.
pub fn profile(db: &str, cmd: &Document) -> Result<Document> {
    let level =
        cmd.get("profile")
            .and_then(doc::compare::as_f64)
            .ok_or_else(|| MongoError::type_mismatch("'profile' must be a number"))? as i32;
    if !(-1..=2).contains(&level) {
        return Err(MongoError::bad_value(format!(
            "Invalid profiling level: {level}"
        )));
    }
    if cmd.contains_key("filter") {
        return Err(MongoError::bad_value(
            "profile 'filter' is not supported by Eddy",
        ));
    }
    let slowms = cmd
        .get("slowms")
        .map(|v| {
            doc::compare::as_f64(v)
                .map(|x| x as i64)
                .ok_or_else(|| MongoError::type_mismatch("'slowms' must be a number"))
        })
        .transpose()?;
    let rate = cmd
        .get("sampleRate")
        .map(|v| {
            let r = doc::compare::as_f64(v)
                .ok_or_else(|| MongoError::type_mismatch("'sampleRate' must be a number"))?;
            if (0.0..=1.0).contains(&r) {
                Ok(r)
            } else {
                Err(MongoError::bad_value(
                    "'sampleRate' must be between 0.0 and 1.0 inclusive",
                ))
            }
        })
        .transpose()?;
    let mut p = profile_settings();
    let was = p.levels.get(db).copied().unwrap_or(0);
    let out = doc! {"was": was, "slowms": p.slowms as i32, "sampleRate": p.sample_rate};
    if let Some(ms) = slowms {
        p.slowms = ms;
    }
    if let Some(r) = rate {
        p.sample_rate = r;
    }
    if level >= 0 {
        p.levels.insert(db.to_string(), level);
    }
    Ok(out)
}

/// The `system.profile` entry for a finished command, when its database's profiling
/// level asks for one: every operation at level 2, slow ones (over `slowms`, sampled by
/// `sampleRate`) at level 1.
pub fn profiled(
    db: &str,
    name: &str,
    cmd: &Document,
    reply: &crate::Reply,
    took: std::time::Duration,
    conn: &crate::ConnInfo,
) -> Option<Document> {
    let (level, slowms, rate) = {
        let p = profile_settings();
        (
            p.levels.get(db).copied().unwrap_or(0),
            p.slowms,
            p.sample_rate,
        )
    };
    let returned = returned(reply);
    let ms = i64::try_from(took.as_millis()).unwrap_or(i64::MAX);
    let wanted = match level {
        2 => true,
        1 => over(took, slowms) && !waits_by_design(name, cmd, returned) && sampled(rate),
        _ => false,
    };
    if !wanted {
        return None;
    }
    let op = match name {
        "find" => "query",
        "insert" => "insert",
        "update" => "update",
        "delete" => "remove",
        "getMore" => "getmore",
        _ => "command",
    };
    let mut d = doc! {
        "op": op,
        "ns": namespace(name, cmd),
        "command": loggable(cmd),
    };
    if let Some(n) = returned {
        d.insert("nreturned", n as i64);
    }
    if reply.doc.get_f64("ok") != Ok(1.0) {
        d.insert("ok", 0);
        error_attrs(&mut d, &reply.doc);
    }
    d.insert("millis", ms);
    d.insert("ts", bson::DateTime::now());
    d.insert("client", conn.peer.clone());
    if let Some(app) = &conn.app_name {
        d.insert("appName", app.clone());
    }
    let users: Vec<Bson> = conn
        .auth
        .user
        .iter()
        .map(|(user, db)| Bson::Document(doc! {"user": user, "db": db}))
        .collect();
    let user = conn
        .auth
        .user
        .as_ref()
        .map(|(u, db)| format!("{u}@{db}"))
        .unwrap_or_default();
    d.insert("allUsers", users);
    d.insert("user", user);
    Some(d)
}

/// Bytes of a command's JSON past which the log shows it as `{$truncated: ...}`, the way
/// mongod does past `maxLogSizeKB` (10).
const COMMAND_LOG_CHARS: usize = 10 * 1024;

/// Logs a finished command: at info ("Slow query", id 51803) when it took longer than
/// `slowms`, and at debug ("Assertion while executing command", id 21962) when it failed.
/// A `getMore` that waited on an empty tailable cursor and an awaitable `hello` are not
/// slow: they wait by design.
pub fn command_done(
    name: &str,
    cmd: &Document,
    reply: &crate::Reply,
    took: std::time::Duration,
    conn: i64,
) {
    let returned = returned(reply);
    let reply = &reply.doc;
    let ok = reply.get_f64("ok") == Ok(1.0);
    let (slowms, rate) = slow_settings();
    let ms = i64::try_from(took.as_millis()).unwrap_or(i64::MAX);
    let slow = over(took, slowms) && !waits_by_design(name, cmd, returned) && sampled(rate);
    if slow && tracing::enabled!(target: "commands", tracing::Level::INFO) {
        let mut attr = doc! {
            "type": "command",
            "ns": namespace(name, cmd),
            "command": loggable(cmd),
        };
        if let Some(n) = returned {
            attr.insert("nreturned", n as i64);
        }
        if !ok {
            attr.insert("ok", 0);
            error_attrs(&mut attr, reply);
        }
        attr.insert("protocol", "op_msg");
        attr.insert("durationMillis", ms);
        tracing::info!(target: "commands", id = 51803u64, ctx = %format!("conn{conn}"), attr = %Bson::Document(attr).into_relaxed_extjson(), "Slow query");
    }
    if !ok && tracing::enabled!(target: "commands", tracing::Level::DEBUG) {
        let mut attr = doc! {"command": loggable(cmd), "db": cmd.get_str("$db").unwrap_or("")};
        error_attrs(&mut attr, reply);
        tracing::debug!(target: "commands", id = 21962u64, ctx = %format!("conn{conn}"), attr = %Bson::Document(attr).into_relaxed_extjson(), "Assertion while executing command");
    }
}

fn error_attrs(attr: &mut Document, reply: &Document) {
    if let Some(code) = reply.get("code") {
        attr.insert("errCode", code.clone());
    }
    if let Ok(n) = reply.get_str("codeName") {
        attr.insert("errName", n);
    }
    if let Ok(m) = reply.get_str("errmsg") {
        attr.insert("errMsg", m);
    }
}

/// How many documents a cursor reply returns, if it is one.
fn returned(reply: &crate::Reply) -> Option<usize> {
    if let Some((_, batch)) = &reply.batch {
        return Some(batch.len());
    }
    reply
        .doc
        .get_document("cursor")
        .and_then(|c| {
            c.get_array("firstBatch")
                .or_else(|_| c.get_array("nextBatch"))
        })
        .ok()
        .map(Vec::len)
}

fn waits_by_design(name: &str, cmd: &Document, returned: Option<usize>) -> bool {
    match name {
        "hello" | "isMaster" | "ismaster" => cmd.contains_key("maxAwaitTimeMS"),
        "getMore" => returned == Some(0),
        _ => false,
    }
}

/// `db.collection` for a command naming its collection, else `db.$cmd`.
/// The collection a command names (`db.coll`), if it names one.
pub(crate) fn collection_of(name: &str, cmd: &Document) -> Option<String> {
    let ns = namespace(name, cmd);
    (!ns.ends_with(".$cmd")).then_some(ns)
}

fn namespace(name: &str, cmd: &Document) -> String {
    let db = cmd.get_str("$db").unwrap_or("admin");
    match (name, cmd.get(name)) {
        ("getMore", _) => match cmd.get_str("collection") {
            Ok(c) => format!("{db}.{c}"),
            Err(_) => format!("{db}.$cmd"),
        },
        (_, Some(Bson::String(c))) => format!("{db}.{c}"),
        _ => format!("{db}.$cmd"),
    }
}

/// The command as the log shows it: without `lsid`'s and `$clusterTime`'s noise, and
/// truncated when long.
fn loggable(cmd: &Document) -> Bson {
    let mut d = Document::new();
    for (k, v) in cmd {
        if k != "$clusterTime" {
            d.insert(k.clone(), v.clone());
        }
    }
    let text = Bson::Document(d.clone()).into_relaxed_extjson().to_string();
    if text.len() <= COMMAND_LOG_CHARS {
        return Bson::Document(d);
    }
    let mut cut = COMMAND_LOG_CHARS;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut t = doc! {"$truncated": &text[..cut]};
    if let Some(c) = cmd.get("comment") {
        t.insert("comment", c.clone());
    }
    Bson::Document(t)
}

/// Whether an operation falls in the `sampleRate` share of those logged.
fn sampled(rate: f64) -> bool {
    if rate >= 1.0 {
        return true;
    }
    if rate <= 0.0 {
        return false;
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    // xorshift64*: uniform enough to pick a share of operations.
    let mut x = STATE.load(Ordering::Relaxed);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    STATE.store(x, Ordering::Relaxed);
    let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
    (r as f64 / (1u64 << 53) as f64) < rate
}

/// A profiled database's `system.profile`: a capped collection of 1 MB, as mongod
/// creates it.
const PROFILE_BYTES: i64 = 1024 * 1024;

/// Writes a `system.profile` entry, creating the collection if it is missing.
///
/// # Errors
/// A storage error.
pub async fn write_profile(
    ctx: &std::sync::Arc<crate::ServerCtx>,
    db: &str,
    entry: Document,
) -> Result<()> {
    let ns = storage::catalog::Namespace::new(db, "system.profile");
    ctx.store
        .write(move |w| {
            let mut meta = match w.collection(&ns)? {
                Some(m) => m,
                None => {
                    crate::ddl::create_in(w, &ns, doc! {"capped": true, "size": PROFILE_BYTES})?
                }
            };
            let d = crate::crud::with_id(&entry);
            crate::crud::insert_one(w, &mut meta, &d, &crate::crud::Session::default(), 0)
        })
        .await
}

/// Whether an operation took longer than `slowms`, measured in microseconds as mongod
/// does (so `slowms: 0` catches every operation).
fn over(took: std::time::Duration, slowms: i64) -> bool {
    took.as_micros() > u128::try_from(slowms.max(0)).unwrap_or(0) * 1000
}
