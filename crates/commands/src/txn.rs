//! Sessions' transactions and read concerns: the rules MongoDB applies to commands with
//! `autocommit: false`, `commitTransaction` and `abortTransaction`; causal consistency
//! (`afterClusterTime`); and snapshot reads outside transactions (`atClusterTime`).
//!
//! A statement inside a transaction runs the ordinary command handler with the
//! transaction in a task-local ([`CURRENT`]): [`snapshot`] then returns the transaction's
//! view and [`write`] runs the write against its overlay instead of the commit pipeline.
//! So every command is the same code in and out of a transaction.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bson::{Bson, Document, Timestamp, doc};
use errors::{ErrorCode, MongoError, Result, labels};
use storage::{Snapshot, Txn, WriteCtx};

use crate::{ConnInfo, Reply, ServerCtx, util};

tokio::task_local! {
    /// The transaction the running statement belongs to.
    static CURRENT: Arc<Txn>;
}

/// How long a snapshot handed out by a snapshot read stays readable by `atClusterTime`
/// (MongoDB's `minSnapshotHistoryWindowInSeconds`).
const SNAPSHOT_HISTORY: Duration = Duration::from_secs(300);
/// At most this many retained snapshots; the oldest go first.
const MAX_RETAINED_SNAPSHOTS: usize = 1000;

/// Commands a transaction may run (MongoDB 8.0).
const ALLOWED_IN_TXN: &[&str] = &[
    "find",
    "getMore",
    "killCursors",
    "insert",
    "update",
    "delete",
    "findAndModify",
    "findandmodify",
    "aggregate",
    "distinct",
    "create",
    "createIndexes",
    "bulkWrite",
    "commitTransaction",
    "abortTransaction",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    None,
    InProgress,
    Committed,
    Aborted,
}

/// One session's transaction state.
struct SessionTxn {
    /// The highest transaction number this session has used (-1: none).
    txn_number: i64,
    state: State,
    txn: Option<Arc<Txn>>,
    started: Instant,
}

impl SessionTxn {
    fn abort(&mut self) {
        if self.state == State::InProgress {
            self.state = State::Aborted;
        }
        self.txn = None;
    }
}

/// Every session's transaction state, and the snapshots kept for `atClusterTime` reads.
#[derive(Default)]
pub struct Transactions {
    sessions: Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<SessionTxn>>>>,
    snapshots: Mutex<BTreeMap<u64, (Arc<Snapshot>, Instant)>>,
}

/// The session id bytes of a command's `lsid`.
pub fn lsid_key(cmd: &Document) -> Option<Vec<u8>> {
    match cmd.get_document("lsid").ok()?.get("id")? {
        Bson::Binary(b) => Some(b.bytes.clone()),
        _ => None,
    }
}

/// Whether a command belongs to a transaction.
pub fn is_txn_command(name: &str, cmd: &Document) -> bool {
    cmd.contains_key("autocommit") || name == "commitTransaction" || name == "abortTransaction"
}

/// Whether the running statement is inside a transaction.
pub fn in_txn() -> bool {
    CURRENT.try_with(|_| ()).is_ok()
}

/// The snapshot a read sees: the transaction's (with its own writes) inside one, else
/// the newest committed state.
///
/// # Errors
/// On storage failure.
pub fn snapshot(ctx: &ServerCtx) -> Result<Arc<Snapshot>> {
    if let Ok(s) = CURRENT.try_with(|t| t.snapshot()) {
        return Ok(s);
    }
    Ok(Arc::new(ctx.store.snapshot()?))
}

/// The snapshot a read command sees, honouring `readConcern: {level: "snapshot",
/// atClusterTime}` outside transactions. Returns the snapshot and, for snapshot reads,
/// the time to report as `atClusterTime`.
///
/// # Errors
/// SnapshotTooOld when `atClusterTime` is no longer readable; bad read concerns.
pub fn read_snapshot(
    ctx: &ServerCtx,
    cmd: &Document,
) -> Result<(Arc<Snapshot>, Option<Timestamp>)> {
    if in_txn() {
        return Ok((snapshot(ctx)?, None));
    }
    let Ok(rc) = cmd.get_document("readConcern") else {
        return Ok((snapshot(ctx)?, None));
    };
    let level = rc.get_str("level").ok();
    if level == Some("majority") && ctx.repl.is_some() {
        // What a majority holds: nothing a failover could take back.
        return Ok((Arc::new(ctx.store.snapshot_majority()?), None));
    }
    if level != Some("snapshot") {
        return Ok((snapshot(ctx)?, None));
    }
    let snap = match rc.get("atClusterTime") {
        None => {
            // On a replica set, a snapshot read without a time reads at the majority point.
            let s = Arc::new(ctx.store.snapshot_majority()?);
            ctx.txns.retain(&s);
            s
        }
        Some(Bson::Timestamp(t)) => ctx.txns.snapshot_at(ctx, *t)?,
        Some(_) => {
            return Err(MongoError::type_mismatch(
                "BSON field 'readConcern.atClusterTime' is the wrong type, expected type 'timestamp'",
            ));
        }
    };
    let ts = snap.ts();
    Ok((snap, Some(ts)))
}

/// Runs a write: against the transaction's overlay inside one, else through the commit
/// pipeline.
///
/// # Errors
/// `f`'s errors; WriteConflict inside a transaction.
pub async fn write<T, F>(ctx: &ServerCtx, f: F) -> Result<T>
where
    T: Send + 'static,
    F: for<'a> FnOnce(&mut WriteCtx<'a>) -> Result<T> + Send + 'static,
{
    if let Ok(txn) = CURRENT.try_with(Arc::clone) {
        return txn.run(f);
    }
    ctx.store.write(f).await
}

impl Transactions {
    fn session(&self, ctx: &ServerCtx, key: &[u8]) -> Result<Arc<tokio::sync::Mutex<SessionTxn>>> {
        if let Some(s) = self.sessions.lock().unwrap().get(key) {
            return Ok(s.clone());
        }
        // A session this process has not seen may have committed before a restart.
        let snap = ctx.store.snapshot()?;
        let rec = snap.session_record(key)?;
        let txn_number = rec
            .as_ref()
            .and_then(|r| r.get_i64("txnNumber").ok())
            .unwrap_or(-1);
        let state = match rec.as_ref().and_then(|r| r.get_str("txnState").ok()) {
            Some("committed") => State::Committed,
            _ => State::None,
        };
        let s = Arc::new(tokio::sync::Mutex::new(SessionTxn {
            txn_number,
            state,
            txn: None,
            started: Instant::now(),
        }));
        Ok(self
            .sessions
            .lock()
            .unwrap()
            .entry(key.to_vec())
            .or_insert(s)
            .clone())
    }

    /// A retryable write on a session: a newer transaction number supersedes the
    /// session's transaction (aborting it if open); an older one is refused.
    ///
    /// # Errors
    /// TransactionTooOld.
    pub async fn note_retryable_write(&self, key: &[u8], n: i64) -> Result<()> {
        let known = self.sessions.lock().unwrap().get(key).cloned();
        let s = match known {
            Some(s) => s,
            None => return Ok(()),
        };
        let mut s = s.lock().await;
        if n < s.txn_number {
            return Err(MongoError::new(
                ErrorCode::TransactionTooOld,
                format!(
                    "Retryable write with txnNumber {n} is prohibited on session because a newer transaction with txnNumber {} has already started on this session.",
                    s.txn_number
                ),
            ));
        }
        if n > s.txn_number {
            s.abort();
            s.txn_number = n;
            s.state = State::None;
        }
        Ok(())
    }

    /// Aborts the open transactions of the given sessions and forgets them
    /// (`endSessions`, `killSessions`).
    pub async fn end_sessions(&self, keys: &[Vec<u8>]) {
        let found: Vec<_> = {
            let map = self.sessions.lock().unwrap();
            keys.iter().filter_map(|k| map.get(k).cloned()).collect()
        };
        for s in found {
            s.lock().await.abort();
        }
        let mut map = self.sessions.lock().unwrap();
        for k in keys {
            map.remove(k);
        }
    }

    /// Sessions holding an open transaction that no statement is running on, as
    /// `$currentOp` shows them with `idleSessions`.
    pub fn idle_sessions(&self) -> Vec<Document> {
        let all: Vec<_> = self
            .sessions
            .lock()
            .unwrap()
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        let mut out = Vec::new();
        for (key, s) in all {
            let Ok(s) = s.try_lock() else { continue };
            if s.state != State::InProgress {
                continue;
            }
            let id = bson::Binary {
                subtype: bson::spec::BinarySubtype::Uuid,
                bytes: key,
            };
            out.push(doc! {
                "type": "idleSession",
                "active": false,
                "lsid": {"id": id},
                "transaction": {
                    "parameters": {"txnNumber": s.txn_number, "autocommit": false},
                    "timeOpenMicros": s.started.elapsed().as_micros() as i64,
                },
            });
        }
        out
    }

    /// Aborts every open transaction (`killAllSessions`).
    pub async fn abort_all(&self) {
        let all: Vec<_> = self.sessions.lock().unwrap().values().cloned().collect();
        for s in all {
            s.lock().await.abort();
        }
    }

    /// Aborts transactions older than `limit`.
    async fn expire(&self, limit: Duration) {
        let all: Vec<_> = self.sessions.lock().unwrap().values().cloned().collect();
        for s in all {
            // A session busy with a statement is not idle; look again next time.
            if let Ok(mut s) = s.try_lock() {
                if s.state == State::InProgress && s.started.elapsed() > limit {
                    tracing::info!(
                        txn_number = s.txn_number,
                        "aborting a transaction past transactionLifetimeLimitSeconds"
                    );
                    s.abort();
                }
            }
        }
    }

    fn retain(&self, snap: &Arc<Snapshot>) {
        let mut m = self.snapshots.lock().unwrap();
        m.retain(|_, (_, at)| at.elapsed() < SNAPSHOT_HISTORY);
        while m.len() >= MAX_RETAINED_SNAPSHOTS {
            m.pop_first();
        }
        m.entry(storage::oplog::ts_key(snap.ts()))
            .or_insert_with(|| (snap.clone(), Instant::now()));
    }

    /// A snapshot showing exactly what had committed at `t`: a retained one, or the
    /// current one, when no oplog entry lies between `t` and its time.
    fn snapshot_at(&self, ctx: &ServerCtx, t: Timestamp) -> Result<Arc<Snapshot>> {
        let key = storage::oplog::ts_key(t);
        let candidate = self
            .snapshots
            .lock()
            .unwrap()
            .range(key..)
            .next()
            .map(|(_, (s, _))| s.clone());
        let exact = |s: &Arc<Snapshot>| -> Result<bool> {
            if s.ts() == t {
                return Ok(true);
            }
            Ok(s.oplog_after(Some(t))?.next().is_none())
        };
        if let Some(s) = candidate {
            if exact(&s)? {
                return Ok(s);
            }
        }
        if storage::oplog::ts_key(ctx.store.committed_ts()) < key {
            return Err(MongoError::new(
                ErrorCode::SnapshotUnavailable,
                format!(
                    "Read timestamp {t} is later than the latest available timestamp {}",
                    ctx.store.committed_ts()
                ),
            ));
        }
        let s = Arc::new(ctx.store.snapshot()?);
        if exact(&s)? {
            self.retain(&s);
            return Ok(s);
        }
        Err(MongoError::new(
            ErrorCode::SnapshotTooOld,
            format!("Read timestamp {t} is older than the oldest available timestamp."),
        ))
    }
}

/// Starts the task that aborts transactions past `transactionLifetimeLimitSeconds`.
pub fn spawn_reaper(ctx: std::sync::Weak<ServerCtx>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let Some(ctx) = ctx.upgrade() else { return };
            let limit = util::get_i64(
                &ctx.parameters.lock().unwrap(),
                "transactionLifetimeLimitSeconds",
            )
            .unwrap_or(60)
            .max(1) as u64;
            ctx.txns.expire(Duration::from_secs(limit)).await;
        }
    });
}

fn invalid(msg: impl Into<String>) -> MongoError {
    MongoError::new(ErrorCode::InvalidOptions, msg)
}

fn no_such_transaction(msg: String) -> MongoError {
    MongoError::new(ErrorCode::NoSuchTransaction, msg)
        .with_label(labels::TRANSIENT_TRANSACTION_ERROR)
}

/// Runs a command that belongs to a transaction.
///
/// # Errors
/// MongoDB's transaction errors, and the statement's own.
pub async fn run(
    ctx: &Arc<ServerCtx>,
    conn: &mut ConnInfo,
    name: &str,
    cmd: &Document,
) -> Result<Reply> {
    let Some(key) = lsid_key(cmd) else {
        return Err(invalid("Transactions require a logical session id (lsid)"));
    };
    let Some(n) = util::get_i64(cmd, "txnNumber") else {
        return Err(invalid(
            "'autocommit' field requires a transaction number to also be specified",
        ));
    };
    match cmd.get("autocommit") {
        Some(Bson::Boolean(false)) => {}
        Some(Bson::Boolean(true)) => {
            return Err(invalid("Specifying autocommit=true is not allowed."));
        }
        Some(_) => {
            return Err(MongoError::type_mismatch(
                "BSON field 'autocommit' is the wrong type, expected type 'bool'",
            ));
        }
        None => return Err(invalid("'autocommit' must be false in a transaction")),
    }
    let start = match cmd.get("startTransaction") {
        None => false,
        Some(Bson::Boolean(true)) => true,
        Some(_) => return Err(invalid("Specifying startTransaction=false is not allowed.")),
    };
    if !ALLOWED_IN_TXN.contains(&name) {
        let e = MongoError::new(
            ErrorCode::OperationNotSupportedInTransaction,
            format!("Cannot run '{name}' in a multi-document transaction."),
        );
        return Err(e);
    }
    let session = ctx.txns.session(ctx, &key)?;
    let mut s = session.lock().await;
    if n < s.txn_number {
        return Err(MongoError::new(
            ErrorCode::TransactionTooOld,
            format!(
                "Cannot start transaction {n} on session because a newer transaction {} has already started.",
                s.txn_number
            ),
        ));
    }
    match name {
        "commitTransaction" => return commit(ctx, &mut s, n, cmd).await,
        "abortTransaction" => return abort(&mut s, n),
        _ => {}
    }
    if cmd.contains_key("writeConcern") {
        return Err(invalid(
            "writeConcern is not allowed within a multi-statement transaction".to_string(),
        ));
    }
    if start {
        if n == s.txn_number && s.state != State::None {
            return Err(MongoError::new(
                ErrorCode::ConflictingOperationInProgress,
                format!(
                    "Cannot start transaction {n} on session because a transaction with the same number has already started"
                ),
            ));
        }
        let rc = util::opt_doc(cmd, "readConcern")?;
        if let Some(rc) = rc {
            match rc.get_str("level") {
                Err(_) | Ok("snapshot" | "majority" | "local") => {}
                Ok(other) => {
                    return Err(invalid(format!(
                        "The readConcern level must be either 'local' (default), 'majority' or 'snapshot' in order to run in a transaction, not '{other}'"
                    )));
                }
            }
        }
        s.abort();
        s.txn_number = n;
        s.state = State::InProgress;
        s.started = Instant::now();
        s.txn = Some(Arc::new(ctx.store.begin_txn()?));
    } else {
        if n > s.txn_number || s.state == State::None {
            return Err(no_such_transaction(format!(
                "Given transaction number {n} does not match any in-progress transactions. The active transaction number is {}",
                s.txn_number
            )));
        }
        match s.state {
            State::Aborted => {
                return Err(no_such_transaction(format!(
                    "Transaction with {{ txnNumber: {n} }} has been aborted."
                )));
            }
            State::Committed => {
                return Err(MongoError::new(
                    ErrorCode::TransactionCommitted,
                    format!("Transaction with {{ txnNumber: {n} }} has been committed."),
                ));
            }
            _ => {}
        }
        if cmd.contains_key("readConcern") {
            return Err(invalid(
                "Only the first command in a transaction may specify a readConcern",
            ));
        }
    }
    let Some(txn) = s.txn.clone() else {
        return Err(no_such_transaction(format!(
            "Transaction with {{ txnNumber: {n} }} has been aborted."
        )));
    };
    let r = CURRENT
        .scope(txn, crate::dispatch_cmd(ctx, conn, name, cmd))
        .await;
    // A write conflict fails the whole statement, not one write of it.
    let r = r.and_then(|reply| {
        let conflict = reply.doc.get_array("writeErrors").is_ok_and(|a| {
            a.iter().any(|e| {
                e.as_document()
                    .and_then(|d| d.get_i32("code").ok())
                    .is_some_and(|c| c == ErrorCode::WriteConflict.code())
            })
        });
        if conflict {
            Err(storage::write_conflict())
        } else {
            Ok(reply)
        }
    });
    // A failed statement aborts its transaction, as in MongoDB (bulkWrite reports its
    // failures as a count).
    let failed = match &r {
        Err(_) => true,
        Ok(reply) => {
            reply.doc.contains_key("writeErrors")
                || util::get_i64(&reply.doc, "nErrors").is_some_and(|n| n > 0)
        }
    };
    if failed {
        s.abort();
    }
    r
}

async fn commit(ctx: &Arc<ServerCtx>, s: &mut SessionTxn, n: i64, cmd: &Document) -> Result<Reply> {
    if n > s.txn_number || s.state == State::None {
        return Err(no_such_transaction(format!(
            "Given transaction number {n} does not match any in-progress transactions. The active transaction number is {}",
            s.txn_number
        )));
    }
    match s.state {
        State::Committed => return Ok(Reply::ok(Document::new())),
        State::Aborted | State::None => {
            return Err(no_such_transaction(format!(
                "Transaction with {{ txnNumber: {n} }} has been aborted."
            )));
        }
        State::InProgress => {}
    }
    let Some(txn) = s.txn.take() else {
        s.state = State::Aborted;
        return Err(no_such_transaction(format!(
            "Transaction with {{ txnNumber: {n} }} has been aborted."
        )));
    };
    let lsid = cmd.get_document("lsid").ok().cloned();
    let key = lsid_key(cmd).unwrap_or_default();
    let res = ctx
        .store
        .write(move |w| {
            let ts = w.commit_txn(&txn, lsid, Some(n))?;
            w.put_session_record(&key, &doc! {"txnNumber": n, "txnState": "committed"})?;
            Ok(ts)
        })
        .await;
    match res {
        Ok(_) => {
            s.state = State::Committed;
            Ok(Reply::ok(Document::new()))
        }
        Err(e) => {
            s.state = State::Aborted;
            Err(e)
        }
    }
}

fn abort(s: &mut SessionTxn, n: i64) -> Result<Reply> {
    if n > s.txn_number || s.state == State::None {
        return Err(no_such_transaction(format!(
            "Given transaction number {n} does not match any in-progress transactions. The active transaction number is {}",
            s.txn_number
        )));
    }
    match s.state {
        State::Committed => Err(MongoError::new(
            ErrorCode::TransactionCommitted,
            format!("Transaction with {{ txnNumber: {n} }} has been committed."),
        )),
        State::Aborted | State::None => Err(no_such_transaction(format!(
            "Transaction with {{ txnNumber: {n} }} has been aborted."
        ))),
        State::InProgress => {
            s.abort();
            Ok(Reply::ok(Document::new()))
        }
    }
}

/// Causal consistency: a read with `afterClusterTime` must see everything up to that
/// time. Every time a client can have seen is already applied here (a write is
/// acknowledged, and a clusterTime handed out, only once it is committed), so the read
/// proceeds at once; a time beyond the current clusterTime is refused, as MongoDB does.
///
/// # Errors
/// InvalidOptions for a time the server has not reached.
pub async fn check_cluster_time(ctx: &ServerCtx, t: Timestamp) -> Result<()> {
    if ctx.repl.is_some() {
        // A member that has not applied that far yet waits for it (a secondary behind
        // the primary a causally consistent session read from), within maxTimeMS.
        let key = storage::oplog::ts_key(t);
        let mut rx = ctx.store.subscribe();
        while storage::oplog::ts_key(*rx.borrow_and_update()) < key {
            crate::op::current().check()?;
            tokio::select! {
                r = rx.changed() => if r.is_err() {
                    return Err(MongoError::new(ErrorCode::InterruptedAtShutdown, "shutting down"));
                },
                () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
            }
        }
        return Ok(());
    }
    let now = ctx.store.committed_ts();
    if storage::oplog::ts_key(t) > storage::oplog::ts_key(now) {
        return Err(invalid(format!(
            "readConcern afterClusterTime value must not be greater than the current clusterTime. Requested clusterTime: {t}; current clusterTime: {now}"
        )));
    }
    Ok(())
}
