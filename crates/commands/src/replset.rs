//! A replica set member's commands and rules, when the server runs with `--replSet`:
//! `replSetInitiate`, `replSetGetStatus`, `replSetGetConfig`, the topology in `hello`,
//! member RPCs (`_eddyRaft`), which commands a member that is not primary refuses, and
//! write concerns that wait for other members.
//!
//! Without `--replSet` the server is a single-node set that needs no consensus (see
//! `admin::hello` and `write_concern`).

use std::sync::Arc;
use std::time::Duration;

use bson::{Bson, DateTime, Document, doc, oid::ObjectId};
use errors::{ErrorCode, MongoError, Result};
use repl::{MemberState, ReplSet, Topology};

use crate::reply::Reply;
use crate::{ServerCtx, util};

/// Commands any member answers, whatever its state.
const ANY_STATE: &[&str] = &[
    "hello",
    "isMaster",
    "ismaster",
    "ping",
    "getnonce",
    "buildInfo",
    "buildinfo",
    "serverStatus",
    "hostInfo",
    "getCmdLineOpts",
    "getParameter",
    "setParameter",
    "whatsmyuri",
    "connectionStatus",
    "listCommands",
    "replSetGetStatus",
    "replSetGetConfig",
    "replSetInitiate",
    "replSetReconfig",
    "replSetStepDown",
    "replSetFreeze",
    "_eddyRaft",
    "endSessions",
    "killSessions",
    "killAllSessions",
    "refreshSessions",
    "startSession",
    "killAllSessionsByPattern",
    "shutdown",
    "configureFailPoint",
    "getLog",
    "fsync",
    "fsyncUnlock",
    "logRotate",
    "connPoolStats",
    "features",
    "top",
    "getDefaultRWConcern",
    "currentOp",
    "killOp",
    "profile",
    "getFreeMonitoringStatus",
    "saslStart",
    "saslContinue",
    "logout",
    "authenticate",
    "getMore",
    "killCursors",
    "usersInfo",
    "rolesInfo",
    "getClusterParameter",
];

/// Whether a command writes.
pub fn writes(name: &str, cmd: &Document) -> bool {
    if crate::write_concern::WRITES.contains(&name) || cmd.contains_key("autocommit") {
        return true;
    }
    name == "aggregate"
        && cmd.get_array("pipeline").is_ok_and(|p| {
            p.last()
                .and_then(Bson::as_document)
                .is_some_and(|s| s.contains_key("$out") || s.contains_key("$merge"))
        })
}

/// Whether the command may read from a member that is not primary (its read preference
/// is not `primary`).
fn secondary_ok(cmd: &Document) -> bool {
    cmd.get_document("$readPreference")
        .ok()
        .and_then(|r| r.get_str("mode").ok())
        .is_some_and(|m| m != "primary")
}

/// Refuses what this member cannot run in its state: writes anywhere but on the primary,
/// reads on a secondary unless the read preference allows them, and everything but the
/// handshake and diagnostics before the set is initiated.
///
/// # Errors
/// NotWritablePrimary, NotPrimaryNoSecondaryOk, NotPrimaryOrSecondary.
pub fn gate(ctx: &ServerCtx, name: &str, cmd: &Document) -> Result<()> {
    let Some(set) = &ctx.repl else {
        return Ok(());
    };
    if ANY_STATE.contains(&name) {
        return Ok(());
    }
    if set.writable() {
        return Ok(());
    }
    let t = set.topology();
    let tv = doc! {"processId": ctx.process_id, "counter": t.counter};
    let with_tv = |mut e: MongoError| {
        if let Ok(b) = doc::encode::encode(&doc! {"topologyVersion": tv.clone()}) {
            e.extra = Some(Box::new(errors::ExtraInfo::Fields(b)));
        }
        e
    };
    if writes(name, cmd) {
        return Err(with_tv(MongoError::new(
            ErrorCode::NotWritablePrimary,
            "not primary",
        )));
    }
    match t.state {
        MemberState::Secondary | MemberState::Candidate if secondary_ok(cmd) => Ok(()),
        MemberState::Secondary | MemberState::Candidate | MemberState::Primary => {
            Err(with_tv(MongoError::new(
                ErrorCode::NotPrimaryNoSecondaryOk,
                "not primary and secondaryOk=false",
            )))
        }
        MemberState::Startup | MemberState::Removed => Err(with_tv(MongoError::new(
            ErrorCode::NotPrimaryOrSecondary,
            "node is not in primary or recovering state",
        ))),
    }
}

/// `electionId`: MongoDB's form, `7fffffff` followed by the term.
fn election_id(term: u64) -> ObjectId {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&[0x7f, 0xff, 0xff, 0xff]);
    b[4..].copy_from_slice(&term.to_be_bytes());
    ObjectId::from_bytes(b)
}

/// Waits, for an awaitable `hello`, until the topology differs from the version the client
/// has, or `max_wait` passes.
pub async fn await_topology(ctx: &ServerCtx, set: &ReplSet, cmd: &Document, max_wait: Duration) {
    let Ok(tv) = cmd.get_document("topologyVersion") else {
        return;
    };
    let same_process = tv.get_object_id("processId").ok() == Some(ctx.process_id);
    let counter = util::get_i64(tv, "counter").unwrap_or(-1);
    let mut rx = set.subscribe();
    if !same_process || rx.borrow_and_update().counter != counter {
        return;
    }
    let mut stop = ctx.shutdown.subscribe();
    let _ = tokio::time::timeout(max_wait, async {
        tokio::select! {
            _ = rx.changed() => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    })
    .await;
}

/// The replica set fields of `hello`.
pub fn hello_fields(ctx: &ServerCtx, set: &ReplSet, legacy: bool, d: &mut Document) {
    let t = set.topology();
    let writable = t.writable;
    d.insert(
        if legacy {
            "ismaster"
        } else {
            "isWritablePrimary"
        },
        writable,
    );
    d.insert(
        "topologyVersion",
        doc! {"processId": ctx.process_id, "counter": t.counter},
    );
    if matches!(t.state, MemberState::Startup | MemberState::Removed) {
        d.insert("secondary", false);
        d.insert("info", "Does not have a valid replica set config");
        d.insert("isreplicaset", true);
        return;
    }
    d.insert("hosts", t.hosts());
    let passives = t.passives();
    if !passives.is_empty() {
        d.insert("passives", passives);
    }
    d.insert("setName", &set.name);
    d.insert("setVersion", t.set_version as i32);
    d.insert(
        "secondary",
        matches!(t.state, MemberState::Secondary | MemberState::Candidate),
    );
    if let Some(p) = &t.primary {
        d.insert("primary", p);
    }
    if let Some((_, m, voter)) = t.members.iter().find(|(id, _, _)| Some(*id) == t.my_id) {
        if m.hidden {
            d.insert("hidden", true);
        }
        if m.priority_milli == 0 || !voter {
            d.insert("passive", true);
        }
    }
    d.insert("me", &t.me);
    if writable {
        d.insert("electionId", election_id(t.term));
    }
    let applied = ctx.store.committed_ts();
    let majority = ctx.store.majority_ts();
    let term = t.term as i64;
    d.insert(
        "lastWrite",
        doc! {
            "opTime": {"ts": applied, "t": term},
            "lastWriteDate": DateTime::from_millis(i64::from(applied.time) * 1000),
            "majorityOpTime": {"ts": majority, "t": term},
            "majorityWriteDate": DateTime::from_millis(i64::from(majority.time) * 1000),
        },
    );
}

/// `replSetInitiate`.
///
/// # Errors
/// AlreadyInitialized, InvalidReplicaSetConfig; NoReplicationEnabled without `--replSet`.
pub async fn initiate(ctx: &ServerCtx, cmd: &Document) -> Result<Reply> {
    let Some(set) = &ctx.repl else {
        return Err(no_replication());
    };
    let config = match cmd.get("replSetInitiate") {
        Some(Bson::Document(d)) if !d.is_empty() => Some(d.clone()),
        _ => None,
    };
    set.initiate(config.as_ref()).await?;
    let mut r = doc! {};
    if config.is_none() {
        r.insert(
            "info2",
            "no configuration specified. Using a default configuration for the set",
        );
        r.insert("me", &set.me);
    }
    Ok(Reply::ok(r))
}

fn no_replication() -> MongoError {
    MongoError::new(
        ErrorCode::NoReplicationEnabled,
        "This node was not started with replication enabled.",
    )
}

fn not_initiated() -> MongoError {
    MongoError::new(
        ErrorCode::NotYetInitialized,
        "no replset config has been received",
    )
}

/// `replSetGetConfig`.
///
/// # Errors
/// NotYetInitialized before the set is initiated.
pub fn get_config(set: &ReplSet) -> Result<Reply> {
    let t = set.topology();
    if t.state == MemberState::Startup {
        return Err(not_initiated());
    }
    Ok(Reply::ok(
        doc! {"config": t.config_doc(&set.name, &set.settings())},
    ))
}

/// The optime of the frame with `lsn` (the newest entry in it or before it).
fn optime_of(ctx: &ServerCtx, lsn: u64, term: i64) -> Document {
    let ts = if lsn == 0 {
        bson::Timestamp {
            time: 0,
            increment: 0,
        }
    } else {
        ctx.store
            .read_frames(lsn, lsn, 0)
            .ok()
            .and_then(|f| f.first().and_then(|f| f.header().ok()))
            .map_or(
                bson::Timestamp {
                    time: 0,
                    increment: 0,
                },
                |h| storage::oplog::key_ts(h.last_ts),
            )
    };
    doc! {"ts": ts, "t": term}
}

/// `replSetGetStatus`.
///
/// # Errors
/// NotYetInitialized before the set is initiated.
pub fn get_status(ctx: &ServerCtx, set: &ReplSet) -> Result<Reply> {
    let t: Topology = set.topology();
    if t.state == MemberState::Startup {
        return Err(not_initiated());
    }
    let term = t.term as i64;
    let applied = ctx.store.committed_ts();
    let majority = ctx.store.majority_ts();
    let wall = |ts: bson::Timestamp| DateTime::from_millis(i64::from(ts.time) * 1000);
    let voters = t.members.iter().filter(|(_, _, v)| *v).count() as i32;
    let majority_count = voters / 2 + 1;
    let mut members = Vec::new();
    for (id, m, _) in &t.members {
        let me = Some(*id) == t.my_id;
        let (state, optime, health) = if me {
            (t.state, doc! {"ts": applied, "t": term}, 1.0)
        } else if t.primary.as_deref() == Some(m.host.as_str()) {
            (MemberState::Primary, doc! {"ts": majority, "t": term}, 1.0)
        } else if t.writable {
            // The primary knows how far each member is.
            let lsn = t.matched.get(id).copied().unwrap_or(0);
            let h = if lsn > 0 { 1.0 } else { 0.0 };
            (MemberState::Secondary, optime_of(ctx, lsn, term), h)
        } else {
            (
                MemberState::Secondary,
                doc! {"ts": majority, "t": term},
                1.0,
            )
        };
        let mut d = doc! {
            "_id": *id as i32,
            "name": &m.host,
            "health": health,
            "state": state.code(),
            "stateStr": state.name(),
            "uptime": if me { ctx.started.elapsed().as_secs() as i64 } else { 0 },
            "optime": optime.clone(),
            "optimeDate": wall(optime.get_timestamp("ts").unwrap_or(applied)),
            "syncSourceHost": if state == MemberState::Primary || t.primary.is_none() { String::new() } else { t.primary.clone().unwrap_or_default() },
            "syncSourceId": -1,
            "infoMessage": "",
            "configVersion": t.set_version as i32,
            "configTerm": term,
        };
        if me {
            d.insert("self", true);
            if state == MemberState::Primary {
                d.insert("electionDate", DateTime::now());
                d.insert("electionTime", applied);
            }
        }
        members.push(Bson::Document(d));
    }
    Ok(Reply::ok(doc! {
        "set": &set.name,
        "date": DateTime::now(),
        "myState": t.state.code(),
        "term": term,
        "syncSourceHost": "",
        "syncSourceId": -1,
        "heartbeatIntervalMillis": set.settings().heartbeat_ms as i64,
        "majorityVoteCount": majority_count,
        "writeMajorityCount": majority_count,
        "votingMembersCount": voters,
        "writableVotingMembersCount": voters,
        "optimes": {
            "lastCommittedOpTime": {"ts": majority, "t": term},
            "lastCommittedWallTime": wall(majority),
            "readConcernMajorityOpTime": {"ts": majority, "t": term},
            "appliedOpTime": {"ts": applied, "t": term},
            "durableOpTime": {"ts": applied, "t": term},
            "lastAppliedWallTime": wall(applied),
            "lastDurableWallTime": wall(applied),
        },
        "members": members,
    }))
}

/// `_eddyRaft`: a member RPC.
///
/// # Errors
/// NoReplicationEnabled without `--replSet`; a malformed request.
pub async fn raft_rpc(ctx: &ServerCtx, cmd: &Document) -> Result<Reply> {
    let Some(set) = &ctx.repl else {
        return Err(no_replication());
    };
    let kind = cmd
        .get_str("_eddyRaft")
        .map_err(|_| MongoError::new(ErrorCode::BadValue, "_eddyRaft must name the RPC"))?;
    let member = |k: &str| {
        util::get_i64(cmd, k)
            .filter(|t| (0..=255).contains(t))
            .map(|t| t as u64)
            .ok_or_else(|| MongoError::new(ErrorCode::BadValue, format!("_eddyRaft needs {k}")))
    };
    let (from, to) = (member("from")?, member("to")?);
    let s = cmd.get_document("settings").ok();
    let ms = |k: &str| s.and_then(|s| util::get_i64(s, k)).filter(|v| *v > 0);
    let (Some(e), Some(h)) = (ms("electionTimeoutMillis"), ms("heartbeatIntervalMillis")) else {
        return Err(MongoError::new(
            ErrorCode::BadValue,
            "_eddyRaft needs the set's settings",
        ));
    };
    let settings = repl::Settings {
        election_timeout_ms: e as u64,
        heartbeat_ms: h as u64,
    };
    let req = cmd
        .get_binary_generic("req")
        .map_err(|_| MongoError::new(ErrorCode::BadValue, "_eddyRaft needs the request"))?;
    let xfer = util::get_i64(cmd, "xfer").unwrap_or(0).max(0) as u64;
    Ok(Reply::ok(
        set.serve_rpc(from, to, settings, kind, xfer, req).await?,
    ))
}

/// What a write concern waits for on a replica set.
pub enum Wait {
    /// This member's log (every write is durable there before it is answered).
    Local,
    Majority,
    /// This many members (this one included).
    Members(usize),
}

/// Waits until the members the write concern names hold this member's writes so far;
/// returns the `writeConcernError` if they do not within `wtimeout` (0: no limit).
pub async fn wait_for(
    ctx: &ServerCtx,
    set: &Arc<ReplSet>,
    wait: Wait,
    wtimeout_ms: i32,
) -> Option<Document> {
    let lsn = ctx.store.repl().map_or(0, |r| r.last_own.lock().unwrap().0);
    let fut = async {
        match wait {
            Wait::Local => Ok(()),
            Wait::Majority => ctx.store.wait_majority().await,
            Wait::Members(n) => {
                let mut rx = set.subscribe();
                loop {
                    let held = {
                        let t = rx.borrow_and_update();
                        1 + t.matched.values().filter(|&&m| m >= lsn).count()
                    };
                    if held >= n {
                        return Ok(());
                    }
                    tokio::select! {
                        r = rx.changed() => if r.is_err() {
                            return Err(MongoError::new(ErrorCode::InterruptedAtShutdown, "shutting down"));
                        },
                        () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
            }
        }
    };
    let r = if wtimeout_ms > 0 {
        match tokio::time::timeout(Duration::from_millis(wtimeout_ms as u64), fut).await {
            Ok(r) => r,
            Err(_) => {
                return Some(doc! {
                    "code": ErrorCode::WriteConcernFailed.code(),
                    "codeName": ErrorCode::WriteConcernFailed.name(),
                    "errmsg": "waiting for replication timed out",
                    "errInfo": {"wtimeout": true, "writeConcern": {"w": "majority", "wtimeout": wtimeout_ms, "provenance": "clientSupplied"}},
                });
            }
        }
    } else {
        fut.await
    };
    match r {
        Ok(()) => None,
        Err(e) => Some(doc! {
            "code": e.code,
            "codeName": ErrorCode::from_code(e.code).map_or("InternalError", ErrorCode::name),
            "errmsg": e.message,
        }),
    }
}

fn set_of(ctx: &ServerCtx) -> Result<&Arc<ReplSet>> {
    ctx.repl.as_ref().ok_or_else(no_replication)
}

/// `replSetStepDown`.
///
/// # Errors
/// BadValue for bad periods; NotWritablePrimary off the primary; ExceededTimeLimit when no
/// electable secondary caught up in time (and `force` is not set).
pub async fn step_down(ctx: &ServerCtx, cmd: &Document) -> Result<Reply> {
    let set = set_of(ctx)?;
    let secs = match util::get_i64(cmd, "replSetStepDown") {
        None | Some(0) => 60,
        Some(s) if s < 0 => {
            return Err(MongoError::bad_value(
                "stepdown period must be a positive integer",
            ));
        }
        Some(s) => s,
    };
    let force = cmd.get_bool("force").unwrap_or(false);
    let catch_up = match util::get_i64(cmd, "secondaryCatchUpPeriodSecs") {
        None => {
            if force {
                0
            } else {
                10
            }
        }
        Some(c) if c < 0 => {
            return Err(MongoError::bad_value(
                "secondaryCatchUpPeriodSecs period must be a positive or absent",
            ));
        }
        Some(c) => c,
    };
    if secs < catch_up {
        return Err(MongoError::bad_value(
            "stepdown period must be longer than secondaryCatchUpPeriodSecs",
        ));
    }
    set.step_down(
        Duration::from_secs(secs as u64),
        Duration::from_secs(catch_up as u64),
        force,
    )
    .await?;
    Ok(Reply::ok(Document::new()))
}

/// `replSetFreeze`.
///
/// # Errors
/// NotSecondary on the primary.
pub fn freeze(ctx: &ServerCtx, cmd: &Document) -> Result<Reply> {
    let set = set_of(ctx)?;
    let secs = util::get_i64(cmd, "replSetFreeze")
        .filter(|s| *s >= 0)
        .ok_or_else(|| MongoError::bad_value("replSetFreeze takes a number of seconds"))?;
    set.freeze(secs as u64)?;
    Ok(Reply::ok(match secs {
        0 => doc! {"info": "unfreezing"},
        1 => doc! {"warning": "you really want to freeze for only 1 second?"},
        _ => Document::new(),
    }))
}

/// `replSetReconfig`.
///
/// # Errors
/// See [`ReplSet::reconfig`].
pub async fn reconfig(ctx: &ServerCtx, cmd: &Document) -> Result<Reply> {
    let set = set_of(ctx)?;
    let config = cmd.get_document("replSetReconfig").map_err(|_| {
        MongoError::new(
            ErrorCode::TypeMismatch,
            "replSetReconfig takes a config document",
        )
    })?;
    set.reconfig(config, cmd.get_bool("force").unwrap_or(false))
        .await?;
    Ok(Reply::ok(Document::new()))
}

/// `local.system.replset`: the config document, as mongosh's helpers read it.
pub fn system_replset(ctx: &ServerCtx) -> Vec<Document> {
    match &ctx.repl {
        Some(set) if set.initiated() => {
            vec![set.topology().config_doc(&set.name, &set.settings())]
        }
        _ => Vec::new(),
    }
}
