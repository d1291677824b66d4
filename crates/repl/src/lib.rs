//! Replica sets: several `eddy` processes keep one log by Raft (openraft 0.9), and each
//! applies it to its tables.
//!
//! - [`log`]: Raft's log storage is the store's write-ahead log, its state machine the
//!   tables (the commit pipeline's replicated mode, `storage::replica`).
//! - [`net`]: member-to-member RPCs as an internal command over the same listener.
//! - this file: the set as the commands see it: initiation, topology for `hello` and
//!   `replSetGetStatus`, whether this member may take writes, and the proposer that hands
//!   the primary's commit batches to Raft.
//!
//! Key decisions:
//! - openraft 0.9 (the stable line) with its v2 storage traits, not 0.10 (alpha).
//! - The primary runs a batch, proposes its frame, and answers `w: 1` once the frame is in
//!   its own log; Raft's commit index is the majority point, read from the state machine's
//!   `apply` (which Raft calls only for committed entries), not from the write's response.
//! - A member may take writes once it leads and has applied its own term's first entry
//!   (everything an earlier primary committed is then in its tables).
//! - A member's Raft id is its config `_id`. A member learns it from `replSetInitiate` (by
//!   finding its own host in the config) or from the first RPC a primary sends it.

pub mod log;
pub mod net;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bson::{Bson, Document, doc};
use errors::{ErrorCode, MongoError, Result};
use openraft::{Config, Raft, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use storage::Store;
use storage::replica::{Proposer, ReplShared};
use tokio::sync::{mpsc, watch};

/// A member's id: its `_id` in the replica set config.
pub type NodeId = u64;

/// A member as the set's membership records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub host: String,
    /// `priority` in thousandths (0: never primary).
    pub priority_milli: u32,
    pub hidden: bool,
}

impl Member {
    fn priority(&self) -> f64 {
        f64::from(self.priority_milli) / 1000.0
    }
}

/// A primary's commit batch, as a Raft entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Proposal {
    /// The member that proposed it, and that process's incarnation.
    pub origin: NodeId,
    pub incarnation: u64,
    pub proposal: u64,
    /// The batch's whole frame.
    #[serde(with = "bytes")]
    pub frame: Vec<u8>,
}

/// Serde for byte vectors as bytes (not as a sequence of numbers).
mod bytes {
    use serde::{Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Vec<u8>, A::Error> {
                let mut v = Vec::new();
                while let Some(b) = a.next_element()? {
                    v.push(b);
                }
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// Encodes Raft's structures for the log, the vote file and member RPCs.
pub(crate) fn encode<T: Serialize>(v: &T) -> std::result::Result<Vec<u8>, String> {
    bincode::serialize(v).map_err(|e| e.to_string())
}

/// Decodes what [`encode`] made.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> std::result::Result<T, String> {
    bincode::deserialize(b).map_err(|e| e.to_string())
}

openraft::declare_raft_types!(
    /// Eddy's Raft types.
    pub TypeConfig:
        D = Proposal,
        R = (),
        NodeId = NodeId,
        Node = Member,
        SnapshotData = tokio::fs::File,
);

/// The settings of a set (`settings` in its config), fixed when it is initiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat_ms: 2000,
            election_timeout_ms: 10_000,
        }
    }
}

/// A member's state, in MongoDB's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// Not yet part of an initiated set.
    Startup,
    Primary,
    Secondary,
    /// Standing for election.
    Candidate,
    /// Removed from the set, or shutting down.
    Removed,
}

impl MemberState {
    /// `stateStr`.
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Startup => "STARTUP",
            MemberState::Primary => "PRIMARY",
            MemberState::Secondary => "SECONDARY",
            MemberState::Candidate => "SECONDARY",
            MemberState::Removed => "REMOVED",
        }
    }

    /// `state` (the numeric code).
    pub fn code(self) -> i32 {
        match self {
            MemberState::Startup => 0,
            MemberState::Primary => 1,
            MemberState::Secondary | MemberState::Candidate => 2,
            MemberState::Removed => 10,
        }
    }
}

/// What `hello` and `replSetGetStatus` report, taken at one moment.
#[derive(Debug, Clone)]
pub struct Topology {
    pub state: MemberState,
    pub me: String,
    pub my_id: Option<NodeId>,
    pub primary: Option<String>,
    pub term: u64,
    /// `(id, member, voter)`, by id.
    pub members: Vec<(NodeId, Member, bool)>,
    pub set_version: i64,
    /// Bumped on every change of the above.
    pub counter: i64,
    pub writable: bool,
    /// On the primary: the lsn of the last frame each member holds.
    pub matched: BTreeMap<NodeId, u64>,
}

impl Topology {
    /// `hosts`: members that can become primary, not hidden.
    pub fn hosts(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, m, v)| *v && !m.hidden && m.priority_milli > 0)
            .map(|(_, m, _)| m.host.clone())
            .collect()
    }

    /// `passives`: members that never become primary, not hidden.
    pub fn passives(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, m, v)| !m.hidden && (m.priority_milli == 0 || !*v))
            .map(|(_, m, _)| m.host.clone())
            .collect()
    }

    /// The config document (`replSetGetConfig`, `local.system.replset`).
    pub fn config_doc(&self, set: &str, s: &Settings) -> Document {
        let members: Vec<Bson> = self
            .members
            .iter()
            .map(|(id, m, voter)| {
                Bson::Document(doc! {
                    "_id": *id as i32,
                    "host": &m.host,
                    "arbiterOnly": false,
                    "buildIndexes": true,
                    "hidden": m.hidden,
                    "priority": m.priority(),
                    "tags": {},
                    "secondaryDelaySecs": 0i64,
                    "votes": i32::from(*voter),
                })
            })
            .collect();
        doc! {
            "_id": set,
            "version": self.set_version as i32,
            "term": self.term as i64,
            "members": members,
            "protocolVersion": 1i64,
            "writeConcernMajorityJournalDefault": true,
            "settings": {
                "chainingAllowed": true,
                "heartbeatIntervalMillis": s.heartbeat_ms as i64,
                "heartbeatTimeoutSecs": 10,
                "electionTimeoutMillis": s.election_timeout_ms as i64,
                "catchUpTimeoutMillis": -1i64,
                "catchUpTakeoverDelayMillis": 30000i64,
                "getLastErrorModes": {},
                "getLastErrorDefaults": {"w": 1, "wtimeout": 0},
            },
        }
    }
}

/// The pipeline's proposals: `(proposal number, frame)`.
type Proposals = mpsc::UnboundedReceiver<(u64, Vec<u8>)>;

/// Hands the primary's batches to Raft, in order.
struct RaftProposer {
    tx: mpsc::UnboundedSender<(u64, Vec<u8>)>,
}

impl Proposer for RaftProposer {
    fn propose(&self, proposal: u64, frame: Vec<u8>) {
        let _ = self.tx.send((proposal, frame));
    }
}

struct Running {
    raft: Raft<TypeConfig>,
    id: NodeId,
}

/// This member's view of its replica set.
pub struct ReplSet {
    pub name: String,
    /// This member's `host:port`, as it appears in the config.
    pub me: String,
    settings: Mutex<Settings>,
    store: Store,
    shared: Arc<ReplShared>,
    incarnation: u64,
    running: Mutex<Option<Arc<Running>>>,
    start_lock: tokio::sync::Mutex<()>,
    proposals: Mutex<Option<Proposals>>,
    topology: watch::Sender<Topology>,
    counter: AtomicU64,
    /// No election before this (`replSetFreeze`, or after stepping down).
    frozen_until: Mutex<Option<std::time::Instant>>,
    /// Set while the primary steps down: it takes no writes.
    stepping_down: std::sync::atomic::AtomicBool,
    /// One reconfiguration at a time.
    reconfig_lock: tokio::sync::Mutex<()>,
    /// Requests arriving in parts: `(from, transfer) -> bytes so far`, one per member.
    parts: Mutex<BTreeMap<NodeId, (u64, Vec<u8>)>>,
    /// The key file's key: this member authenticates to the others with it (as
    /// `__system`) before its first RPC on each connection.
    key: Option<Arc<str>>,
}

fn id_path(store: &Store) -> PathBuf {
    store.path().join("raft-id")
}

impl ReplSet {
    /// Makes `store` a member of set `name`; starts Raft if this member already knows its
    /// id (it was initiated before). Call before any write.
    ///
    /// # Errors
    /// When Raft cannot start on the stored log.
    pub async fn open(
        store: Store,
        name: String,
        me: String,
        key: Option<String>,
    ) -> std::result::Result<Arc<ReplSet>, String> {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = store.enable_replication(Arc::new(RaftProposer { tx }));
        let incarnation = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        let topology = watch::channel(Topology {
            state: MemberState::Startup,
            me: me.clone(),
            my_id: None,
            primary: None,
            term: 0,
            members: Vec::new(),
            set_version: 0,
            counter: 0,
            writable: false,
            matched: BTreeMap::new(),
        })
        .0;
        let set = Arc::new(ReplSet {
            name,
            me,
            settings: Mutex::new(Settings::default()),
            store: store.clone(),
            shared,
            incarnation,
            running: Mutex::new(None),
            start_lock: tokio::sync::Mutex::new(()),
            proposals: Mutex::new(Some(rx)),
            topology,
            counter: AtomicU64::new(0),
            frozen_until: Mutex::new(None),
            stepping_down: std::sync::atomic::AtomicBool::new(false),
            reconfig_lock: tokio::sync::Mutex::new(()),
            parts: Mutex::new(BTreeMap::new()),
            key: key.map(Arc::from),
        });
        if let Ok(s) = std::fs::read_to_string(id_path(&store)) {
            let bad = || {
                format!(
                    "{}: not a member id and settings",
                    id_path(&store).display()
                )
            };
            let v: Vec<u64> = s
                .split_whitespace()
                .map(str::parse)
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| bad())?;
            let [id, e, h] = v[..] else { return Err(bad()) };
            let settings = Settings {
                election_timeout_ms: e,
                heartbeat_ms: h,
            };
            set.start(id, settings).await.map_err(|e| e.message)?;
        }
        Ok(set)
    }

    /// The set's settings.
    pub fn settings(&self) -> Settings {
        *self.settings.lock().unwrap()
    }

    fn running(&self) -> Option<Arc<Running>> {
        self.running.lock().unwrap().clone()
    }

    /// Starts this member's Raft node as member `id`.
    async fn start(self: &Arc<Self>, id: NodeId, settings: Settings) -> Result<Arc<Running>> {
        let _g = self.start_lock.lock().await;
        if let Some(r) = self.running() {
            if r.id != id {
                return Err(MongoError::new(
                    ErrorCode::InvalidReplicaSetConfig,
                    format!("this member is member {} of the set, not {id}", r.id),
                ));
            }
            return Ok(r);
        }
        let record = format!(
            "{id} {} {}\n",
            settings.election_timeout_ms, settings.heartbeat_ms
        );
        if std::fs::read_to_string(id_path(&self.store))
            .ok()
            .as_deref()
            != Some(record.as_str())
        {
            std::fs::write(id_path(&self.store), &record)
                .map_err(|e| MongoError::internal(format!("cannot record the member id: {e}")))?;
        }
        *self.settings.lock().unwrap() = settings;
        let config = Config {
            cluster_name: self.name.clone(),
            heartbeat_interval: settings.heartbeat_ms,
            // A member refuses to vote while it heard from the primary within the longest
            // election timeout (openraft's leader lease), and a follower of a live primary
            // stands only after that lease plus its election timeout: with these, at
            // 7/12 to 2/3 of electionTimeoutMillis after the primary's last heartbeat, so
            // that the election is over within electionTimeoutMillis.
            election_timeout_min: settings.election_timeout_ms / 4,
            election_timeout_max: settings.election_timeout_ms / 3,
            // Images of the tables (snapshots) are taken when the oplog's bounds want log
            // frames released (see `release_log`), not by entry counts.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: u64::MAX,
            // A chunk's answer waits for the image to be installed, when it is the last.
            install_snapshot_timeout: 120_000,
            max_payload_entries: 256,
            ..Config::default()
        };
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| MongoError::internal(format!("replication settings: {e}")))?,
        );
        let log = log::LogStore::open(self.store.clone(), id, self.incarnation)
            .map_err(MongoError::internal)?;
        let sm = log::StateMachine { log: log.clone() };
        let raft = Raft::new(id, config, self.network(id), log, sm)
            .await
            .map_err(|e| MongoError::internal(format!("cannot start replication: {e}")))?;
        let running = Arc::new(Running {
            raft: raft.clone(),
            id,
        });
        *self.running.lock().unwrap() = Some(running.clone());
        if let Some(rx) = self.proposals.lock().unwrap().take() {
            tokio::spawn(forward_proposals(
                raft.clone(),
                self.store.clone(),
                rx,
                id,
                self.incarnation,
            ));
        }
        tokio::spawn(release_log(self.store.clone(), raft.clone()));
        tokio::spawn(watch_metrics(Arc::downgrade(self), raft));
        Ok(running)
    }

    /// `replSetInitiate`: this member starts the set with `config` (a MongoDB config
    /// document; with none, a set of this member alone).
    ///
    /// # Errors
    /// AlreadyInitialized; InvalidReplicaSetConfig for a config this member is not in or
    /// that Eddy does not support.
    pub async fn initiate(self: &Arc<Self>, config: Option<&Document>) -> Result<()> {
        if self.running().is_some() {
            return Err(MongoError::new(
                ErrorCode::AlreadyInitialized,
                "already initialized",
            ));
        }
        let (members, settings) = match config {
            Some(c) => parse_config(c, &self.name)?,
            None => (
                BTreeMap::from([(
                    0,
                    (
                        Member {
                            host: self.me.clone(),
                            priority_milli: 1000,
                            hidden: false,
                        },
                        true,
                    ),
                )]),
                Settings::default(),
            ),
        };
        let Some((&id, _)) = members
            .iter()
            .find(|(_, (m, _))| same_host(&m.host, &self.me))
        else {
            return Err(MongoError::new(
                ErrorCode::InvalidReplicaSetConfig,
                format!(
                    "No host described in new configuration with {{version: 1, term: 0}} for replica set {} maps to this node ({})",
                    self.name, self.me
                ),
            ));
        };
        if self.store.committed_ts().time != 0 {
            return Err(MongoError::new(
                ErrorCode::InvalidReplicaSetConfig,
                "this member already holds data: a replica set is initiated on empty members (start it with an empty --dbpath and restore the data into the primary)",
            ));
        }
        let running = self.start(id, settings).await?;
        let (voters, learners): (Vec<_>, Vec<_>) = members.into_iter().partition(|(_, (_, v))| *v);
        let voters: BTreeMap<NodeId, Member> =
            voters.into_iter().map(|(i, (m, _))| (i, m)).collect();
        running.raft.initialize(voters).await.map_err(|e| match e {
            openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(
                _,
            )) => MongoError::new(ErrorCode::AlreadyInitialized, "already initialized"),
            e => MongoError::new(
                ErrorCode::InvalidReplicaSetConfig,
                format!("cannot initiate the set: {e}"),
            ),
        })?;
        for (id, (m, _)) in learners {
            // Non-voting members replicate without voting; added once this member leads.
            let raft = running.raft.clone();
            tokio::spawn(async move {
                for _ in 0..600 {
                    if raft.add_learner(id, m.clone(), false).await.is_ok() {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            });
        }
        Ok(())
    }

    /// Serves a member RPC (`_eddyRaft`) addressed to member `to`; `part` requests carry
    /// the first parts of a large one (transfer `xfer`).
    ///
    /// # Errors
    /// A request that does not parse, or one for another member id.
    pub async fn serve_rpc(
        self: &Arc<Self>,
        from: NodeId,
        to: NodeId,
        settings: Settings,
        kind: &str,
        xfer: u64,
        req: &[u8],
    ) -> Result<Document> {
        if net::partitioned(from) {
            return Err(MongoError::new(
                ErrorCode::HostUnreachable,
                "partitioned from this member (raftPartition fail point)",
            ));
        }
        if kind == "removed" {
            self.leave().await;
            return net::reply(Ok::<bool, ()>(true)).map_err(MongoError::internal);
        }
        let running = self.start(to, settings).await?;
        if kind == "part" {
            let mut parts = self.parts.lock().unwrap();
            let e = parts.entry(from).or_insert((xfer, Vec::new()));
            if e.0 != xfer {
                // A transfer the member gave up on: a new one replaces it.
                *e = (xfer, Vec::new());
            }
            e.1.extend_from_slice(req);
            return Ok(Document::new());
        }
        let whole;
        let req = match self.parts.lock().unwrap().remove(&from) {
            Some((x, mut b)) if x == xfer => {
                b.extend_from_slice(req);
                whole = b;
                &whole[..]
            }
            _ => req,
        };
        net::serve(&running.raft, kind, req)
            .await
            .map_err(|e| MongoError::new(ErrorCode::BadValue, e))
    }

    /// This member was removed from the set: its Raft node stops (it is REMOVED until it
    /// restarts), and it forgets its member id (so that it can be added again after a
    /// restart, as a new member).
    async fn leave(&self) {
        let running = self.running.lock().unwrap().clone();
        if let Some(r) = running {
            tracing::warn!("removed from the replica set: this member stops replicating");
            let _ = r.raft.shutdown().await;
        }
        let _ = std::fs::remove_file(id_path(&self.store));
    }

    /// The client side of member traffic, for this member (`me`).
    fn network(&self, me: NodeId) -> net::Network {
        net::Network {
            settings: self.settings(),
            me,
            key: self.key.clone(),
        }
    }

    /// A client for member `id` at `member`, outside Raft's own replication.
    async fn peer(&self, me: NodeId, id: NodeId, member: &Member) -> net::Peer {
        openraft::network::RaftNetworkFactory::new_client(&mut self.network(me), id, member).await
    }

    fn election_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.settings().election_timeout_ms)
    }

    /// On the primary: a voting member of higher priority than this one that has caught
    /// up (within 64 log entries), the highest such.
    fn takeover_target(&self) -> Option<NodeId> {
        let t = self.topology();
        let mine = t
            .members
            .iter()
            .find(|(id, _, _)| Some(*id) == t.my_id)?
            .1
            .priority_milli;
        let last = self.store.last_frame().ok().flatten().map_or(0, |h| h.lsn);
        best_caught_up(&t, last, 64, mine, None).map(|(id, _)| id)
    }

    /// The topology now.
    pub fn topology(&self) -> Topology {
        self.topology.borrow().clone()
    }

    /// A receiver that changes with the topology (for awaitable `hello`).
    pub fn subscribe(&self) -> watch::Receiver<Topology> {
        self.topology.subscribe()
    }

    /// Whether this member may take writes now.
    pub fn writable(&self) -> bool {
        self.shared.writable.load(Ordering::SeqCst)
    }

    /// Whether the set was initiated (this member knows its place in it).
    pub fn initiated(&self) -> bool {
        self.running().is_some()
    }

    fn publish(&self, mut t: Topology) {
        self.topology.send_if_modified(|old| {
            let changed = old.state != t.state
                || old.primary != t.primary
                || old.term != t.term
                || old.members != t.members
                || old.writable != t.writable
                || old.my_id != t.my_id;
            if changed {
                t.counter = self.counter.fetch_add(1, Ordering::SeqCst) as i64 + 1;
            } else {
                t.counter = old.counter;
            }
            // Progress is kept current without waking `hello` waiters.
            *old = t;
            changed
        });
    }

    /// Whether this member may stand for election now (not frozen, and a voter with a
    /// priority above 0).
    fn electable(&self, t: &Topology) -> bool {
        let frozen = self
            .frozen_until
            .lock()
            .unwrap()
            .is_some_and(|u| std::time::Instant::now() < u);
        !frozen
            && t.members
                .iter()
                .any(|(id, m, voter)| Some(*id) == t.my_id && *voter && m.priority_milli > 0)
    }

    /// `replSetStepDown`: stops taking writes, waits up to `catch_up` for an electable
    /// secondary to hold everything, has it stand for election, and does not stand again
    /// for `step_down`.
    ///
    /// # Errors
    /// NotWritablePrimary when not primary; ExceededTimeLimit when no electable secondary
    /// caught up in time (the member stays primary).
    pub async fn step_down(
        self: &Arc<Self>,
        step_down: std::time::Duration,
        catch_up: std::time::Duration,
        force: bool,
    ) -> Result<()> {
        let Some(running) = self.running() else {
            return Err(MongoError::new(
                ErrorCode::NotYetInitialized,
                "no replset config has been received",
            ));
        };
        if !self.writable() {
            return Err(MongoError::new(
                ErrorCode::NotWritablePrimary,
                "not primary so can't step down",
            ));
        }
        self.stepping_down.store(true, Ordering::SeqCst);
        self.shared.writable.store(false, Ordering::SeqCst);
        let mut r = self.hand_over(&running, catch_up, None).await;
        if r.is_err() && force {
            // Forced: no member is ready to take over, so this one stops sending heartbeats
            // and the others elect one when their election timeout passes.
            running.raft.runtime_config().heartbeat(false);
            let raft = running.raft.clone();
            tokio::spawn(async move {
                let mut rx = raft.metrics();
                let _ = tokio::time::timeout(
                    step_down,
                    rx.wait_for(|m| m.state != ServerState::Leader),
                )
                .await;
                raft.runtime_config().heartbeat(true);
            });
            r = Ok(());
        }
        if r.is_ok() {
            *self.frozen_until.lock().unwrap() = Some(std::time::Instant::now() + step_down);
            running.raft.runtime_config().elect(false);
        }
        self.stepping_down.store(false, Ordering::SeqCst);
        r
    }

    /// Priority takeover: this primary hands over to `target`, an electable member of
    /// higher priority that has caught up (as a higher-priority mongod calls an election
    /// once caught up; here the primary hands over, as members refuse to vote while they
    /// hear from a primary). It does not stand again for one election timeout.
    async fn take_over(self: Arc<Self>, target: NodeId) {
        let Some(running) = self.running() else {
            return;
        };
        if !self.writable() || self.stepping_down.swap(true, Ordering::SeqCst) {
            return;
        }
        self.shared.writable.store(false, Ordering::SeqCst);
        let e = self.election_timeout();
        let catch_up = std::time::Duration::from_secs(2);
        match self.hand_over(&running, catch_up, Some(target)).await {
            Ok(()) => {
                tracing::info!(
                    member = target,
                    "handed over to a member of higher priority"
                );
                *self.frozen_until.lock().unwrap() = Some(std::time::Instant::now() + e);
                running.raft.runtime_config().elect(false);
            }
            Err(e) => {
                tracing::info!(member = target, error = %e.message, "priority takeover did not happen")
            }
        }
        self.stepping_down.store(false, Ordering::SeqCst);
    }

    /// Hands the primary's role to a caught-up electable member (`only` that one, if
    /// given; else the one with the highest priority): it stands for election at once.
    async fn hand_over(
        &self,
        running: &Running,
        catch_up: std::time::Duration,
        only: Option<NodeId>,
    ) -> Result<()> {
        let deadline = std::time::Instant::now() + catch_up;
        let last = self.store.last_frame().ok().flatten().map_or(0, |h| h.lsn);
        let target = loop {
            if let Some(found) = best_caught_up(&self.topology(), last, 0, 0, only) {
                break found;
            }
            if std::time::Instant::now() >= deadline {
                return Err(MongoError::new(
                    ErrorCode::ExceededTimeLimit,
                    "No electable secondaries caught up as of the step down deadline",
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        // It stands for election at once; this member, seeing its higher term, follows.
        let settings = self.settings();
        let mut peer = self.peer(running.id, target.0, &target.1).await;
        peer.elect().await.map_err(|e| {
            MongoError::new(
                ErrorCode::ExceededTimeLimit,
                format!("the secondary did not stand for election: {e}"),
            )
        })?;
        let mut rx = running.raft.metrics();
        let wait = std::time::Duration::from_millis(settings.election_timeout_ms);
        let _ = tokio::time::timeout(wait, rx.wait_for(|m| m.state != ServerState::Leader)).await;
        Ok(())
    }

    /// `replSetFreeze`: no election for `secs` (0 ends a freeze).
    ///
    /// # Errors
    /// NotSecondary on the primary.
    pub fn freeze(&self, secs: u64) -> Result<()> {
        let Some(running) = self.running() else {
            return Err(MongoError::new(
                ErrorCode::NotYetInitialized,
                "no replset config has been received",
            ));
        };
        if self.topology().state == MemberState::Primary {
            return Err(MongoError::new(
                ErrorCode::NotSecondary,
                "cannot freeze node when primary or running for election. state: Primary",
            ));
        }
        *self.frozen_until.lock().unwrap() =
            (secs > 0).then(|| std::time::Instant::now() + std::time::Duration::from_secs(secs));
        running
            .raft
            .runtime_config()
            .elect(secs == 0 && self.electable(&self.topology()));
        Ok(())
    }

    /// `replSetReconfig`: the set becomes `config`. New members join as non-voting members
    /// and become voters once they have caught up (as MongoDB's `newlyAdded`).
    ///
    /// # Errors
    /// NotWritablePrimary off the primary; InvalidReplicaSetConfig and
    /// NewReplicaSetConfigurationIncompatible for configs that cannot follow this one.
    pub async fn reconfig(self: &Arc<Self>, config: &Document, force: bool) -> Result<()> {
        let _g = self.reconfig_lock.lock().await;
        let Some(running) = self.running() else {
            return Err(MongoError::new(
                ErrorCode::NotYetInitialized,
                "no replset config has been received",
            ));
        };
        if force {
            return Err(MongoError::new(
                ErrorCode::InvalidReplicaSetConfig,
                "force reconfig is not supported by eddy: reconfigure through the primary",
            ));
        }
        if !self.writable() {
            return Err(MongoError::new(
                ErrorCode::NotWritablePrimary,
                "replSetReconfig should only be run on a writable PRIMARY",
            ));
        }
        let (members, settings) = parse_config(config, &self.name)?;
        let incompatible =
            |m: String| MongoError::new(ErrorCode::NewReplicaSetConfigurationIncompatible, m);
        if settings != self.settings() {
            return Err(incompatible(
                "eddy cannot change electionTimeoutMillis or heartbeatIntervalMillis of an initiated set".into(),
            ));
        }
        let t = self.topology();
        if let Some(v) = config.get("version").and_then(num) {
            if v as i64 <= t.set_version {
                return Err(incompatible(format!(
                    "New config version {v} must be greater than the current version {}",
                    t.set_version
                )));
            }
        }
        let old: BTreeMap<NodeId, (Member, bool)> = t
            .members
            .iter()
            .map(|(id, m, v)| (*id, (m.clone(), *v)))
            .collect();
        let old_voters: BTreeSet<NodeId> = old
            .iter()
            .filter(|(_, (_, v))| *v)
            .map(|(i, _)| *i)
            .collect();
        let new_voters: BTreeSet<NodeId> = members
            .iter()
            .filter(|(_, (_, v))| *v)
            .map(|(i, _)| *i)
            .collect();
        if old_voters.symmetric_difference(&new_voters).count() > 1 {
            return Err(incompatible(
                "Only one voting member can be added or removed at a time".into(),
            ));
        }
        if !members.contains_key(&running.id) || !new_voters.contains(&running.id) {
            return Err(incompatible(
                "the primary cannot remove itself or its vote; step it down first".into(),
            ));
        }
        for (id, (m, _)) in &members {
            if let Some((o, _)) = old.get(id) {
                if !same_host(&o.host, &m.host) {
                    return Err(incompatible(format!(
                        "member {id}'s host cannot change ({} to {})",
                        o.host, m.host
                    )));
                }
            } else if old.values().any(|(o, _)| same_host(&o.host, &m.host)) {
                return Err(incompatible(format!(
                    "host {} already belongs to another member",
                    m.host
                )));
            }
        }
        let raft = &running.raft;
        let fail =
            |e: String| MongoError::new(ErrorCode::NewReplicaSetConfigurationIncompatible, e);
        // Changed attributes, and new members (as learners first).
        let changed: BTreeMap<NodeId, Member> = members
            .iter()
            .filter(|(id, (m, _))| old.get(id).is_some_and(|(o, _)| o != m))
            .map(|(id, (m, _))| (*id, m.clone()))
            .collect();
        if !changed.is_empty() {
            raft.change_membership(openraft::ChangeMembers::SetNodes(changed), true)
                .await
                .map_err(|e| fail(e.to_string()))?;
        }
        let added: BTreeMap<NodeId, Member> = members
            .iter()
            .filter(|(id, _)| !old.contains_key(id))
            .map(|(id, (m, _))| (*id, m.clone()))
            .collect();
        for (id, m) in &added {
            raft.add_learner(*id, m.clone(), false)
                .await
                .map_err(|e| fail(e.to_string()))?;
        }
        // Votes taken away (the member stays, as a non-voting member) or removed members.
        let unvoted: BTreeSet<NodeId> = old_voters.difference(&new_voters).copied().collect();
        if !unvoted.is_empty() {
            raft.change_membership(openraft::ChangeMembers::RemoveVoters(unvoted), true)
                .await
                .map_err(|e| fail(e.to_string()))?;
        }
        let removed: BTreeSet<NodeId> = old
            .keys()
            .filter(|id| !members.contains_key(id))
            .copied()
            .collect();
        if !removed.is_empty() {
            raft.change_membership(openraft::ChangeMembers::RemoveNodes(removed.clone()), true)
                .await
                .map_err(|e| fail(e.to_string()))?;
            // Raft stops sending to a removed member, which may never see the config
            // without it: it is told (as mongod's heartbeats tell it), and stops.
            for id in removed {
                if let Some((m, _)) = old.get(&id) {
                    let mut peer = self.peer(running.id, id, m).await;
                    if let Err(e) = peer.removed().await {
                        tracing::warn!(member = id, error = %e, "could not tell a removed member");
                    }
                }
            }
        }
        // A new voter votes once it has caught up.
        let promote: BTreeSet<NodeId> = new_voters.difference(&old_voters).copied().collect();
        if !promote.is_empty() {
            let raft = raft.clone();
            let store = self.store.clone();
            let set = Arc::downgrade(self);
            tokio::spawn(async move {
                loop {
                    let Some(s) = set.upgrade() else { return };
                    let last = store.last_frame().ok().flatten().map_or(0, |h| h.lsn);
                    let caught_up = promote.iter().all(|id| {
                        s.topology()
                            .matched
                            .get(id)
                            .is_some_and(|&l| l + 64 >= last)
                    });
                    if !s.writable() {
                        return;
                    }
                    drop(s);
                    if caught_up {
                        if let Err(e) = raft
                            .change_membership(
                                openraft::ChangeMembers::AddVoterIds(promote.clone()),
                                true,
                            )
                            .await
                        {
                            tracing::warn!(error = %e, "could not give a new member its vote");
                        }
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            });
        }
        Ok(())
    }

    /// Stops Raft (at shutdown).
    pub async fn shutdown(&self) {
        if let Some(r) = self.running() {
            let _ = r.raft.shutdown().await;
        }
    }
}

/// Whether two `host:port` strings name the same member (`localhost` and `127.0.0.1`
/// are the same host).
fn same_host(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.trim()
            .to_ascii_lowercase()
            .replace("127.0.0.1", "localhost")
    };
    norm(a) == norm(b)
}

/// Members by id, each with whether it votes.
type Members = BTreeMap<NodeId, (Member, bool)>;

/// Reads a MongoDB replica set config into members: `(member, voter)` by id.
fn parse_config(c: &Document, set: &str) -> Result<(Members, Settings)> {
    let bad = |m: String| MongoError::new(ErrorCode::InvalidReplicaSetConfig, m);
    match c.get_str("_id") {
        Ok(id) if id == set => {}
        Ok(id) => {
            return Err(bad(format!(
                "Attempting to initiate a replica set with name {id}, but command line reports {set}; rejecting"
            )));
        }
        Err(_) => return Err(bad("the config's _id must be the set's name".into())),
    }
    for (k, v) in c {
        match k.as_str() {
            "_id" | "version" | "term" | "members" | "settings" => {}
            "protocolVersion" if num(v) == Some(1.0) => {}
            "writeConcernMajorityJournalDefault" if v.as_bool() == Some(true) => {}
            "configsvr" if v.as_bool() == Some(false) => {}
            _ => {
                return Err(MongoError::new(
                    ErrorCode::InvalidReplicaSetConfig,
                    format!("config field {k}: {v} is not supported by eddy"),
                ));
            }
        }
    }
    let members = c
        .get_array("members")
        .map_err(|_| bad("the config needs a members array".into()))?;
    if members.is_empty() {
        return Err(bad("the config needs at least one member".into()));
    }
    let mut out = BTreeMap::new();
    let mut hosts = BTreeSet::new();
    for m in members {
        let Bson::Document(m) = m else {
            return Err(bad("each member must be a document".into()));
        };
        let id = match m.get("_id") {
            Some(Bson::Int32(i)) => i64::from(*i),
            Some(Bson::Int64(i)) => *i,
            Some(Bson::Double(d)) if d.fract() == 0.0 => *d as i64,
            _ => return Err(bad("each member needs a numeric _id".into())),
        };
        if !(0..=255).contains(&id) {
            return Err(bad(format!("member _id {id} is out of range (0 to 255)")));
        }
        let host = m
            .get_str("host")
            .map_err(|_| bad(format!("member {id} needs a host")))?
            .to_string();
        if !hosts.insert(host.to_ascii_lowercase()) {
            return Err(bad(format!("host {host} appears twice in the config")));
        }
        for (k, v) in m {
            match k.as_str() {
                "_id" | "host" | "priority" | "votes" | "hidden" => {}
                "arbiterOnly" if v == &Bson::Boolean(false) => {}
                "buildIndexes" if v == &Bson::Boolean(true) => {}
                "tags" if matches!(v, Bson::Document(d) if d.is_empty()) => {}
                "secondaryDelaySecs" | "slaveDelay" if num(v) == Some(0.0) => {}
                _ => {
                    return Err(MongoError::new(
                        ErrorCode::InvalidReplicaSetConfig,
                        format!("member option {k}: {v} is not supported by eddy"),
                    ));
                }
            }
        }
        let votes = m.get("votes").and_then(num).unwrap_or(1.0);
        if votes != 0.0 && votes != 1.0 {
            return Err(bad(format!("member {id}: votes must be 0 or 1")));
        }
        let hidden = m.get_bool("hidden").unwrap_or(false);
        let priority = m
            .get("priority")
            .and_then(num)
            .unwrap_or(if hidden || votes == 0.0 { 0.0 } else { 1.0 });
        if !(0.0..=1000.0).contains(&priority) {
            return Err(bad(format!(
                "member {id}: priority must be between 0 and 1000"
            )));
        }
        if !(0.0..=1000.0).contains(&priority) {
            return Err(bad(format!(
                "member {id}: priority must be between 0 and 1000, not {priority}"
            )));
        }
        if hidden && priority != 0.0 {
            return Err(bad(format!(
                "member {id}: a hidden member must have priority 0"
            )));
        }
        if votes == 0.0 && priority != 0.0 {
            return Err(bad(format!(
                "member {id}: a non-voting member must have priority 0"
            )));
        }
        out.insert(
            id as NodeId,
            (
                Member {
                    host,
                    priority_milli: (priority * 1000.0).round() as u32,
                    hidden,
                },
                votes == 1.0,
            ),
        );
    }
    if !out.values().any(|(m, v)| *v && m.priority_milli > 0) {
        return Err(bad(
            "the config needs a voting member that can become primary".into(),
        ));
    }
    let mut settings = Settings::default();
    if let Ok(s) = c.get_document("settings") {
        for (k, v) in s {
            let ms = num(v)
                .filter(|n| n.fract() == 0.0 && *n > 0.0)
                .map(|n| n as u64);
            let is = |d: &Document| v.as_document() == Some(d);
            match (k.as_str(), ms) {
                // Secondaries always replicate from the primary, which chaining allows.
                ("chainingAllowed", _) if v.as_bool().is_some() => {}
                // What `replSetGetConfig` reports, given back unchanged.
                ("heartbeatTimeoutSecs", Some(10))
                | ("catchUpTakeoverDelayMillis", Some(30000)) => {}
                ("catchUpTimeoutMillis", _) if num(v) == Some(-1.0) => {}
                ("getLastErrorModes", _) if is(&Document::new()) => {}
                ("getLastErrorDefaults", _) if is(&doc! {"w": 1, "wtimeout": 0}) => {}
                ("heartbeatIntervalMillis", Some(ms)) => settings.heartbeat_ms = ms,
                ("electionTimeoutMillis", Some(ms)) => settings.election_timeout_ms = ms,
                _ => {
                    return Err(MongoError::new(
                        ErrorCode::InvalidReplicaSetConfig,
                        format!("setting {k}: {v} is not supported by eddy"),
                    ));
                }
            }
        }
    }
    if settings.heartbeat_ms * 4 >= settings.election_timeout_ms {
        return Err(bad(format!(
            "heartbeatIntervalMillis ({}) must be under a quarter of electionTimeoutMillis ({})",
            settings.heartbeat_ms, settings.election_timeout_ms
        )));
    }
    Ok((out, settings))
}

fn num(v: &Bson) -> Option<f64> {
    match v {
        Bson::Int32(i) => Some(f64::from(*i)),
        Bson::Int64(i) => Some(*i as f64),
        Bson::Double(d) => Some(*d),
        _ => None,
    }
}

/// Sends proposals to Raft in the order the pipeline made them; one Raft refuses (this
/// member is not the leader) goes back to the pipeline, which rolls it back.
async fn forward_proposals(
    raft: Raft<TypeConfig>,
    store: Store,
    mut rx: Proposals,
    me: NodeId,
    incarnation: u64,
) {
    while let Some((proposal, frame)) = rx.recv().await {
        let p = Proposal {
            origin: me,
            incarnation,
            proposal,
            frame,
        };
        match raft.client_write_ff(p).await {
            Ok(resp) => {
                let store = store.clone();
                tokio::spawn(async move {
                    match resp.await {
                        Ok(Ok(_)) => {}
                        _ => store.repl_rejected(proposal),
                    }
                });
            }
            Err(_) => store.repl_rejected(proposal),
        }
    }
}

/// The voting member other than this one (`only` that one, if given) with the highest
/// priority above `above` whose log is within `slack` entries of `last` (ties go to the
/// lowest id).
fn best_caught_up(
    t: &Topology,
    last: u64,
    slack: u64,
    above: u32,
    only: Option<NodeId>,
) -> Option<(NodeId, Member)> {
    t.members
        .iter()
        .filter(|(id, m, voter)| {
            Some(*id) != t.my_id
                && only.is_none_or(|o| o == *id)
                && *voter
                && m.priority_milli > above
                && t.matched.get(id).is_some_and(|&l| l + slack >= last)
        })
        .max_by_key(|(id, m, _)| (m.priority_milli, std::cmp::Reverse(*id)))
        .map(|(id, m, _)| (*id, m.clone()))
}

/// How long frames Raft purged stay readable (see `release_log`).
const PURGE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Releases log frames the oplog's bounds want gone (`ReplShared::purge_wanted`): takes
/// an image of the tables (a Raft snapshot) that covers them, then has Raft purge them,
/// so that a member that would still need them is sent the image instead.
async fn release_log(store: Store, raft: Raft<TypeConfig>) {
    let Some(shared) = store.repl().cloned() else {
        return;
    };
    let mut asked_at: Option<(std::time::Instant, u64)> = None;
    let mut purges: std::collections::VecDeque<(std::time::Instant, u64)> = Default::default();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let wanted = shared.purge_wanted.load(Ordering::SeqCst);
        let purged = shared.purged.load(Ordering::SeqCst);
        // A replication request made before a purge may still read the frames it purged
        // (openraft retries a request after a backoff): they are released for deletion
        // only after a grace period.
        if purges.back().map_or(0, |p| p.1) < purged {
            purges.push_back((std::time::Instant::now(), purged));
        }
        while let Some(&(at, lsn)) = purges.front() {
            if at.elapsed() < PURGE_GRACE {
                break;
            }
            shared.released.fetch_max(lsn, Ordering::SeqCst);
            purges.pop_front();
        }
        if wanted <= purged {
            continue;
        }
        let m = raft.metrics().borrow().clone();
        if m.state == ServerState::Shutdown {
            return;
        }
        let image = m.snapshot.map_or(0, |l| l.index + 1);
        if image < wanted {
            // One image at a time; another only once the last is taken (or after a while,
            // if taking it failed).
            let waiting = asked_at.is_some_and(|(at, from)| {
                from == image && at.elapsed() < std::time::Duration::from_secs(60)
            });
            if !waiting {
                asked_at = Some((std::time::Instant::now(), image));
                if raft.trigger().snapshot().await.is_err() {
                    return;
                }
            }
        }
        let upto = image.min(wanted);
        if upto > purged && raft.trigger().purge_log(upto - 1).await.is_err() {
            return;
        }
    }
}

/// Follows Raft's metrics: this member's state, the primary, the membership, and whether
/// it may take writes.
async fn watch_metrics(set: std::sync::Weak<ReplSet>, raft: Raft<TypeConfig>) {
    let mut rx = raft.metrics();
    let mut m = rx.borrow_and_update().clone();
    let mut got_at = std::time::Instant::now();
    let mut first = true;
    let mut takeover_at: Option<std::time::Instant> = None;
    loop {
        let Some(set) = set.upgrade() else { return };
        let state = match m.state {
            ServerState::Leader => MemberState::Primary,
            ServerState::Follower | ServerState::Learner => MemberState::Secondary,
            ServerState::Candidate => MemberState::Candidate,
            ServerState::Shutdown => MemberState::Removed,
        };
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members: Vec<(NodeId, Member, bool)> = membership
            .nodes()
            .map(|(id, n)| (*id, n.clone(), voters.contains(id)))
            .collect();
        let in_set = members.iter().any(|(id, _, _)| *id == m.id);
        let state = if members.is_empty() {
            MemberState::Startup
        } else if !in_set {
            MemberState::Removed
        } else {
            state
        };
        // Writable once it leads and has applied its own term's first entry, and while a
        // majority has answered it within an election timeout (a primary cut off from the
        // majority stops taking writes, as a new primary may be elected meanwhile).
        let quorum_ok = members.len() == 1
            || m.millis_since_quorum_ack.is_some_and(|ms| {
                ms + (got_at.elapsed().as_millis() as u64) < set.settings().election_timeout_ms
            });
        let writable = state == MemberState::Primary
            && quorum_ok
            && !set.stepping_down.load(Ordering::SeqCst)
            && m.last_applied
                .is_some_and(|l| l.leader_id.term == m.current_term && l.leader_id.node_id == m.id);
        let matched: BTreeMap<NodeId, u64> = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, l)| (*id, l.map_or(0, |l| l.index + 1)))
                    .collect()
            })
            .unwrap_or_default();
        set.shared.writable.store(writable, Ordering::SeqCst);
        let primary = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.host.clone()));
        let set_version = m
            .membership_config
            .log_id()
            .map_or(0, |l| l.index as i64 + 1);
        let me = members
            .iter()
            .find(|(id, _, _)| *id == m.id)
            .map_or_else(|| set.me.clone(), |(_, n, _)| n.host.clone());
        let electable_before = set.electable(&set.topology());
        set.publish(Topology {
            state,
            me,
            my_id: Some(m.id),
            primary: if state == MemberState::Primary && !writable {
                None
            } else {
                primary
            },
            term: m.current_term,
            members,
            set_version,
            counter: 0,
            writable,
            matched,
        });
        let electable = set.electable(&set.topology());
        if electable != electable_before || first {
            raft.runtime_config().elect(electable);
            first = false;
        }
        if writable && takeover_at.is_none_or(|t| t.elapsed() > set.election_timeout()) {
            if let Some(target) = set.takeover_target() {
                takeover_at = Some(std::time::Instant::now());
                tokio::spawn(set.clone().take_over(target));
            }
        }
        drop(set);
        tokio::select! {
            r = rx.changed() => {
                if r.is_err() {
                    return;
                }
                m = rx.borrow_and_update().clone();
                got_at = std::time::Instant::now();
            }
            () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
        }
    }
}
