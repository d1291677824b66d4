//! Running operations and open connections, for `currentOp`, `$currentOp` and `killOp`.
//!
//! [`run`](crate) registers every command while it runs, with the [`Interrupt`] its scans
//! check: `killOp` sets that handle's kill flag, and the operation fails with
//! `Interrupted` (11601) at its next check, as in mongod.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use bson::{Bson, DateTime, Document, doc};
use errors::{ErrorCode, Interrupt, MongoError, Result};
use query::filter::Filter;

use crate::{ConnInfo, ServerCtx, util};

/// A command while it runs.
struct Running {
    conn: i64,
    op: &'static str,
    ns: String,
    /// The command as it came: `currentOp` shows it without its write batch.
    command: std::sync::Arc<Document>,
    started: Instant,
    interrupt: Interrupt,
    /// The cursor a `getMore` works on, and that cursor's own interruption point.
    cursor: Option<(i64, Interrupt)>,
}

/// What `currentOp` shows of a connection.
#[derive(Clone)]
struct Conn {
    peer: String,
    app_name: Option<String>,
}

/// The running operations and open connections.
#[derive(Default)]
pub struct Ops {
    next: AtomicU32,
    running: Mutex<HashMap<u32, Running>>,
    conns: Mutex<HashMap<i64, Conn>>,
}

/// Unregisters an operation when it ends.
pub struct OpGuard<'a> {
    ops: &'a Ops,
    /// The operation's id.
    pub id: u32,
}

impl Drop for OpGuard<'_> {
    fn drop(&mut self) {
        self.ops.running.lock().unwrap().remove(&self.id);
    }
}

/// `op` as mongod reports it.
fn op_kind(name: &str) -> &'static str {
    match name {
        "find" => "query",
        "getMore" => "getmore",
        "insert" => "insert",
        "update" => "update",
        "delete" => "remove",
        _ => "command",
    }
}

/// Fields holding a write's batch: left out of what `currentOp` shows (drivers send them as
/// OP_MSG document sequences, outside the command body mongod shows).
const BATCHES: &[&str] = &["documents", "updates", "deletes", "ops", "nsInfo"];

/// A command as `currentOp` shows it: without its write batch, and past 1 KB of BSON its
/// start as text (mongod's `$truncated`). Built only when `currentOp` lists the command;
/// it measures rather than encodes. With `truncate` false (`$currentOp`'s
/// `truncateOps: false`), shown whole.
fn shown_command(cmd: &Document, truncate: bool) -> Document {
    const MAX: usize = 1024;
    let mut d = Document::new();
    let mut size = 0usize;
    for (k, v) in cmd {
        if BATCHES.contains(&k.as_str()) {
            continue;
        }
        size += 1 + k.len() + 1 + doc::value_len(v);
        d.insert(k.clone(), v.clone());
    }
    if size <= MAX || !truncate {
        return d;
    }
    let text = Bson::Document(d).into_relaxed_extjson().to_string();
    let mut cut = MAX.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut t = doc! {"$truncated": &text[..cut]};
    if let Some(c) = cmd.get("comment") {
        t.insert("comment", c.clone());
    }
    t
}

impl Ops {
    /// Notes an open connection.
    pub fn connected(&self, conn: &ConnInfo) {
        self.conns.lock().unwrap().insert(
            conn.id,
            Conn {
                peer: conn.peer.clone(),
                app_name: conn.app_name.clone(),
            },
        );
    }

    /// Forgets a closed connection.
    pub fn disconnected(&self, conn: &ConnInfo) {
        self.conns.lock().unwrap().remove(&conn.id);
    }

    /// Registers a command for as long as the guard lives.
    pub fn register(
        &self,
        conn: &ConnInfo,
        name: &str,
        cmd: &std::sync::Arc<Document>,
        interrupt: &Interrupt,
    ) -> OpGuard<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        let db = cmd.get_str("$db").unwrap_or("admin");
        let ns = match cmd.get(name) {
            Some(Bson::String(c)) if name != "getMore" => format!("{db}.{c}"),
            _ => match cmd.get_str("collection") {
                Ok(c) if name == "getMore" => format!("{db}.{c}"),
                _ => format!("{db}.$cmd"),
            },
        };
        if let Some(c) = self.conns.lock().unwrap().get_mut(&conn.id) {
            if c.app_name != conn.app_name {
                c.app_name.clone_from(&conn.app_name);
            }
        }
        self.running.lock().unwrap().insert(
            id,
            Running {
                conn: conn.id,
                op: op_kind(name),
                ns,
                command: cmd.clone(),
                started: Instant::now(),
                interrupt: interrupt.clone(),
                cursor: None,
            },
        );
        OpGuard { ops: self, id }
    }

    /// Notes the cursor the running `getMore` `opid` works on, so that killing the
    /// operation kills the cursor too, as in mongod.
    pub fn link_cursor(&self, opid: u32, cursor_id: i64, interrupt: &Interrupt) {
        if let Some(r) = self.running.lock().unwrap().get_mut(&opid) {
            r.cursor = Some((cursor_id, interrupt.clone()));
        }
    }

    /// Marks an operation killed: whether it was running, and the cursor it works on.
    fn kill(&self, opid: u32) -> (bool, Option<i64>) {
        match self.running.lock().unwrap().get(&opid) {
            Some(r) => {
                r.interrupt.kill();
                if let Some((_, i)) = &r.cursor {
                    i.kill();
                }
                (true, r.cursor.as_ref().map(|c| c.0))
            }
            None => (false, None),
        }
    }

    /// The running operations, and with `idle_connections` the connections running none,
    /// in mongod's `currentOp` shape.
    fn docs(&self, ctx: &ServerCtx, idle_connections: bool, truncate: bool) -> Vec<Document> {
        let host = ctx.config.advertised.clone();
        let conns = self.conns.lock().unwrap().clone();
        let running = self.running.lock().unwrap();
        let now = DateTime::now();
        let mut out = Vec::new();
        let mut busy = std::collections::HashSet::new();
        let mut ids: Vec<&u32> = running.keys().collect();
        ids.sort_unstable();
        for id in ids {
            let r = &running[id];
            busy.insert(r.conn);
            let el = r.started.elapsed();
            let mut d = doc! {
                "type": "op",
                "host": &host,
                "desc": format!("conn{}", r.conn),
                "connectionId": r.conn,
                "active": true,
                "currentOpTime": now.try_to_rfc3339_string().unwrap_or_default(),
                "opid": i64::from(*id),
                "secs_running": el.as_secs() as i64,
                "microsecs_running": el.as_micros() as i64,
                "op": r.op,
                "ns": &r.ns,
                "command": shown_command(&r.command, truncate),
                "numYields": 0,
                "locks": {},
                "waitingForLock": false,
                "killPending": r.interrupt.is_killed(),
            };
            if let Some(c) = conns.get(&r.conn) {
                d.insert("client", &c.peer);
                if let Some(a) = &c.app_name {
                    d.insert("appName", a);
                }
            }
            if let Some(l) = r.command.get("lsid") {
                d.insert("lsid", l.clone());
            }
            out.push(d);
        }
        if idle_connections {
            let mut idle: Vec<(&i64, &Conn)> =
                conns.iter().filter(|(id, _)| !busy.contains(*id)).collect();
            idle.sort_unstable_by_key(|(id, _)| **id);
            for (id, c) in idle {
                let mut d = doc! {
                    "type": "op",
                    "host": &host,
                    "desc": format!("conn{id}"),
                    "connectionId": *id,
                    "client": &c.peer,
                    "active": false,
                    "currentOpTime": now.try_to_rfc3339_string().unwrap_or_default(),
                };
                if let Some(a) = &c.app_name {
                    d.insert("appName", a);
                }
                out.push(d);
            }
        }
        out
    }
}

/// Generic arguments `currentOp` takes that are not part of its filter.
const GENERIC: &[&str] = &[
    "currentOp",
    "$all",
    "$ownOps",
    "$db",
    "lsid",
    "$clusterTime",
    "$readPreference",
    "comment",
    "apiVersion",
    "apiStrict",
    "apiDeprecationErrors",
    "maxTimeMS",
    "readConcern",
];

fn bool_opt(v: &Bson, what: &str) -> Result<bool> {
    match v {
        Bson::Boolean(b) => Ok(*b),
        other => Err(MongoError::type_mismatch(format!(
            "{what} must be a boolean, not {}",
            query::expr::type_name(Some(other))
        ))),
    }
}

/// `currentOp`: the running operations (with `$all`, idle connections too), those
/// matching the other fields as a filter.
///
/// # Errors
/// Unauthorized outside `admin`; a malformed filter.
pub fn current_op(ctx: &ServerCtx, db: &str, cmd: &Document) -> Result<Document> {
    if db != "admin" {
        return Err(MongoError::new(
            ErrorCode::Unauthorized,
            "currentOp may only be run against the admin database.",
        ));
    }
    let all = match cmd.get("$all") {
        Some(v) => bool_opt(v, "$all")?,
        None => false,
    };
    if let Some(v) = cmd.get("$ownOps") {
        // Without access control every operation is the caller's own.
        bool_opt(v, "$ownOps")?;
    }
    let mut spec = Document::new();
    for (k, v) in cmd {
        if !GENERIC.contains(&k.as_str()) {
            spec.insert(k.clone(), v.clone());
        }
    }
    let filter = Filter::parse(&spec)?;
    let mut inprog = Vec::new();
    for d in ctx.ops.docs(ctx, all, true) {
        if filter.try_matches(&d)? {
            inprog.push(Bson::Document(d));
        }
    }
    Ok(doc! {"inprog": inprog})
}

/// `killOp`: marks the operation `op` killed.
///
/// # Errors
/// Unauthorized outside `admin`; a missing or non-numeric `op`.
pub fn kill_op(ctx: &ServerCtx, db: &str, cmd: &Document) -> Result<Document> {
    if db != "admin" {
        return Err(MongoError::new(
            ErrorCode::Unauthorized,
            "killOp may only be run against the admin database.",
        ));
    }
    let Some(op) = cmd.get("op") else {
        return Err(MongoError::with_code(
            40414,
            "BSON field 'killOp.op' is missing but a required field",
        ));
    };
    let id = match util::get_i64(cmd, "op") {
        Some(n) if (0..=i64::from(u32::MAX)).contains(&n) => n as u32,
        _ => {
            return Err(MongoError::type_mismatch(format!(
                "BSON field 'killOp.op' is the wrong type '{}', expected types '[long, int, decimal, double]'",
                query::expr::type_name(Some(op))
            )));
        }
    };
    let (found, cursor) = ctx.ops.kill(id);
    if let Some(c) = cursor {
        // A getMore waiting for events wakes and fails with Interrupted.
        ctx.cursors.wake(c);
    }
    tracing::info!(opid = id, found, "killOp");
    Ok(doc! {"info": "attempting to kill op"})
}

/// `$currentOp`'s options.
struct StageOpts {
    idle_connections: bool,
    truncate_ops: bool,
    idle_cursors: bool,
    idle_sessions: bool,
}

fn stage_opts(spec: &Bson) -> Result<StageOpts> {
    let Bson::Document(spec) = spec else {
        return Err(MongoError::with_code(
            ErrorCode::FailedToParse as i32,
            "$currentOp options must be specified in an object",
        ));
    };
    let mut o = StageOpts {
        idle_connections: false,
        truncate_ops: true,
        idle_cursors: false,
        idle_sessions: true,
    };
    for (k, v) in spec {
        match k.as_str() {
            "idleConnections" => o.idle_connections = bool_opt(v, k)?,
            "idleCursors" => o.idle_cursors = bool_opt(v, k)?,
            "idleSessions" => o.idle_sessions = bool_opt(v, k)?,
            // Without access control every operation is visible; one node is every node.
            "allUsers" | "localOps" | "targetAllNodes" => {
                bool_opt(v, k)?;
            }
            "truncateOps" => o.truncate_ops = bool_opt(v, k)?,
            other => {
                return Err(MongoError::with_code(
                    ErrorCode::FailedToParse as i32,
                    format!("Unrecognized option '{other}' in $currentOp stage."),
                ));
            }
        }
    }
    Ok(o)
}

/// Splits a leading `$currentOp` stage off an aggregate's stages, returning the remaining
/// stages and the documents it yields (`None` when the pipeline has no such stage).
///
/// # Errors
/// InvalidNamespace unless `{aggregate: 1}` on `admin`; bad options.
pub fn take_current_op(
    ctx: &ServerCtx,
    db: &str,
    cmd: &Document,
    mut stages: Vec<Document>,
) -> Result<(Vec<Document>, Option<Vec<Document>>)> {
    let Some(spec) = stages.first().and_then(|s| s.get("$currentOp")).cloned() else {
        return Ok((stages, None));
    };
    if db != "admin" || matches!(cmd.get("aggregate"), Some(Bson::String(_))) {
        return Err(MongoError::new(
            ErrorCode::InvalidNamespace,
            "$currentOp must be run against the 'admin' database with {aggregate: 1}",
        ));
    }
    let o = stage_opts(&spec)?;
    stages.remove(0);
    let mut docs = ctx.ops.docs(ctx, o.idle_connections, o.truncate_ops);
    if o.idle_sessions {
        docs.extend(ctx.txns.idle_sessions());
    }
    if o.idle_cursors {
        docs.extend(ctx.cursors.idle(ctx));
    }
    Ok((stages, Some(docs)))
}
