//! The `eddy` server: listeners, connections and shutdown. The binary (`main.rs`) only
//! parses the command line and calls [`start`].
//!
//! Each connection is a task that reads whole messages (the 4-byte length decides when one
//! is complete), decodes them with `wire`, runs the command, and writes the reply. A
//! message that cannot be framed closes only its own connection; one that is framed but
//! malformed gets an error reply and the connection goes on.

pub mod config_file;
pub mod http;
pub mod log;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bson::{Bson, Document, doc};
use commands::{ServerConfig, ServerCtx};
use storage::{Store, StoreOptions};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use wire::{Compressor, Request};

pub use tls::{TlsConfig, TlsMode};

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub bind_ip: Vec<String>,
    pub port: u16,
    pub advertise: Option<String>,
    pub dbpath: PathBuf,
    pub repl_set: String,
    /// `--replSet` was given: a member of a replicated set (see the `repl` crate), not a
    /// single-node set.
    pub replicated: bool,
    pub oplog_size_mb: u64,
    pub oplog_min_retention_hours: Option<f64>,
    /// Seconds between checkpoints (mongod's `--syncdelay`).
    pub syncdelay_secs: f64,
    /// Megabytes of log after which a checkpoint is taken sooner.
    pub checkpoint_size_mb: u64,
    /// `--setParameter` values.
    pub parameters: Document,
    pub argv: Vec<String>,
    /// `--config`: the configuration file the flags were read from (shown by
    /// `getCmdLineOpts`).
    pub config_file: Option<PathBuf>,
    /// `--auth`: access control on.
    pub auth: bool,
    /// `--keyFile`: the shared secret replica set members authenticate to each other with
    /// (as `__system`); implies `--auth`.
    pub key_file: Option<PathBuf>,
    /// `--tlsMode` and its files.
    pub tls: TlsConfig,
    /// `--maxConns`: connections over this many are closed as soon as they are accepted.
    pub max_conns: u64,
    /// How long a connection may sit idle with part of a message sent before it is
    /// closed (`--partialMessageTimeoutSecs`); also bounds a TLS handshake.
    pub partial_message_timeout: Duration,
    /// `--httpPort`: the HTTP listener (metrics, change streams as Server-Sent Events),
    /// on the same addresses; 0 picks a free port.
    pub http_port: Option<u16>,
    /// `--httpCorsOrigin`: origins browsers may read the HTTP listener's answers from.
    pub http_cors_origins: Vec<String>,
    /// How often an idle Server-Sent Events stream sends a heartbeat (5 s).
    pub http_heartbeat: Duration,
}

/// mongod's default `net.maxIncomingConnections`.
pub const DEFAULT_MAX_CONNS: u64 = 1_000_000;

impl Config {
    /// Defaults for a server on `dbpath` and `port` (tests use port 0).
    pub fn new(dbpath: PathBuf, port: u16) -> Config {
        Config {
            bind_ip: vec!["127.0.0.1".into()],
            port,
            advertise: None,
            dbpath,
            repl_set: "rs0".into(),
            replicated: false,
            oplog_size_mb: 1024,
            oplog_min_retention_hours: None,
            syncdelay_secs: 5.0,
            checkpoint_size_mb: 256,
            parameters: Document::new(),
            argv: vec!["eddy".into()],
            config_file: None,
            auth: false,
            key_file: None,
            tls: TlsConfig::default(),
            max_conns: DEFAULT_MAX_CONNS,
            partial_message_timeout: Duration::from_secs(30),
            http_port: None,
            http_cors_origins: Vec::new(),
            http_heartbeat: Duration::from_secs(5),
        }
    }

    fn parsed(&self) -> Document {
        let mut net = doc! {"bindIp": self.bind_ip.join(","), "port": i32::from(self.port)};
        if let Some(p) = self.http_port {
            let mut h = doc! {"port": i32::from(p)};
            if !self.http_cors_origins.is_empty() {
                h.insert("corsOrigins", self.http_cors_origins.clone());
            }
            net.insert("http", h);
        }
        if self.max_conns != DEFAULT_MAX_CONNS {
            net.insert("maxIncomingConnections", self.max_conns as i64);
        }
        if self.tls.mode != TlsMode::Disabled {
            let mut t = doc! {"mode": self.tls.mode.name()};
            if let Some(f) = &self.tls.certificate_key_file {
                t.insert("certificateKeyFile", f.display().to_string());
            }
            if let Some(f) = &self.tls.ca_file {
                t.insert("CAFile", f.display().to_string());
            }
            if self.tls.allow_connections_without_certificates {
                t.insert("allowConnectionsWithoutCertificates", true);
            }
            net.insert("tls", t);
        }
        let mut d = doc! {
            "net": net,
            "replication": {"replSet": &self.repl_set, "oplogSizeMB": self.oplog_size_mb as i64},
            "storage": {
                "dbPath": self.dbpath.display().to_string(),
                "syncPeriodSecs": self.syncdelay_secs,
            },
        };
        if let Some(h) = self.oplog_min_retention_hours {
            if let Ok(st) = d.get_document_mut("storage") {
                st.insert("oplogMinRetentionHours", h);
            }
        }
        if let Some(f) = &self.config_file {
            d.insert("config", f.display().to_string());
        }
        if !self.parameters.is_empty() {
            d.insert("setParameter", self.parameters.clone());
        }
        if self.auth || self.key_file.is_some() {
            let mut sec = doc! {"authorization": "enabled"};
            if let Some(k) = &self.key_file {
                sec.insert("keyFile", k.display().to_string());
            }
            d.insert("security", sec);
        }
        d
    }
}

/// Reads a key file as mongod does: whitespace is ignored, what is left must be 6 to 1024
/// base64 characters, and the file must not be readable by group or others.
///
/// # Errors
/// When the file cannot be read, is too open, or does not hold a key.
pub fn read_key_file(path: &std::path::Path) -> anyhow::Result<String> {
    let shown = path.display();
    let meta =
        std::fs::metadata(path).map_err(|e| anyhow::anyhow!("error getting file {shown}: {e}"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            anyhow::bail!("permissions on {shown} are too open");
        }
    }
    let _ = meta;
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("error reading file {shown}: {e}"))?;
    let key: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if key.len() < 6 {
        anyhow::bail!(
            "security key in {shown} has length {}, must be at least 6 characters",
            key.len()
        );
    }
    if key.len() > 1024 {
        anyhow::bail!(
            "security key in {shown} has length {}, must be at most 1024 characters",
            key.len()
        );
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '+' || *c == '/' || *c == '='))
    {
        anyhow::bail!("invalid char in key file {shown}: {c}");
    }
    Ok(key)
}

/// Parses a `--setParameter name=value` value as MongoDB does: booleans and numbers are
/// typed, anything else is a string.
pub fn parse_parameter(s: &str) -> Option<(String, Bson)> {
    let (k, v) = s.split_once('=')?;
    let v = match v {
        "true" | "1" if k == "enableTestCommands" || k == "createRollbackDataFiles" => {
            Bson::Boolean(true)
        }
        "false" | "0" if k == "enableTestCommands" || k == "createRollbackDataFiles" => {
            Bson::Boolean(false)
        }
        "true" => Bson::Boolean(true),
        "false" => Bson::Boolean(false),
        _ => match v.parse::<i32>() {
            Ok(i) => Bson::Int32(i),
            Err(_) => match v.parse::<i64>() {
                Ok(i) => Bson::Int64(i),
                Err(_) => Bson::String(v.to_string()),
            },
        },
    };
    Some((k.to_string(), v))
}

/// A running server.
pub struct Running {
    /// The port it listens on (the real one when asked for 0).
    pub port: u16,
    /// The HTTP listener's port, when there is one.
    pub http_port: Option<u16>,
    pub ctx: Arc<ServerCtx>,
    accept_tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Waits until the `shutdown` command or [`Running::shutdown`] asks the server to stop.
    pub async fn stopped(&self) {
        let mut rx = self.ctx.shutdown.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Stops accepting, and closes the store after the writes already queued.
    pub fn shutdown(&self) {
        self.ctx.shutdown.send_replace(true);
        for t in &self.accept_tasks {
            t.abort();
        }
        self.ctx.store.close();
    }
}

/// Opens the store, binds the listeners and starts serving.
///
/// # Errors
/// When the data directory is locked or unreadable, or an address cannot be bound.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    let opts = StoreOptions {
        oplog_size_bytes: cfg.oplog_size_mb.max(1) * 1024 * 1024,
        oplog_min_retention: cfg
            .oplog_min_retention_hours
            .map(|h| Duration::from_secs_f64(h * 3600.0)),
        checkpoint_interval: Duration::from_secs_f64(cfg.syncdelay_secs.max(0.01)),
        checkpoint_bytes: cfg.checkpoint_size_mb.max(1) * 1024 * 1024,
        replicated: cfg.replicated,
        rollback_files: !matches!(
            cfg.parameters.get("createRollbackDataFiles"),
            Some(Bson::Boolean(false) | Bson::Int32(0))
        ),
        ..StoreOptions::default()
    };
    let key = cfg.key_file.as_deref().map(read_key_file).transpose()?;
    let auth = cfg.auth || key.is_some();
    if cfg.replicated && auth && key.is_none() {
        anyhow::bail!(
            "security.keyFile is required when authorization is enabled with replica sets"
        );
    }
    let tls = tls::acceptor(&cfg.tls)?;
    let store = Store::open(&cfg.dbpath, opts).map_err(anyhow::Error::msg)?;
    let mut listeners = Vec::new();
    let mut port = cfg.port;
    for ip in &cfg.bind_ip {
        let addr: SocketAddr = format!("{ip}:{port}")
            .parse()
            .or_else(|_| format!("[{ip}]:{port}").parse())
            .map_err(|e| anyhow::anyhow!("bad --bind_ip address {ip}: {e}"))?;
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        port = l.local_addr()?.port();
        listeners.push(l);
    }
    let loopback = cfg
        .bind_ip
        .iter()
        .all(|ip| ip == "127.0.0.1" || ip == "localhost" || ip == "::1");
    let advertised = match &cfg.advertise {
        Some(a) => a.clone(),
        None if loopback => format!("localhost:{port}"),
        None => format!("{}:{port}", gethostname()),
    };
    let mut cfg2 = cfg.clone();
    cfg2.port = port;
    let config = ServerConfig {
        advertised,
        repl_set: cfg.repl_set.clone(),
        argv: cfg.argv.clone(),
        parsed: cfg2.parsed(),
        port,
        oplog_size_bytes: cfg.oplog_size_mb.max(1) * 1024 * 1024,
        auth,
        key: key.clone(),
        max_conns: cfg.max_conns,
    };
    let repl = if cfg.replicated {
        let set = repl::ReplSet::open(
            store.clone(),
            cfg.repl_set.clone(),
            config.advertised.clone(),
            key,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        Some(set)
    } else {
        None
    };
    let ctx = ServerCtx::new(store, config, cfg.parameters.clone(), repl);
    let listening = Arc::new(Listening {
        tls,
        mode: cfg.tls.mode,
        partial_message_timeout: cfg.partial_message_timeout,
    });
    let mut accept_tasks: Vec<tokio::task::JoinHandle<()>> = listeners
        .into_iter()
        .map(|l| tokio::spawn(accept_loop(l, ctx.clone(), listening.clone())))
        .collect();
    let mut http_port = None;
    if let Some(mut hp) = cfg.http_port {
        let http_cfg = http::HttpConfig {
            cors_origins: cfg.http_cors_origins.clone(),
            heartbeat: cfg.http_heartbeat,
        };
        for ip in &cfg.bind_ip {
            let addr: SocketAddr = format!("{ip}:{hp}")
                .parse()
                .or_else(|_| format!("[{ip}]:{hp}").parse())
                .map_err(|e| anyhow::anyhow!("bad --bind_ip address {ip}: {e}"))?;
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {addr}: {e}"))?;
            hp = l.local_addr()?.port();
            accept_tasks.push(tokio::spawn(http::serve(l, ctx.clone(), http_cfg.clone())));
        }
        http_port = Some(hp);
        tracing::info!(port = hp, "HTTP listener ready (/metrics, /v1/watch)");
    }
    tracing::info!(port, dbpath = %cfg.dbpath.display(), "eddy is ready for connections");
    Ok(Running {
        port,
        http_port,
        ctx,
        accept_tasks,
    })
}

fn gethostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

/// What every connection of a listener shares.
struct Listening {
    tls: Option<TlsAcceptor>,
    mode: TlsMode,
    partial_message_timeout: Duration,
}

async fn accept_loop(listener: TcpListener, ctx: Arc<ServerCtx>, l: Arc<Listening>) {
    let mut backoff = Duration::from_millis(10);
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                // Over --maxConns: closed at once, before it costs anything.
                if ctx.stats.connections_current.load(Ordering::Relaxed) >= ctx.config.max_conns {
                    tracing::info!(%peer, max = ctx.config.max_conns, "connection refused: too many open connections");
                    drop(stream);
                    continue;
                }
                let conn = ctx.connect(peer.to_string());
                let _ = stream.set_nodelay(true);
                let ctx = ctx.clone();
                let l = l.clone();
                tokio::spawn(async move {
                    match handshake(&l, stream).await {
                        Some(Stream::Plain(s)) => serve(&ctx, conn, s, &l).await,
                        Some(Stream::Tls(s)) => serve(&ctx, conn, *s, &l).await,
                        None => ctx.disconnect(&conn),
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

enum Stream {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

/// Sets up a new connection's transport as `--tlsMode` says: plain, TLS, or whichever
/// the client opens with. `None` if the TLS handshake fails or the peer goes away (or
/// stays silent past the partial-message timeout) first.
async fn handshake(l: &Listening, stream: tokio::net::TcpStream) -> Option<Stream> {
    let Some(acceptor) = &l.tls else {
        return Some(Stream::Plain(stream));
    };
    let wants_tls = match l.mode {
        TlsMode::Require => true,
        TlsMode::Allow | TlsMode::Prefer => {
            // A silent client is left waiting, as on a plain port, until it speaks.
            tls::peek_is_tls(&stream).await?
        }
        TlsMode::Disabled => false,
    };
    if !wants_tls {
        return Some(Stream::Plain(stream));
    }
    match tokio::time::timeout(l.partial_message_timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(Stream::Tls(Box::new(s))),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

/// Serves one connection until the peer closes it, it sends something unframeable, it
/// leaves half a message unsent for too long, or a fail point asks to drop it.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: &Arc<ServerCtx>,
    mut conn: commands::ConnInfo,
    mut stream: S,
    l: &Listening,
) {
    let ctx = ctx.clone();
    tracing::debug!(conn_id = conn.id, peer = %conn.peer, "connection accepted");
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut next_id: i32 = 1;
    'conn: loop {
        let n = loop {
            match wire::check(&buf) {
                Ok(Some(n)) => break n,
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(conn_id = conn.id, error = %e, "closing connection: unframeable message");
                    break 'conn;
                }
            }
            // Read straight into the buffer's spare room: no zeroed scratch buffer per read.
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(64 * 1024);
            }
            // Between messages a connection may idle for ever; in the middle of one, only
            // for the partial-message timeout (a peer that sends a length and stops would
            // otherwise hold its buffer and task indefinitely).
            let partial = !buf.is_empty();
            let read = stream.read_buf(&mut buf);
            let r = if partial {
                match tokio::time::timeout(l.partial_message_timeout, read).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::debug!(
                            conn_id = conn.id,
                            "closing connection: idle in the middle of a message"
                        );
                        break 'conn;
                    }
                }
            } else {
                read.await
            };
            match r {
                Ok(0) | Err(_) => break 'conn,
                Ok(_) => {}
            }
        };
        let msg: Vec<u8> = buf.drain(..n).collect();
        let Ok(header) = wire::parse_header(&msg) else {
            break;
        };
        next_id = next_id.wrapping_add(1);
        // A catch-up slot the reply holds, released once the reply is written.
        let mut slot = None;
        let out = match wire::decode(&msg) {
            Err(e) => {
                tracing::debug!(conn_id = conn.id, error = %e, "malformed message");
                let reply = commands::reply::error_doc(&e.to_mongo_error());
                wire::encode_msg(next_id, header.request_id, 0, &reply, None)
            }
            Ok(frame) => {
                let compressor = frame.compressor.filter(|c| *c != Compressor::Noop);
                match frame.request {
                    Request::Msg(m) => {
                        let more_to_come = m.more_to_come();
                        let cmd = m.into_command();
                        let reply = commands::handle(&ctx, &mut conn, cmd).await;
                        if reply.close_connection {
                            break;
                        }
                        if more_to_come {
                            continue;
                        }
                        slot = reply.slot.clone();
                        reply.encode_msg(next_id, header.request_id, compressor)
                    }
                    Request::Query(q) => {
                        let reply = legacy_query(&ctx, &mut conn, q).await;
                        if reply.close_connection {
                            break;
                        }
                        wire::encode_reply(next_id, header.request_id, 0, &reply.full_doc())
                    }
                }
            }
        };
        if write_reply(&mut stream, &out, slot).await.is_err() {
            break;
        }
    }
    ctx.disconnect(&conn);
}

/// Writes a reply. A catch-up slot it holds is released once the reply is written, or
/// after a second if the client is slow to read it, so that a reader that stalls cannot
/// keep other streams from catching up.
async fn write_reply<S: AsyncWrite + Unpin, T>(
    stream: &mut S,
    out: &[u8],
    mut slot: Option<T>,
) -> std::io::Result<()> {
    const HOLD: std::time::Duration = std::time::Duration::from_secs(1);
    let until = tokio::time::Instant::now() + HOLD;
    let mut pos = 0;
    while pos < out.len() {
        // `write` is cancel-safe: a timed-out call wrote nothing (tokio-rustls returns
        // as soon as it has taken any of the bytes).
        let r = if slot.is_some() {
            match tokio::time::timeout_at(until, stream.write(&out[pos..])).await {
                Ok(r) => r,
                Err(_) => {
                    slot = None;
                    continue;
                }
            }
        } else {
            stream.write(&out[pos..]).await
        };
        match r? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => pos += n,
        }
    }
    // TLS may hold the tail of the reply in its buffer (a plain socket's flush is free).
    if slot.is_some() {
        if let Ok(r) = tokio::time::timeout_at(until, stream.flush()).await {
            return r;
        }
        drop(slot);
    }
    stream.flush().await
}

/// OP_QUERY: only commands on `<db>.$cmd` (the first handshake of older clients).
async fn legacy_query(
    ctx: &Arc<ServerCtx>,
    conn: &mut commands::ConnInfo,
    q: wire::OpQuery,
) -> commands::Reply {
    let Some(db) = q.full_collection_name.strip_suffix(".$cmd") else {
        return commands::Reply::error(errors::MongoError::new(
            errors::ErrorCode::UnsupportedFormat,
            "OP_QUERY is no longer supported except for commands on $cmd",
        ));
    };
    let mut cmd = match q.query.get("$query").or_else(|| q.query.get("query")) {
        Some(Bson::Document(inner)) => inner.clone(),
        _ => q.query.clone(),
    };
    cmd.insert("$db", db);
    commands::handle(ctx, conn, cmd).await
}
