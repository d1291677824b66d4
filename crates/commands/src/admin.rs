//! Handshake, diagnostics, parameters, sessions and fail points.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bson::{Bson, DateTime, Document, doc, oid::ObjectId};
use errors::{ErrorCode, MongoError, Result};

use crate::{ConnInfo, FailPoint, Reply, ServerCtx, util};

/// The version Eddy reports (MongoDB 8.0's wire behaviour).
pub const VERSION: &str = "8.0.4";
/// MongoDB 8.0's wire version.
pub const MAX_WIRE_VERSION: i32 = 25;

fn election_id() -> ObjectId {
    ObjectId::parse_str("7fffffff0000000000000001").expect("valid constant")
}

/// `hello`'s topology fields on the single-node set (no `--replSet`).
async fn single_node_fields(ctx: &ServerCtx, cmd: &Document, name: &str, d: &mut Document) {
    // Awaitable hello: a single-node set's topology never changes, so hold the reply for
    // maxAwaitTimeMS (or until shutdown), as monitors expect.
    if cmd.contains_key("topologyVersion") {
        if let Some(ms) = util::get_i64(cmd, "maxAwaitTimeMS") {
            let mut stop = ctx.shutdown.subscribe();
            let wait = Duration::from_millis(ms.clamp(0, 60_000) as u64);
            let _ = tokio::time::timeout(wait, stop.wait_for(|s| *s)).await;
        }
    }
    let me = ctx.config.advertised.clone();
    let snap_ts = ctx.store.committed_ts();
    if name == "hello" {
        d.insert("isWritablePrimary", true);
    } else {
        d.insert("ismaster", true);
    }
    d.insert(
        "topologyVersion",
        doc! {"processId": ctx.process_id, "counter": 0i64},
    );
    d.insert("hosts", vec![Bson::String(me.clone())]);
    d.insert("setName", ctx.config.repl_set.clone());
    d.insert("setVersion", 1);
    d.insert("secondary", false);
    d.insert("primary", me.clone());
    d.insert("me", me);
    d.insert("electionId", election_id());
    d.insert(
        "lastWrite",
        doc! {
            "opTime": {"ts": snap_ts, "t": 1i64},
            "lastWriteDate": DateTime::now(),
            "majorityOpTime": {"ts": snap_ts, "t": 1i64},
            "majorityWriteDate": DateTime::now(),
        },
    );
}

/// Records the handshake's client metadata (`client.application.name`) on the connection.
/// Runs before fail points are evaluated: a `failCommand` with `appName` applies to the
/// handshake that names the application, as in mongod.
pub fn note_client_metadata(conn: &mut ConnInfo, cmd: &Document) {
    if let Ok(app) = cmd
        .get_document("client")
        .and_then(|c| c.get_document("application"))
        .and_then(|a| a.get_str("name"))
    {
        conn.app_name = Some(app.to_string());
    }
}

/// `hello` / `isMaster` / `ismaster`, awaitable when the client sends `topologyVersion`.
///
/// # Errors
/// Never in practice; the signature matches the other handlers.
pub async fn hello(
    ctx: &Arc<ServerCtx>,
    conn: &mut ConnInfo,
    cmd: &Document,
    name: &str,
) -> Result<Reply> {
    if let Ok(list) = cmd.get_array("compression") {
        conn.compressors = list
            .iter()
            .filter_map(|c| c.as_str())
            .filter(|c| wire::Compressor::from_name(c).is_some_and(|c| c != wire::Compressor::Noop))
            .map(String::from)
            .collect();
    }
    let mut d = Document::new();
    match &ctx.repl {
        Some(set) => {
            if cmd.contains_key("topologyVersion") {
                if let Some(ms) = util::get_i64(cmd, "maxAwaitTimeMS") {
                    let wait = Duration::from_millis(ms.clamp(0, 60_000) as u64);
                    crate::replset::await_topology(ctx, set, cmd, wait).await;
                }
            }
            crate::replset::hello_fields(ctx, set, name != "hello", &mut d);
        }
        None => single_node_fields(ctx, cmd, name, &mut d).await,
    }
    d.insert("helloOk", true);
    d.insert("maxBsonObjectSize", wire::MAX_BSON_OBJECT_SIZE as i32);
    d.insert("maxMessageSizeBytes", wire::MAX_MESSAGE_SIZE_BYTES as i32);
    d.insert("maxWriteBatchSize", wire::MAX_WRITE_BATCH_SIZE as i32);
    d.insert("localTime", DateTime::now());
    d.insert("logicalSessionTimeoutMinutes", 30);
    d.insert("connectionId", conn.id);
    d.insert("minWireVersion", 0);
    d.insert("maxWireVersion", MAX_WIRE_VERSION);
    d.insert("readOnly", false);
    if !conn.compressors.is_empty() {
        d.insert(
            "compression",
            conn.compressors
                .iter()
                .map(|c| Bson::String(c.clone()))
                .collect::<Vec<_>>(),
        );
    }
    crate::security::hello_fields(ctx, conn, cmd, &mut d).await;
    Ok(Reply::ok(d))
}

/// `buildInfo`.
pub fn build_info() -> Reply {
    Reply::ok(doc! {
        "version": VERSION,
        "gitVersion": "eddy",
        "versionArray": [8, 0, 4, 0],
        "bits": 64,
        "debug": false,
        "maxBsonObjectSize": wire::MAX_BSON_OBJECT_SIZE as i32,
        "storageEngines": ["redb"],
        "javascriptEngine": "none",
        "modules": [],
        "openssl": {"running": "disabled"},
        "buildEnvironment": {},
        "eddyVersion": env!("CARGO_PKG_VERSION"),
    })
}

/// `serverStatus`, with real counters.
///
/// # Errors
/// On storage failure.
pub fn server_status(ctx: &ServerCtx) -> Result<Reply> {
    let s = &ctx.stats;
    let snap = ctx.store.snapshot()?;
    let bounds = snap.oplog_bounds()?;
    let log = ctx.store.log();
    let mut oplog = doc! {
        "logSizeBytes": log.bytes() as i64,
        "logSegments": log.segment_count() as i64,
    };
    if let Some((first, last)) = bounds {
        oplog.insert("earliestOptime", first);
        oplog.insert("latestOptime", last);
    }
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as i64;
    let mut d = doc! {
        "host": &ctx.config.advertised,
        "version": VERSION,
        "process": "eddy",
        "pid": std::process::id() as i64,
        "uptime": ctx.started.elapsed().as_secs_f64().floor(),
        "uptimeMillis": ctx.started.elapsed().as_millis() as i64,
        "uptimeEstimate": ctx.started.elapsed().as_secs() as i64,
        "localTime": DateTime::now(),
        "connections": {
            "current": load(&s.connections_current),
            "available": i64::try_from(ctx.config.max_conns).unwrap_or(i64::MAX) - load(&s.connections_current),
            "totalCreated": load(&s.connections_total),
        },
        "opcounters": {
            "insert": load(&s.insert),
            "query": load(&s.query),
            "update": load(&s.update),
            "delete": load(&s.delete),
            "getmore": load(&s.getmore),
            "command": load(&s.command),
        },
        "storageEngine": {"name": "redb", "supportsCommittedReads": true, "persistent": true},
        "repl": {"setName": &ctx.config.repl_set, "isWritablePrimary": true, "secondary": false, "primary": &ctx.config.advertised, "me": &ctx.config.advertised},
        "oplog": oplog,
        "metrics": {
            "cursor": {"open": {"total": ctx.cursors.len() as i64}},
            "ttl": {
                "passes": ctx.ttl.passes.load(Ordering::Relaxed) as i64,
                "deletedDocuments": ctx.ttl.deleted_documents.load(Ordering::Relaxed) as i64,
            },
        },
    };
    crate::metrics::server_status_fields(ctx, &mut d);
    Ok(Reply::ok(d))
}

/// `hostInfo`.
pub fn host_info() -> Reply {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    Reply::ok(doc! {
        "system": {
            "currentTime": DateTime::now(),
            "hostname": host,
            "cpuAddrSize": 64,
            "numCores": std::thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(1),
            "cpuArch": std::env::consts::ARCH,
        },
        "os": {"type": std::env::consts::OS, "name": std::env::consts::OS},
        "extra": {},
    })
}

/// `getCmdLineOpts`.
pub fn get_cmd_line_opts(ctx: &ServerCtx) -> Reply {
    Reply::ok(doc! {
        "argv": ctx.config.argv.iter().map(|a| Bson::String(a.clone())).collect::<Vec<_>>(),
        "parsed": ctx.config.parsed.clone(),
    })
}

/// `getParameter`: `"*"`, or `{name: 1, ...}`.
///
/// # Errors
/// InvalidOptions when no parameter asked for exists.
pub fn get_parameter(ctx: &ServerCtx, cmd: &Document) -> Result<Reply> {
    let mut params = ctx.parameters.lock().unwrap().clone();
    params.insert("logLevel", crate::logs::log_level());
    params.insert("logComponentVerbosity", crate::logs::component_verbosity());
    if matches!(cmd.get("getParameter"), Some(Bson::String(s)) if s == "*") {
        return Ok(Reply::ok(params));
    }
    let mut out = Document::new();
    for (k, _) in cmd.iter().skip(1) {
        if k.starts_with('$') || matches!(k.as_str(), "lsid" | "comment") {
            continue;
        }
        if let Some(v) = params.get(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    if out.is_empty() {
        return Err(MongoError::new(
            ErrorCode::InvalidOptions,
            "no option found to get",
        ));
    }
    Ok(Reply::ok(out))
}

/// `setParameter: 1, name: value`.
///
/// # Errors
/// InvalidOptions for unknown parameters.
pub fn set_parameter(ctx: &ServerCtx, cmd: &Document) -> Result<Reply> {
    let mut params = ctx.parameters.lock().unwrap();
    let mut was = Document::new();
    for (k, v) in cmd.iter().skip(1) {
        if k.starts_with('$') || matches!(k.as_str(), "lsid" | "comment") {
            continue;
        }
        if k == "enableTestCommands" || k == "createRollbackDataFiles" {
            // createRollbackDataFiles is read when the store opens (see StoreOptions).
            return Err(MongoError::bad_value(format!(
                "not allowed to change [{k}] at runtime"
            )));
        }
        if k == "logLevel" {
            was.insert("was", crate::logs::set_log_level(v)?);
            continue;
        }
        if k == "logComponentVerbosity" {
            was.insert("was", crate::logs::set_component_verbosity(v)?);
            continue;
        }
        if matches!(
            k.as_str(),
            "scramIterationCount" | "scramSHA256IterationCount"
        ) {
            let n = match v {
                Bson::Int32(n) => i64::from(*n),
                Bson::Int64(n) => *n,
                _ => -1,
            };
            if n < 5000 {
                return Err(MongoError::bad_value(format!(
                    "Invalid value for parameter {k}: must be an integer of at least 5000"
                )));
            }
        }
        match params.get(k) {
            Some(old) => {
                was.insert("was", old.clone());
                params.insert(k.clone(), v.clone());
            }
            None => {
                return Err(MongoError::new(
                    ErrorCode::InvalidOptions,
                    format!(
                        "attempted to set unrecognized parameter [{k}], use help:true to see options "
                    ),
                ));
            }
        }
    }
    Ok(Reply::ok(was))
}

/// `listCommands`.
pub fn list_commands() -> Reply {
    let names = [
        "aggregate",
        "buildInfo",
        "bulkWrite",
        "cloneCollectionAsCapped",
        "collMod",
        "collStats",
        "configureFailPoint",
        "connPoolStats",
        "connectionStatus",
        "convertToCapped",
        "count",
        "create",
        "createIndexes",
        "dbHash",
        "dbStats",
        "delete",
        "distinct",
        "drop",
        "dropDatabase",
        "dropIndexes",
        "endSessions",
        "explain",
        "features",
        "find",
        "findAndModify",
        "fsync",
        "fsyncUnlock",
        "getCmdLineOpts",
        "getDefaultRWConcern",
        "getMore",
        "getnonce",
        "getParameter",
        "hello",
        "hostInfo",
        "insert",
        "isMaster",
        "killAllSessions",
        "killCursors",
        "killSessions",
        "listCollections",
        "listCommands",
        "listDatabases",
        "listIndexes",
        "logRotate",
        "ping",
        "refreshSessions",
        "renameCollection",
        "replSetGetConfig",
        "replSetGetStatus",
        "serverStatus",
        "setDefaultRWConcern",
        "setParameter",
        "shutdown",
        "top",
        "update",
        "validate",
        "whatsmyuri",
    ];
    let mut cmds = Document::new();
    for n in names {
        cmds.insert(
            n,
            doc! {"help": "", "requiresAuth": false, "secondaryOk": true, "adminOnly": false},
        );
    }
    Reply::ok(doc! {"commands": cmds})
}

/// `replSetGetStatus`: a single healthy primary.
///
/// # Errors
/// On storage failure.
pub fn repl_set_get_status(ctx: &ServerCtx) -> Result<Reply> {
    let snap = ctx.store.snapshot()?;
    let ts = ctx.store.committed_ts();
    let optime = doc! {"ts": ts, "t": 1i64};
    // The wall clock of an optime: its seconds (what mongod's `optimeDate` shows).
    let wall = DateTime::from_millis(i64::from(ts.time) * 1000);
    let started = DateTime::from_millis(
        DateTime::now().timestamp_millis()
            - i64::try_from(ctx.started.elapsed().as_millis()).unwrap_or(0),
    );
    let mut r = doc! {
        "set": &ctx.config.repl_set,
        "date": DateTime::now(),
        "myState": 1,
        "term": 1i64,
        "syncSourceHost": "",
        "syncSourceId": -1,
        "heartbeatIntervalMillis": 2000i64,
        "majorityVoteCount": 1,
        "writeMajorityCount": 1,
        "votingMembersCount": 1,
        "writableVotingMembersCount": 1,
        "optimes": {
            "lastCommittedOpTime": optime.clone(),
            "lastCommittedWallTime": wall,
            "readConcernMajorityOpTime": optime.clone(),
            "appliedOpTime": optime.clone(),
            "durableOpTime": optime.clone(),
            "lastAppliedWallTime": wall,
            "lastDurableWallTime": wall,
        },
        "members": [{
            "_id": 0,
            "name": &ctx.config.advertised,
            "health": 1.0,
            "state": 1,
            "stateStr": "PRIMARY",
            "uptime": ctx.started.elapsed().as_secs() as i64,
            "optime": optime.clone(),
            "optimeDate": wall,
            "optimeDurable": optime,
            "optimeDurableDate": wall,
            "lastAppliedWallTime": wall,
            "lastDurableWallTime": wall,
            "syncSourceHost": "",
            "syncSourceId": -1,
            "infoMessage": "",
            "electionTime": bson::Timestamp { time: u32::try_from(started.timestamp_millis() / 1000).unwrap_or(0), increment: 1 },
            "electionDate": started,
            "configVersion": 1,
            "configTerm": 1i64,
            "self": true,
            "lastHeartbeatMessage": "",
        }],
    };
    if let Some((first, last)) = snap.oplog_bounds()? {
        r.insert(
            "oplog",
            doc! {"earliestOptime": first, "latestOptime": last},
        );
    }
    Ok(Reply::ok(r))
}

/// `replSetGetConfig`.
pub fn repl_set_get_config(ctx: &ServerCtx) -> Reply {
    Reply::ok(doc! {"config": {
        "_id": &ctx.config.repl_set,
        "version": 1,
        "term": 1i64,
        "members": [{"_id": 0, "host": &ctx.config.advertised, "arbiterOnly": false, "priority": 1.0, "votes": 1, "hidden": false}],
        "settings": {"electionTimeoutMillis": 10000i64},
    }})
}

/// Session housekeeping: sessions hold no server state yet beyond retryable-write records,
/// which outlive the session as in MongoDB.
pub async fn sessions(ctx: &ServerCtx, name: &str, cmd: &Document) -> Reply {
    match name {
        "startSession" => {
            let id = bson::Uuid::new();
            return Reply::ok(doc! {"id": {"id": id}, "timeoutMinutes": 30});
        }
        // Ending or killing a session aborts its open transaction.
        "endSessions" | "killSessions" => {
            let keys: Vec<Vec<u8>> = match cmd.get(name) {
                Some(Bson::Array(a)) => a
                    .iter()
                    .filter_map(|l| match l.as_document()?.get("id")? {
                        Bson::Binary(b) => Some(b.bytes.clone()),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            ctx.txns.end_sessions(&keys).await;
            ctx.local_sessions.end(&keys);
        }
        "killAllSessions" | "killAllSessionsByPattern" => ctx.txns.abort_all().await,
        _ => {}
    }
    Reply::ok(Document::new())
}

/// `shutdown` (on `admin` only).
///
/// # Errors
/// Unauthorized when run on another database.
pub fn shutdown(ctx: &ServerCtx, db: &str) -> Result<Reply> {
    if db != "admin" {
        return Err(MongoError::new(
            ErrorCode::Unauthorized,
            "shutdown must run from admin db",
        ));
    }
    tracing::info!("shutdown command received");
    ctx.shutdown.send_replace(true);
    Ok(Reply::ok(Document::new()))
}

/// The `raftPartition` fail point (replica set members only): `{mode: "alwaysOn", data:
/// {members: [ids]}}` cuts this member off from those members (RPCs neither sent nor
/// answered), `{mode: "off"}` heals.
fn raft_partition(ctx: &ServerCtx, cmd: &Document) -> Result<Reply> {
    if ctx.repl.is_none() {
        return Err(MongoError::bad_value(
            "raftPartition applies to replica set members (--replSet)",
        ));
    }
    let members = match cmd.get("mode") {
        Some(Bson::String(m)) if m == "off" => Vec::new(),
        Some(Bson::String(m)) if m == "alwaysOn" => util::opt_doc(cmd, "data")?
            .and_then(|d| d.get_array("members").ok())
            .ok_or_else(|| MongoError::bad_value("raftPartition needs data.members"))?
            .iter()
            .map(|m| match m {
                Bson::Int32(i) if *i >= 0 => Ok(*i as u64),
                Bson::Int64(i) if *i >= 0 => Ok(*i as u64),
                _ => Err(MongoError::bad_value("data.members holds member ids")),
            })
            .collect::<Result<_>>()?,
        _ => {
            return Err(MongoError::bad_value(
                "raftPartition takes mode \"alwaysOn\" or \"off\"",
            ));
        }
    };
    repl::net::set_partition(members);
    Ok(Reply::ok(doc! {"count": 0}))
}

/// `configureFailPoint` (only with `enableTestCommands`).
///
/// # Errors
/// CommandNotFound without test commands; BadValue for bad modes and unknown fail points.
pub fn configure_fail_point(ctx: &ServerCtx, cmd: &Document) -> Result<Reply> {
    if !ctx.test_commands() {
        return Err(MongoError::new(
            ErrorCode::CommandNotFound,
            "no such command: 'configureFailPoint' (start eddy with --setParameter enableTestCommands=1)",
        ));
    }
    let name = cmd
        .get_str("configureFailPoint")
        .map_err(|_| MongoError::bad_value("configureFailPoint needs a name"))?;
    if name == "raftPartition" {
        return raft_partition(ctx, cmd);
    }
    if !matches!(
        name,
        "failCommand"
            | "failGetMoreAfterCursorCheckout"
            | "onPrimaryTransactionalWrite"
            | "maxTimeAlwaysTimeOut"
    ) {
        return Err(MongoError::bad_value(format!(
            "Cannot find failpoint {name}"
        )));
    }
    let skip = match cmd.get("mode") {
        Some(Bson::Document(d)) => util::get_i64(d, "skip").unwrap_or(0).max(0) as u64,
        _ => 0,
    };
    let times = match cmd.get("mode") {
        Some(Bson::String(m)) if m == "off" => {
            ctx.fail_points.lock().unwrap().remove(name);
            return Ok(Reply::ok(doc! {"count": 0}));
        }
        Some(Bson::String(m)) if m == "alwaysOn" => None,
        Some(Bson::Document(d)) if d.contains_key("times") => Some(
            util::get_i64(d, "times")
                .ok_or_else(|| MongoError::bad_value("times must be a number"))?
                .max(0) as u64,
        ),
        Some(Bson::Document(d))
            if d.contains_key("skip") || d.contains_key("activationProbability") =>
        {
            None
        }
        _ => return Err(MongoError::bad_value("unknown fail point mode")),
    };
    let data = util::opt_doc(cmd, "data")?.cloned().unwrap_or_default();
    ctx.fail_points
        .lock()
        .unwrap()
        .insert(name.to_string(), FailPoint { times, skip, data });
    Ok(Reply::ok(doc! {"count": 0}))
}

/// Takes one activation of `failCommand` if it applies to this command on this connection.
pub fn fail_point_for(ctx: &ServerCtx, conn: &ConnInfo, cmd_name: &str) -> Option<Document> {
    take_fail_point(ctx, "failCommand", |data| {
        let listed = data
            .get_array("failCommands")
            .is_ok_and(|a| a.iter().any(|c| c.as_str() == Some(cmd_name)));
        let app_ok = match data.get_str("appName") {
            Ok(a) => conn.app_name.as_deref() == Some(a),
            Err(_) => true,
        };
        listed && app_ok
    })
}

/// Takes one activation of a named fail point when `applies` says it concerns this call.
pub fn take_fail_point(
    ctx: &ServerCtx,
    name: &str,
    applies: impl Fn(&Document) -> bool,
) -> Option<Document> {
    let mut fps = ctx.fail_points.lock().unwrap();
    let fp = fps.get_mut(name)?;
    if !applies(&fp.data) {
        return None;
    }
    if fp.skip > 0 {
        fp.skip -= 1;
        return None;
    }
    let data = fp.data.clone();
    match &mut fp.times {
        None => {}
        Some(0) => {
            fps.remove(name);
            return None;
        }
        Some(n) => {
            *n -= 1;
            if *n == 0 {
                fps.remove(name);
            }
        }
    }
    Some(data)
}

/// The one cluster parameter Eddy has.
pub const CHANGE_STREAM_OPTIONS: &str = "changeStreamOptions";

/// `expireAfterSeconds` of a stored `changeStreamOptions`, `None` for "off".
pub fn expire_after_seconds(p: &Document) -> Option<i64> {
    p.get_document("preAndPostImages")
        .ok()
        .and_then(|i| util::get_i64(i, "expireAfterSeconds"))
}

fn default_change_stream_options() -> Document {
    doc! {"_id": CHANGE_STREAM_OPTIONS, "preAndPostImages": {"expireAfterSeconds": "off"}}
}

/// `setClusterParameter: {changeStreamOptions: {preAndPostImages: {expireAfterSeconds: N | "off"}}}`.
///
/// # Errors
/// Unauthorized off `admin`, NoSuchKey for other parameters, BadValue for bad values.
pub async fn set_cluster_parameter(
    ctx: &Arc<ServerCtx>,
    db: &str,
    cmd: &Document,
) -> Result<Reply> {
    if db != "admin" {
        return Err(MongoError::new(
            ErrorCode::Unauthorized,
            "setClusterParameter may only be run against the admin database.",
        ));
    }
    let p = util::opt_doc(cmd, "setClusterParameter")?
        .ok_or_else(|| MongoError::type_mismatch("setClusterParameter expects an object"))?;
    if p.len() != 1 {
        return Err(MongoError::bad_value(
            "setClusterParameter expects exactly one parameter",
        ));
    }
    let (name, value) = p.iter().next().expect("one field");
    if name != CHANGE_STREAM_OPTIONS {
        return Err(MongoError::new(
            ErrorCode::NoSuchKey,
            format!("Unknown Cluster Parameter {name}"),
        ));
    }
    let Bson::Document(value) = value else {
        return Err(MongoError::type_mismatch(
            "changeStreamOptions must be an object",
        ));
    };
    let mut images = default_change_stream_options()
        .get_document("preAndPostImages")
        .cloned()
        .unwrap_or_default();
    for (k, v) in value {
        match k.as_str() {
            "preAndPostImages" => {
                let Bson::Document(pp) = v else {
                    return Err(MongoError::type_mismatch(
                        "preAndPostImages must be an object",
                    ));
                };
                for (k2, v2) in pp {
                    if k2 != "expireAfterSeconds" {
                        return Err(MongoError::with_code(
                            40415,
                            format!("BSON field 'preAndPostImages.{k2}' is an unknown field."),
                        ));
                    }
                    let n = match (v2, util::get_i64(pp, "expireAfterSeconds")) {
                        (Bson::String(s), _) if s == "off" => Bson::String("off".into()),
                        (_, Some(n)) if n > 0 => Bson::Int64(n),
                        _ => {
                            return Err(MongoError::bad_value(
                                "Invalid value for 'expireAfterSeconds': expected a positive number or 'off'",
                            ));
                        }
                    };
                    images.insert("expireAfterSeconds", n);
                }
            }
            other => {
                return Err(MongoError::with_code(
                    40415,
                    format!("BSON field 'changeStreamOptions.{other}' is an unknown field."),
                ));
            }
        }
    }
    let stored = doc! {"_id": CHANGE_STREAM_OPTIONS, "preAndPostImages": images, "clusterParameterTime": ctx.store.committed_ts()};
    let expiry = expire_after_seconds(&stored);
    ctx.store
        .write(move |w| w.put_setting(CHANGE_STREAM_OPTIONS, &stored))
        .await?;
    *ctx.image_expiry.lock().unwrap() = expiry;
    Ok(Reply::ok(Document::new()))
}

/// `getClusterParameter: "changeStreamOptions" | ["changeStreamOptions"] | "*"`.
///
/// # Errors
/// NoSuchKey for unknown parameters.
pub fn get_cluster_parameter(ctx: &ServerCtx, db: &str, cmd: &Document) -> Result<Reply> {
    if db != "admin" {
        return Err(MongoError::new(
            ErrorCode::Unauthorized,
            "getClusterParameter may only be run against the admin database.",
        ));
    }
    let names: Vec<String> = match cmd.get("getClusterParameter") {
        Some(Bson::String(s)) if s == "*" => vec![CHANGE_STREAM_OPTIONS.to_string()],
        Some(Bson::String(s)) => vec![s.clone()],
        Some(Bson::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        _ => {
            return Err(MongoError::type_mismatch(
                "getClusterParameter expects a string or an array of strings",
            ));
        }
    };
    let mut out = Vec::new();
    for n in names {
        if n != CHANGE_STREAM_OPTIONS {
            return Err(MongoError::new(
                ErrorCode::NoSuchKey,
                format!("Unknown Cluster Parameter {n}"),
            ));
        }
        let stored = ctx.store.snapshot()?.setting(CHANGE_STREAM_OPTIONS)?;
        out.push(Bson::Document(
            stored.unwrap_or_else(default_change_stream_options),
        ));
    }
    Ok(Reply::ok(doc! {"clusterParameters": out}))
}

/// Removes pre-images older than `expireAfterSeconds`, once a second. With "off", images
/// live as long as their oplog entries (truncation removes them with the entry).
pub fn spawn_image_expiry(ctx: std::sync::Weak<ServerCtx>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let Some(ctx) = ctx.upgrade() else { break };
            let Some(secs) = *ctx.image_expiry.lock().unwrap() else {
                continue;
            };
            // On a replica set the primary expires them, and the members apply its deletes.
            if ctx.repl.as_ref().is_some_and(|r| !r.writable()) {
                continue;
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs() as i64;
            let cutoff = u32::try_from((now - secs).max(0)).unwrap_or(0);
            let due = ctx
                .store
                .snapshot()
                .and_then(|s| s.has_preimage_before(cutoff))
                .unwrap_or(false);
            if due {
                if let Err(e) = ctx
                    .store
                    .write(move |w| w.expire_preimages_before(cutoff))
                    .await
                {
                    tracing::warn!(error = %e, "pre-image expiry failed");
                }
            }
        }
    });
}
