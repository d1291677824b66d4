//! Commands: one registry from name to handler, and the only place replies are built.
//!
//! Layout:
//! - this file: [`ServerCtx`] (shared state), [`ConnInfo`], [`handle`] (dispatch, fail
//!   points, `$clusterTime`/`operationTime` on every reply).
//! - [`rw_defaults`]: `setDefaultRWConcern` and `getDefaultRWConcern`.
//! - [`reply`]: ok and error replies.
//! - [`admin`]: handshake, diagnostics, parameters, sessions, fail points.
//! - [`ddl`]: create, drop, rename, collMod, indexes, listings.
//! - [`diag`]: fsync and its lock, validate, dbHash, connPoolStats, features.
//! - [`crud`]: insert, update, delete, findAndModify, find, count, distinct, aggregate.
//! - [`bulk_write`]: the `bulkWrite` command (8.0 client bulk write).
//! - [`cursor`]: the cursor table, getMore, killCursors, and change stream cursors.
//! - [`sessions`]: the logical session cache (`$listLocalSessions`).
//! - [`logs`]: `getLog`'s ring of recent lines, log verbosity, `profile` and `slowms`.
//! - [`stats`]: `dbStats`, `collStats` and `$collStats`.
//! - [`write_concern`]: parsing write concerns and the `writeConcernError` of unmet ones.
//! - [`tail`]: tailable cursors on capped collections.
//! - [`ttl`]: the TTL monitor.
//! - [`util`]: argument readers shared by the handlers.

pub mod admin;
pub mod bulk_write;
pub mod census;
pub mod crud;
pub mod cursor;
pub mod ddl;
pub mod diag;
pub mod logs;
pub mod metrics;
pub mod op;
pub mod ops;
pub mod privileges;
pub mod replset;
pub mod reply;
pub mod rw_defaults;
pub mod security;
pub mod sessions;
pub mod stats;
pub mod tail;
pub mod ttl;
pub mod txn;
pub mod users;
pub mod util;
pub mod write_concern;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bson::{Bson, Document, doc, oid::ObjectId};
use changestream::Hub;
use errors::{ErrorCode, MongoError, Result};
use storage::Store;

pub use reply::Reply;

/// Start-up configuration the commands report.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The address drivers should use (`hosts`, `me`, `primary`).
    pub advertised: String,
    pub repl_set: String,
    pub argv: Vec<String>,
    /// `getCmdLineOpts.parsed`.
    pub parsed: Document,
    pub port: u16,
    /// The oplog's size bound (`--oplogSize`), reported as `local.oplog.rs`'s `maxSize`.
    pub oplog_size_bytes: u64,
    /// `--auth` (or `--keyFile`).
    pub auth: bool,
    /// The key file's key: members authenticate to each other as `__system` with it.
    pub key: Option<String>,
    /// `--maxConns`.
    pub max_conns: u64,
}

/// Counters for `serverStatus`.
#[derive(Default)]
pub struct Stats {
    pub insert: AtomicU64,
    pub query: AtomicU64,
    pub update: AtomicU64,
    pub delete: AtomicU64,
    pub getmore: AtomicU64,
    pub command: AtomicU64,
    pub connections_current: AtomicU64,
    pub connections_total: AtomicU64,
}

/// A `failCommand`-style fail point.
#[derive(Debug, Clone)]
pub struct FailPoint {
    /// Remaining activations; `None` = always on.
    pub times: Option<u64>,
    /// Activations to let pass before the fail point fires (mode `{skip: N}`).
    pub skip: u64,
    pub data: Document,
}

/// State shared by every connection.
pub struct ServerCtx {
    pub store: Store,
    pub hub: Arc<Hub>,
    pub config: ServerConfig,
    pub cursors: cursor::Cursors,
    pub stats: Stats,
    pub ttl: ttl::TtlStats,
    pub fsync_lock: diag::FsyncLock,
    pub top: diag::Top,
    pub rw_defaults: rw_defaults::Defaults,
    pub started: Instant,
    pub process_id: ObjectId,
    pub parameters: Mutex<Document>,
    pub fail_points: Mutex<HashMap<String, FailPoint>>,
    next_conn: AtomicI64,
    /// Fired by the `shutdown` command.
    pub shutdown: tokio::sync::watch::Sender<bool>,
    /// `changeStreamOptions.preAndPostImages.expireAfterSeconds`, when not "off".
    pub image_expiry: Mutex<Option<i64>>,
    /// The sessions commands have come with (`$listLocalSessions`).
    pub local_sessions: sessions::LocalSessions,
    /// Sessions' transactions and retained read snapshots.
    pub txns: txn::Transactions,
    /// Running operations and open connections (`currentOp`, `killOp`).
    pub ops: ops::Ops,
    /// Change streams building a catch-up batch at once (see `cursor::CATCH_UP_SLOTS`).
    pub catch_up: Arc<tokio::sync::Semaphore>,
    /// Access control.
    pub security: security::Security,
    /// The replica set, when started with `--replSet` (else a single-node set that needs
    /// no consensus: see `replset`).
    pub repl: Option<Arc<repl::ReplSet>>,
}

/// The server parameters (`getParameter`/`setParameter`) and their defaults, besides
/// `logLevel` and `logComponentVerbosity`, which the log keeps.
pub fn default_parameters() -> Document {
    doc! {
        "enableTestCommands": false,
        "featureCompatibilityVersion": {"version": "8.0"},
        "transactionLifetimeLimitSeconds": 60,
        "cursorTimeoutMillis": 600_000i64,
        "maxBSONDepth": 200,
        "internalQueryMaxBlockingSortMemoryUsageBytes": query::spill::DEFAULT_MAX_BYTES as i64,
        "internalDocumentSourceGroupMaxMemoryBytes": query::spill::DEFAULT_MAX_BYTES as i64,
        "internalQueryMaxPushBytes": query::spill::DEFAULT_MAX_BYTES as i64,
        "internalQueryMaxAddToSetBytes": query::spill::DEFAULT_MAX_BYTES as i64,
        "allowDiskUseByDefault": true,
        "authenticationMechanisms": ["SCRAM-SHA-1", "SCRAM-SHA-256"],
        "scramIterationCount": auth::scram::DEFAULT_SHA1_ITERATIONS as i32,
        "scramSHA256IterationCount": auth::scram::DEFAULT_SHA256_ITERATIONS as i32,
        "authFailedDelayMs": security::DEFAULT_AUTH_FAILED_DELAY_MS,
        "createRollbackDataFiles": true,
        "ttlMonitorEnabled": true,
        "ttlMonitorSleepSecs": 60,
    }
}

/// Whether `name` is a server parameter `--setParameter` may set.
pub fn is_parameter(name: &str) -> bool {
    matches!(name, "logLevel" | "logComponentVerbosity") || default_parameters().contains_key(name)
}

impl ServerCtx {
    /// Creates the shared state over an open store. Must run inside a tokio runtime (it
    /// starts the change hub and the idle-cursor reaper).
    pub fn new(
        store: Store,
        config: ServerConfig,
        parameters: Document,
        repl: Option<Arc<repl::ReplSet>>,
    ) -> Arc<ServerCtx> {
        let hub = Hub::start(store.clone());
        hub.spawn_tailer();
        let mut params = default_parameters();
        for (k, v) in parameters {
            params.insert(k, v);
        }
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let security = security::Security::new(config.auth, config.key.as_deref());
        let ctx = Arc::new(ServerCtx {
            store,
            hub,
            config,
            cursors: cursor::Cursors::default(),
            stats: Stats::default(),
            ttl: ttl::TtlStats::default(),
            fsync_lock: diag::FsyncLock::default(),
            top: diag::Top::default(),
            rw_defaults: rw_defaults::Defaults::default(),
            started: Instant::now(),
            process_id: ObjectId::new(),
            parameters: Mutex::new(params),
            fail_points: Mutex::new(HashMap::new()),
            next_conn: AtomicI64::new(1),
            shutdown,
            image_expiry: Mutex::new(None),
            local_sessions: sessions::LocalSessions::default(),
            txns: txn::Transactions::default(),
            ops: ops::Ops::default(),
            catch_up: Arc::new(tokio::sync::Semaphore::new(cursor::CATCH_UP_SLOTS)),
            security,
            repl,
        });
        if let Ok(Some(p)) = ctx
            .store
            .snapshot()
            .and_then(|s| s.setting(admin::CHANGE_STREAM_OPTIONS))
        {
            *ctx.image_expiry.lock().unwrap() = admin::expire_after_seconds(&p);
        }
        query::spill::set_default_spill_dir(cursor::spill_dir(&ctx));
        cursor::spawn_reaper(Arc::downgrade(&ctx));
        txn::spawn_reaper(Arc::downgrade(&ctx));
        admin::spawn_image_expiry(Arc::downgrade(&ctx));
        ttl::spawn(Arc::downgrade(&ctx));
        exec::plan::usage::start();
        rw_defaults::Defaults::load(&ctx);
        ctx
    }

    /// A new connection's state.
    pub fn connect(&self, peer: String) -> ConnInfo {
        self.stats
            .connections_current
            .fetch_add(1, Ordering::Relaxed);
        self.stats.connections_total.fetch_add(1, Ordering::Relaxed);
        let conn = ConnInfo {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            peer,
            app_name: None,
            compressors: Vec::new(),
            auth: security::ConnAuth::default(),
        };
        self.ops.connected(&conn);
        conn
    }

    /// Forgets a closed connection.
    pub fn disconnect(&self, conn: &ConnInfo) {
        self.ops.disconnected(conn);
        self.stats
            .connections_current
            .fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether `enableTestCommands` is on.
    pub fn test_commands(&self) -> bool {
        matches!(
            self.parameters.lock().unwrap().get("enableTestCommands"),
            Some(Bson::Boolean(true)) | Some(Bson::Int32(1))
        )
    }
}

/// One connection's state.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub id: i64,
    pub peer: String,
    pub app_name: Option<String>,
    /// Compressors negotiated through hello, in the client's order of preference.
    pub compressors: Vec<String>,
    /// Who the connection is authenticated as.
    pub auth: security::ConnAuth,
}

/// The command name: the first field of the body.
pub fn command_name(cmd: &Document) -> &str {
    cmd.keys().next().map_or("", String::as_str)
}

/// Runs one command and builds its reply. Never panics on input; any failure becomes an
/// error reply.
pub async fn handle(ctx: &Arc<ServerCtx>, conn: &mut ConnInfo, cmd: Document) -> Reply {
    let start = Instant::now();
    let name = command_name(&cmd).to_string();
    let cmd = ctx.rw_defaults.apply(&name, cmd);
    // Shared with `currentOp`'s registry for as long as the command runs, uncopied.
    let cmd = Arc::new(cmd);
    let r = run(ctx, conn, &name, &cmd).await;
    let took = start.elapsed();
    logs::command_done(&name, &cmd, &r, took, conn.id);
    metrics::command_done(&name, &r.doc, took);
    ctx.top.record(&name, &cmd, took);
    if let Ok(db) = util::db_of(&cmd) {
        // Only where writes may happen: not on a secondary, nor under an fsync lock.
        let writable = ctx.repl.as_ref().is_none_or(|s| s.writable()) && !ctx.fsync_lock.held();
        if let Some(entry) = logs::profiled(&db, &name, &cmd, &r, took, conn).filter(|_| writable) {
            if let Err(e) = logs::write_profile(ctx, &db, entry).await {
                tracing::warn!(error = %e, "could not write to system.profile");
            }
        }
    }
    r
}

async fn run(ctx: &Arc<ServerCtx>, conn: &mut ConnInfo, name: &str, cmd: &Arc<Document>) -> Reply {
    let name = name.to_string();
    ctx.stats.command.fetch_add(1, Ordering::Relaxed);
    ctx.local_sessions.touch(cmd);
    if matches!(name.as_str(), "hello" | "isMaster" | "ismaster") {
        admin::note_client_metadata(conn, cmd);
    }
    // Fail points match the command's canonical name, as mongod's do: a legacy handshake's
    // `ismaster` is `isMaster`.
    let canonical = if name == "ismaster" {
        "isMaster"
    } else {
        name.as_str()
    };
    let fp = admin::fail_point_for(ctx, conn, canonical);
    let mut wce = None;
    if let Some(fp) = fp {
        if fp.get_bool("closeConnection").unwrap_or(false) {
            return Reply::close();
        }
        if fp.get_bool("blockConnection").unwrap_or(false) {
            let ms = util::get_i64(&fp, "blockTimeMS").unwrap_or(0).max(0) as u64;
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        if let Some(code) = util::get_i64(&fp, "errorCode") {
            let mut e = MongoError::with_code(
                code as i32,
                format!("Failing command {name} via 'failCommand' failpoint"),
            );
            match fp.get_array("errorLabels") {
                Ok(labels) => {
                    e.labels = labels
                        .iter()
                        .filter_map(|l| l.as_str().map(String::from))
                        .collect();
                }
                Err(_) => e = reply::add_server_labels(e, &name, cmd),
            }
            return finish(ctx, Reply::error(e));
        }
        if let Ok(w) = fp.get_document("writeConcernError") {
            wce = Some(w.clone());
        }
    }
    // `onPrimaryTransactionalWrite`: a retryable write fails before it commits
    // (`failBeforeCommitExceptionCode`) or commits and loses its reply; either way the
    // connection closes unless `closeConnection: false`.
    let mut close_after = false;
    // Checked in this order so that ordinary retryable writes pay no session lookup.
    if reply::is_retryable_write(&name, cmd)
        && ctx
            .fail_points
            .lock()
            .unwrap()
            .contains_key("onPrimaryTransactionalWrite")
        && !is_retry(ctx, cmd)
    {
        if let Some(fp) = admin::take_fail_point(ctx, "onPrimaryTransactionalWrite", |_| true) {
            let close = fp.get_bool("closeConnection").unwrap_or(true);
            if let Some(code) = util::get_i64(&fp, "failBeforeCommitExceptionCode") {
                if close {
                    return Reply::close();
                }
                let e = MongoError::with_code(
                    code as i32,
                    "Failing write due to failpoint. The write must not be reflected.",
                );
                return finish(ctx, Reply::error(reply::add_server_labels(e, &name, cmd)));
            }
            close_after = close;
        }
    }
    let wc = match write_concern::parse(&name, cmd) {
        Ok(wc) => wc,
        Err(e) => return finish(ctx, Reply::error(e)),
    };
    // `maxTimeMS` bounds the operation from here on; a getMore's is its await time, or the
    // budget its cursor kept (see `cursor::get_more`).
    let interrupt = if name == "getMore" {
        errors::Interrupt::none()
    } else {
        match op::max_time(cmd) {
            Ok(limit) => errors::Interrupt::after(limit),
            Err(e) => return finish(ctx, Reply::error(e)),
        }
    };
    if interrupt.deadline().is_some()
        && admin::take_fail_point(ctx, "maxTimeAlwaysTimeOut", |_| true).is_some()
    {
        return finish(ctx, Reply::error(errors::expired()));
    }
    let db = match util::db_of(cmd) {
        Ok(db) => db,
        Err(e) => return finish(ctx, Reply::error(e)),
    };
    let caller = match security::check(ctx, conn, &name, &db, cmd) {
        Ok(c) => c,
        Err(e) => return finish(ctx, Reply::error(e)),
    };
    if let Err(e) = replset::gate(ctx, &name, cmd) {
        return finish(ctx, Reply::error(reply::add_server_labels(e, &name, cmd)));
    }
    let guard = ctx.ops.register(conn, &name, cmd, &interrupt);
    // `fsync` with `lock: true` holds writes back until `fsyncUnlock` (they show in
    // `currentOp` meanwhile, and `killOp` or maxTimeMS ends the wait).
    if replset::writes(&name, cmd) {
        if let Err(e) = ctx.fsync_lock.wait(&interrupt).await {
            drop(guard);
            return finish(ctx, Reply::error(e));
        }
    }
    let res = security::scope(
        caller,
        op::scope(interrupt, guard.id, dispatch(ctx, conn, &name, cmd)),
    )
    .await;
    drop(guard);
    // Writes to `admin` may have changed users or roles (`admin.system.users` written
    // directly, a dropped `admin`): connections resolve their privileges again.
    if db == "admin"
        && matches!(
            name.as_str(),
            "insert"
                | "update"
                | "delete"
                | "findAndModify"
                | "findandmodify"
                | "bulkWrite"
                | "drop"
                | "dropDatabase"
                | "renameCollection"
        )
    {
        ctx.security.changed();
    }
    if close_after {
        return Reply::close();
    }
    let mut r = match res {
        Ok(r) => r,
        Err(e) => {
            let e = reply::add_server_labels(e, &name, cmd);
            if e.is(ErrorCode::InternalError) {
                tracing::error!(cmd = %name, error = %e.message, "internal error");
            }
            Reply::error(e)
        }
    };
    if wce.is_none() && r.doc.get_f64("ok") == Ok(1.0) {
        wce = match &ctx.repl {
            Some(set) => replset_write_concern(ctx, set, &name, cmd, wc.as_ref()).await,
            None => wc.and_then(|wc| wc.error()),
        };
    }
    if let Some(w) = wce {
        let labels = reply::write_concern_error_labels(&name, cmd, &w);
        r.doc.insert("writeConcernError", w);
        if !labels.is_empty() {
            r.doc.insert("errorLabels", labels);
        }
    }
    finish(ctx, r)
}

/// On a replica set, waits for the members a write's concern names (`majority` when the
/// command gives none, as in MongoDB 5.0+); returns its `writeConcernError`, if any.
async fn replset_write_concern(
    ctx: &ServerCtx,
    set: &Arc<repl::ReplSet>,
    name: &str,
    cmd: &Document,
    wc: Option<&write_concern::WriteConcern>,
) -> Option<Document> {
    // Inside a transaction only its commit (or abort) waits.
    if cmd.contains_key("autocommit") && !matches!(name, "commitTransaction" | "abortTransaction") {
        return None;
    }
    if !replset::writes(name, cmd) {
        return None;
    }
    let data_members = set.topology().members.len();
    let (wait, wtimeout) = match wc {
        None => (replset::Wait::Majority, 0),
        Some(wc) => {
            let wait = match wc.w() {
                Bson::String(m) if m == "majority" => replset::Wait::Majority,
                Bson::Int64(n) if *n as usize > data_members => return wc.error_for(data_members),
                Bson::Int64(n) if *n <= 1 => replset::Wait::Local,
                Bson::Int64(n) => replset::Wait::Members(*n as usize),
                _ => return wc.error_for(data_members),
            };
            (wait, wc.wtimeout())
        }
    };
    replset::wait_for(ctx, set, wait, wtimeout).await
}

/// Whether a retryable write was already executed (its retry is answered from the
/// session record, so it writes nothing and fires no write fail point).
fn is_retry(ctx: &ServerCtx, cmd: &Document) -> bool {
    let (Some(key), Some(n)) = (txn::lsid_key(cmd), util::get_i64(cmd, "txnNumber")) else {
        return false;
    };
    ctx.store
        .snapshot()
        .and_then(|s| s.session_record(&key))
        .ok()
        .flatten()
        .is_some_and(|r| r.get_i64("txnNumber").ok() == Some(n))
}

fn finish(ctx: &ServerCtx, mut r: Reply) -> Reply {
    let ts = ctx.store.committed_ts();
    r.doc.insert("$clusterTime", doc! {
        "clusterTime": ts,
        "signature": {"hash": bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0; 20] }, "keyId": 0i64},
    });
    r.doc.insert("operationTime", ts);
    r
}

async fn dispatch(
    ctx: &Arc<ServerCtx>,
    conn: &mut ConnInfo,
    name: &str,
    cmd: &Document,
) -> Result<Reply> {
    if let Ok(rc) = cmd.get_document("readConcern") {
        if let Some(Bson::Timestamp(t)) = rc.get("afterClusterTime") {
            txn::check_cluster_time(ctx, *t).await?;
        }
    }
    if txn::is_txn_command(name, cmd) {
        return txn::run(ctx, conn, name, cmd).await;
    }
    if let Ok(rc) = cmd.get_document("readConcern") {
        let reads = [
            "find",
            "aggregate",
            "distinct",
            "count",
            "getMore",
            "explain",
        ];
        if rc.get_str("level") == Ok("snapshot") && !reads.contains(&name) {
            return Err(MongoError::new(
                ErrorCode::InvalidOptions,
                format!(
                    "Command '{name}' does not support {{ readConcern: {{ level: \"snapshot\" }} }} outside a transaction"
                ),
            ));
        }
    }
    if let (Some(key), Some(n)) = (txn::lsid_key(cmd), util::get_i64(cmd, "txnNumber")) {
        ctx.txns.note_retryable_write(&key, n).await?;
    }
    dispatch_cmd(ctx, conn, name, cmd).await
}

/// Runs one command by name (inside a transaction, once [`txn::run`] has admitted it).
async fn dispatch_cmd(
    ctx: &Arc<ServerCtx>,
    conn: &mut ConnInfo,
    name: &str,
    cmd: &Document,
) -> Result<Reply> {
    let db = util::db_of(cmd)?;
    census::check(name, cmd)?;
    let r = match name {
        // Handshake and diagnostics.
        "hello" | "isMaster" | "ismaster" => admin::hello(ctx, conn, cmd, name).await?,
        "buildInfo" | "buildinfo" => admin::build_info(),
        "ping" => Reply::ok(Document::new()),
        // Gone from mongod 7.0, but the Go driver mgo (which Debian's
        // prometheus-mongodb-exporter is built on) asks for a nonce on every new
        // connection and drops it without one. It is a random number; nothing reads it back.
        "getnonce" => Reply::ok(doc! {"nonce": format!("{:016x}", rand::random::<u64>())}),
        "serverStatus" => admin::server_status(ctx)?,
        "hostInfo" => admin::host_info(),
        "getCmdLineOpts" => admin::get_cmd_line_opts(ctx),
        "getParameter" => admin::get_parameter(ctx, cmd)?,
        "setParameter" => admin::set_parameter(ctx, cmd)?,
        "whatsmyuri" => Reply::ok(doc! {"you": &conn.peer}),
        "connectionStatus" => security::connection_status(ctx, conn, cmd)?,
        "listCommands" => admin::list_commands(),
        "replSetGetStatus" => match &ctx.repl {
            Some(set) => replset::get_status(ctx, set)?,
            None => admin::repl_set_get_status(ctx)?,
        },
        "replSetGetConfig" => match &ctx.repl {
            Some(set) => replset::get_config(set)?,
            None => admin::repl_set_get_config(ctx),
        },
        "replSetInitiate" => replset::initiate(ctx, cmd).await?,
        "replSetReconfig" => replset::reconfig(ctx, cmd).await?,
        "replSetStepDown" => replset::step_down(ctx, cmd).await?,
        "replSetFreeze" => replset::freeze(ctx, cmd)?,
        "_eddyRaft" => replset::raft_rpc(ctx, cmd).await?,
        "endSessions"
        | "killSessions"
        | "killAllSessions"
        | "refreshSessions"
        | "startSession"
        | "killAllSessionsByPattern" => admin::sessions(ctx, name, cmd).await,
        "shutdown" => admin::shutdown(ctx, &db)?,
        "configureFailPoint" => admin::configure_fail_point(ctx, cmd)?,
        "setClusterParameter" => admin::set_cluster_parameter(ctx, &db, cmd).await?,
        "getClusterParameter" => admin::get_cluster_parameter(ctx, &db, cmd)?,
        "getLog" => Reply::ok(logs::get_log(cmd)?),
        "fsync" => diag::fsync(ctx, cmd).await?,
        "fsyncUnlock" => diag::fsync_unlock(ctx)?,
        "validate" => diag::validate(ctx, &db, cmd)?,
        "dbHash" | "dbhash" => diag::db_hash(ctx, &db, cmd)?,
        "connPoolStats" => diag::conn_pool_stats(),
        "features" => diag::features(ctx),
        "top" => diag::top(ctx, &db)?,
        "getDefaultRWConcern" => rw_defaults::get(ctx, &db)?,
        "setDefaultRWConcern" => rw_defaults::set(ctx, &db, cmd).await?,
        "currentOp" => Reply::ok(ops::current_op(ctx, &db, cmd)?),
        "killOp" => Reply::ok(ops::kill_op(ctx, &db, cmd)?),
        "profile" => Reply::ok(logs::profile(&db, cmd)?),
        "getFreeMonitoringStatus" => Reply::ok(doc! {"state": "disabled"}),
        "dbStats" | "dbstats" => stats::db_stats(ctx, &db, cmd)?,
        "collStats" | "collstats" => stats::coll_stats(ctx, &db, cmd)?,
        "saslStart" => Reply::ok(security::sasl_start(ctx, conn, &db, cmd).await?),
        "saslContinue" => Reply::ok(security::sasl_continue(ctx, conn, cmd).await?),
        "logout" => security::logout(conn),
        "authenticate" => {
            return Err(MongoError::new(
                ErrorCode::MechanismUnavailable,
                "Only SCRAM-SHA-1 and SCRAM-SHA-256 are supported, through saslStart",
            ));
        }
        // Users and roles.
        "createUser" => users::create_user(ctx, &db, cmd).await?,
        "updateUser" => users::update_user(ctx, &db, cmd).await?,
        "dropUser" => users::drop_user(ctx, &db, cmd).await?,
        "dropAllUsersFromDatabase" => users::drop_all_users(ctx, &db).await?,
        "usersInfo" => users::users_info(ctx, conn, &db, cmd)?,
        "grantRolesToUser" | "revokeRolesFromUser" => {
            users::change_user_roles(ctx, &db, name, cmd).await?
        }
        "createRole" => users::create_role(ctx, &db, cmd).await?,
        "updateRole" => users::update_role(ctx, &db, cmd).await?,
        "dropRole" => users::drop_role(ctx, &db, cmd).await?,
        "dropAllRolesFromDatabase" => users::drop_all_roles(ctx, &db).await?,
        "rolesInfo" => users::roles_info(ctx, conn, &db, cmd)?,
        "grantPrivilegesToRole" | "revokePrivilegesFromRole" => {
            users::change_role_privileges(ctx, &db, name, cmd).await?
        }
        "grantRolesToRole" | "revokeRolesFromRole" => {
            users::change_role_roles(ctx, &db, name, cmd).await?
        }
        // DDL.
        "create" => ddl::create(ctx, &db, cmd).await?,
        "drop" => ddl::drop(ctx, &db, cmd).await?,
        "dropDatabase" => ddl::drop_database(ctx, &db).await?,
        "renameCollection" => ddl::rename_collection(ctx, &db, cmd).await?,
        "convertToCapped" => ddl::convert_to_capped(ctx, &db, cmd).await?,
        "cloneCollectionAsCapped" => ddl::clone_collection_as_capped(ctx, &db, cmd).await?,
        "logRotate" => Reply::ok(logs::log_rotate(&db, cmd)?),
        "collMod" => ddl::coll_mod(ctx, &db, cmd).await?,
        "listDatabases" => ddl::list_databases(ctx, cmd)?,
        "listCollections" => ddl::list_collections(ctx, &db, cmd)?,
        "createIndexes" => ddl::create_indexes(ctx, &db, cmd).await?,
        "dropIndexes" | "deleteIndexes" => ddl::drop_indexes(ctx, &db, cmd).await?,
        "listIndexes" => ddl::list_indexes(ctx, &db, cmd)?,
        // CRUD.
        "insert" => crud::insert(ctx, &db, cmd).await?,
        "update" => crud::update(ctx, &db, cmd).await?,
        "delete" => crud::delete(ctx, &db, cmd).await?,
        "findAndModify" | "findandmodify" => crud::find_and_modify(ctx, &db, cmd).await?,
        "bulkWrite" => bulk_write::bulk_write(ctx, &db, cmd).await?,
        "find" => crud::find(ctx, &db, cmd)?,
        "count" => util::cpu(|| crud::count(ctx, &db, cmd))?,
        "distinct" => util::cpu(|| crud::distinct(ctx, &db, cmd))?,
        "aggregate" => crud::aggregate(ctx, &db, cmd).await?,
        "explain" => util::cpu(|| crud::explain(ctx, &db, cmd))?,
        "getMore" => cursor::get_more(ctx, &db, cmd).await?,
        "killCursors" => cursor::kill_cursors(ctx, cmd)?,
        "" => {
            return Err(MongoError::new(
                ErrorCode::CommandNotFound,
                "no such command: ''",
            ));
        }
        other => {
            return Err(MongoError::new(
                ErrorCode::CommandNotFound,
                format!("no such command: '{other}'"),
            ));
        }
    };
    Ok(r)
}
