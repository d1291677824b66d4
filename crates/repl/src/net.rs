//! Member-to-member traffic: Raft's three RPCs as an internal command (`_eddyRaft`) over
//! the same listener and wire protocol as clients, so that it goes through the same
//! framing, limits and (once members authenticate with a key file) the same checks.
//!
//! Request: `{_eddyRaft: "append" | "vote" | "snapshot", to: <member id>, req: <the RPC>,
//! $db: "admin"}`. Reply: `{ok: 1, resp: <the response>}` or `{ok: 1, raftError: ...}`
//! when the receiving Raft node refused it.

use std::sync::Arc;
use std::time::Duration;

use bson::{Document, doc};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::{Member, NodeId, TypeConfig};

/// Makes a client per peer.
#[derive(Clone)]
pub struct Network {
    /// The set's settings, sent with every RPC (a member that has not started its Raft
    /// node yet starts it with them).
    pub settings: crate::Settings,
    /// This member.
    pub me: NodeId,
    /// The key file's key, when members authenticate (see [`authenticate`]).
    pub key: Option<Arc<str>>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer {
        Peer {
            target,
            host: node.host.clone(),
            conn: Arc::new(Mutex::new(None)),
            next_id: 1,
            next_xfer: 0,
            settings: self.settings,
            me: self.me,
            key: self.key.clone(),
        }
    }
}

/// One peer: a connection, opened when first needed and again after a failure.
pub struct Peer {
    target: NodeId,
    host: String,
    conn: Arc<Mutex<Option<TcpStream>>>,
    next_id: i32,
    next_xfer: u64,
    settings: crate::Settings,
    me: NodeId,
    key: Option<Arc<str>>,
}

/// Bytes of request one member message carries; larger requests go in parts.
const PART_BYTES: usize = 8 * 1024 * 1024;

/// Test fault injection (the `raftPartition` fail point): members this process neither
/// sends RPCs to nor answers.
static PARTITIONED: std::sync::Mutex<Vec<NodeId>> = std::sync::Mutex::new(Vec::new());

/// Cuts this member off from `members` (empty: heals).
pub fn set_partition(members: Vec<NodeId>) {
    *PARTITIONED.lock().unwrap() = members;
}

/// Whether traffic with `member` is cut.
pub fn partitioned(member: NodeId) -> bool {
    PARTITIONED.lock().unwrap().contains(&member)
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, Member, E>>;

impl Peer {
    async fn call<Req: Serialize, Resp: DeserializeOwned, E>(
        &mut self,
        kind: &str,
        req: &Req,
        ttl: Duration,
    ) -> RpcResult<Resp, E>
    where
        E: std::error::Error + DeserializeOwned,
    {
        let bytes = crate::encode(req)
            .map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
        if partitioned(self.target) {
            let e = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "partitioned");
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        }
        // A request over one message's room (a batch's frame can be as large as its
        // documents) goes in parts, which the member puts back together.
        self.next_xfer += 1;
        let xfer = self.next_xfer;
        let chunks: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[][..]]
        } else {
            bytes.chunks(PART_BYTES).collect()
        };
        let last = chunks.len() - 1;
        let round = async {
            let mut reply = Document::new();
            for (i, chunk) in chunks.into_iter().enumerate() {
                let mut body = doc! {
                    "_eddyRaft": if i == last { kind } else { "part" },
                    "from": self.me as i64,
                    "to": self.target as i64,
                    "xfer": xfer as i64,
                    "req": bin(chunk.to_vec()),
                    "settings": {
                        "electionTimeoutMillis": self.settings.election_timeout_ms as i64,
                        "heartbeatIntervalMillis": self.settings.heartbeat_ms as i64,
                    },
                    "$db": "admin",
                };
                if last == 0 {
                    body.remove("xfer");
                }
                self.next_id = self.next_id.wrapping_add(1);
                let msg = wire::try_encode_msg(self.next_id, 0, 0, &body, None)
                    .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
                reply = self.round_trip(&msg).await?;
                if i < last && reply.get_f64("ok") != Ok(1.0) {
                    break;
                }
            }
            Ok::<Document, std::io::Error>(reply)
        };
        // Raft's RPC timeout is sized for heartbeats; a large request also gets the time
        // to move and write it (a second per 16 MB: far slower than loopback or a LAN).
        let ttl = ttl + Duration::from_millis(bytes.len() as u64 / 16_000);
        let reply = match tokio::time::timeout(ttl, round).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                *self.conn.lock().await = None;
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
            Err(_) => {
                *self.conn.lock().await = None;
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "member RPC timed out");
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
        };
        let net = |e: String| RPCError::Network(NetworkError::new(&std::io::Error::other(e)));
        if let Ok(r) = reply.get_binary_generic("resp") {
            return crate::decode(r).map_err(net);
        }
        if let Ok(r) = reply.get_binary_generic("raftError") {
            let e: E = crate::decode(r).map_err(net)?;
            return Err(RPCError::RemoteError(RemoteError::new(self.target, e)));
        }
        let msg = reply
            .get_str("errmsg")
            .unwrap_or("member RPC refused")
            .to_string();
        Err(RPCError::Unreachable(Unreachable::new(
            &std::io::Error::other(msg),
        )))
    }

    /// Sends one message and reads its reply. The connection is taken out while the
    /// message is in flight and put back after its reply: if Raft gives up on the RPC
    /// (drops this future), the connection is dropped with it, never reused with a reply
    /// still to come.
    async fn round_trip(&self, msg: &[u8]) -> std::io::Result<Document> {
        let taken = self.conn.lock().await.take();
        let mut s = match taken {
            Some(s) => s,
            None => {
                let mut s = TcpStream::connect(&self.host).await?;
                s.set_nodelay(true)?;
                if let Some(key) = &self.key {
                    authenticate(&mut s, key).await?;
                }
                s
            }
        };
        s.write_all(msg).await?;
        let body = read_reply(&mut s).await?;
        *self.conn.lock().await = Some(s);
        Ok(body)
    }
}

/// Reads one reply message's body.
async fn read_reply(s: &mut TcpStream) -> std::io::Result<Document> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    let len = i32::from_le_bytes(head);
    if !(16..=64 * 1024 * 1024).contains(&len) {
        return Err(std::io::Error::other("bad reply length from a member"));
    }
    let mut buf = vec![0u8; len as usize];
    buf[..4].copy_from_slice(&head);
    s.read_exact(&mut buf[4..]).await?;
    let frame = wire::decode(&buf).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    match frame.request {
        wire::Request::Msg(m) => Ok(m.body),
        wire::Request::Query(_) => Err(std::io::Error::other("unexpected reply from a member")),
    }
}

/// Authenticates a new connection to a member as `__system` with the key file's key
/// (SCRAM-SHA-256, as mongod members do), before any RPC on it.
async fn authenticate(s: &mut TcpStream, key: &str) -> std::io::Result<()> {
    let fail = |why: String| {
        std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("member authentication failed: {why}"),
        )
    };
    let mech = auth::Mechanism::Sha256;
    let (mut client, first) = auth::Client::start(mech, "__system");
    let send = async |s: &mut TcpStream, body: Document| -> std::io::Result<Document> {
        let msg = wire::try_encode_msg(1, 0, 0, &body, None)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        s.write_all(&msg).await?;
        let r = read_reply(s).await?;
        if r.get_f64("ok") != Ok(1.0) {
            return Err(fail(r.get_str("errmsg").unwrap_or("refused").to_string()));
        }
        Ok(r)
    };
    let r = send(
        s,
        doc! {
            "saslStart": 1,
            "mechanism": mech.name(),
            "payload": bin(first),
            "options": {"skipEmptyExchange": true},
            "$db": "local",
        },
    )
    .await?;
    let server_first = r
        .get_binary_generic("payload")
        .map_err(|_| fail("no payload".into()))?;
    let fin = client
        .respond(server_first, key)
        .map_err(|e| fail(e.message))?;
    let conv = r
        .get("conversationId")
        .cloned()
        .unwrap_or(bson::Bson::Int32(1));
    let r = send(
        s,
        doc! {
            "saslContinue": 1,
            "conversationId": conv,
            "payload": bin(fin),
            "$db": "local",
        },
    )
    .await?;
    let server_final = r
        .get_binary_generic("payload")
        .map_err(|_| fail("no payload".into()))?;
    client.verify(server_final).map_err(|e| fail(e.message))?;
    if r.get_bool("done") != Ok(true) {
        return Err(fail("the conversation did not end".into()));
    }
    Ok(())
}

impl Peer {
    /// Asks this member to stand for election now.
    ///
    /// # Errors
    /// When it cannot be reached or refuses.
    pub async fn elect(&mut self) -> Result<(), String> {
        self.notify("elect").await
    }

    /// Tells this member that it was removed from the set.
    ///
    /// # Errors
    /// When it cannot be reached.
    pub async fn removed(&mut self) -> Result<(), String> {
        self.notify("removed").await
    }

    /// Sends this member an RPC of `kind` that carries nothing and answers `true`.
    async fn notify(&mut self, kind: &str) -> Result<(), String> {
        let r: RpcResult<bool, openraft::error::Fatal<NodeId>> =
            self.call(kind, &(), Duration::from_secs(5)).await;
        r.map(drop).map_err(|e| e.to_string())
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, RaftError<NodeId>> {
        self.call("append", &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        self.call("snapshot", &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, RaftError<NodeId>> {
        self.call("vote", &rpc, option.hard_ttl()).await
    }
}

/// Bytes as a BSON binary (generic subtype).
pub(crate) fn bin(bytes: Vec<u8>) -> bson::Binary {
    bson::Binary {
        subtype: bson::spec::BinarySubtype::Generic,
        bytes,
    }
}

/// A member RPC's reply: `resp` holds its result, `raftError` Raft's error.
///
/// # Errors
/// When the result cannot be encoded.
pub(crate) fn reply<T: Serialize, E: Serialize>(r: Result<T, E>) -> Result<Document, String> {
    match r {
        Ok(v) => Ok(doc! {"resp": bin(crate::encode(&v)?)}),
        Err(e) => Ok(doc! {"raftError": bin(crate::encode(&e)?)}),
    }
}

/// Serves one `_eddyRaft` request on this member's Raft node.
///
/// # Errors
/// A request that does not parse.
pub async fn serve(
    raft: &openraft::Raft<TypeConfig>,
    kind: &str,
    req: &[u8],
) -> Result<Document, String> {
    match kind {
        "append" => reply(raft.append_entries(crate::decode(req)?).await),
        "vote" => reply(raft.vote(crate::decode(req)?).await),
        "snapshot" => reply(raft.install_snapshot(crate::decode(req)?).await),
        // A primary stepping down asks a caught-up member to stand for election now.
        "elect" => reply(raft.trigger().elect().await.map(|()| true)),
        other => Err(format!("unknown member RPC {other:?}")),
    }
}
