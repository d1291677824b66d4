//! `eddy`: a MongoDB-wire database server whose centrepiece is change streams.

use std::path::PathBuf;
use std::process::ExitCode;

use bson::Document;
use clap::{Parser, Subcommand};

/// mimalloc: a third less CPU than glibc's malloc on the write path (whose profile was a
/// quarter malloc/free), and freed memory goes back to the system after a burst.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Command-line flags, with mongod's names so that habits carry over.
#[derive(Parser, Debug)]
#[command(
    name = "eddy",
    version,
    about = "A MongoDB-wire database server built around change streams",
    args_override_self = true
)]
struct Cli {
    /// A YAML configuration file in mongod.conf's shape (net.port, net.bindIp,
    /// net.maxIncomingConnections, net.tls.*, storage.dbPath, storage.syncPeriodSecs,
    /// storage.oplogMinRetentionHours, replication.replSetName, replication.oplogSizeMB,
    /// security.authorization, security.keyFile, systemLog.*, operationProfiling.*,
    /// setParameter). Flags given on the command line override it.
    #[arg(short = 'f', long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Port to listen on.
    #[arg(long, default_value_t = 27017)]
    port: u16,
    /// Comma-separated addresses to bind.
    #[arg(long = "bind_ip", default_value = "127.0.0.1")]
    bind_ip: String,
    /// host:port to advertise to drivers in hello (default: localhost:<port> on loopback,
    /// else the machine's host name).
    #[arg(long)]
    advertise: Option<String>,
    /// Data directory (created if missing).
    #[arg(long, default_value = "./eddy-data")]
    dbpath: PathBuf,
    /// Run as a member of this replica set (initiate it with `replSetInitiate`). Without
    /// it the server is a single-node set named `rs0`.
    #[arg(long = "replSet")]
    repl_set: Option<String>,
    /// Oplog size bound, in megabytes.
    #[arg(long = "oplogSize", default_value_t = 1024)]
    oplog_size: u64,
    /// Minimum hours of oplog to keep regardless of size.
    #[arg(long = "oplogMinRetentionHours")]
    oplog_min_retention_hours: Option<f64>,
    /// Seconds between checkpoints of the tables (the log makes every write durable at
    /// once; a checkpoint bounds how much of it a restart replays).
    #[arg(long = "syncdelay", default_value_t = 5.0)]
    syncdelay: f64,
    /// Megabytes of log after which a checkpoint is taken before `--syncdelay` is up.
    #[arg(long = "checkpointSizeMB", default_value_t = 256)]
    checkpoint_size_mb: u64,
    /// Server parameter as name=value (repeatable), e.g. enableTestCommands=1.
    #[arg(long = "setParameter", value_name = "NAME=VALUE")]
    set_parameter: Vec<String>,
    /// Access control: every command but the handshake needs an authenticated user with
    /// the right privileges (create the first user on `admin` from localhost).
    #[arg(long)]
    auth: bool,
    /// Key file replica set members authenticate to each other with (as `__system`):
    /// 6 to 1024 base64 characters, readable by its owner only. Implies --auth.
    #[arg(long = "keyFile")]
    key_file: Option<PathBuf>,
    /// TLS: disabled, allowTLS or preferTLS (TLS and plain clients on one port), or
    /// requireTLS.
    #[arg(long = "tlsMode", default_value = "disabled", value_parser = parse_tls_mode)]
    tls_mode: server::TlsMode,
    /// PEM file with the server's certificate (chain) and private key.
    #[arg(long = "tlsCertificateKeyFile")]
    tls_certificate_key_file: Option<PathBuf>,
    /// PEM file with the CA(s) that sign client certificates; clients must then present
    /// one, unless --tlsAllowConnectionsWithoutCertificates.
    #[arg(long = "tlsCAFile")]
    tls_ca_file: Option<PathBuf>,
    /// With --tlsCAFile: let clients without a certificate in.
    #[arg(long = "tlsAllowConnectionsWithoutCertificates")]
    tls_allow_connections_without_certificates: bool,
    /// Most connections open at once; any over it is closed as soon as it is accepted.
    #[arg(long = "maxConns", default_value_t = server::DEFAULT_MAX_CONNS)]
    max_conns: u64,
    /// Seconds a connection may sit idle after sending part of a message (or in its TLS
    /// handshake) before it is closed.
    #[arg(long = "partialMessageTimeoutSecs", default_value_t = 30.0)]
    partial_message_timeout_secs: f64,
    /// Serve HTTP on this port (same addresses as --bind_ip): Prometheus metrics at
    /// /metrics, change streams as Server-Sent Events at /v1/watch[/<db>[/<coll>]].
    #[arg(long = "httpPort", value_name = "PORT")]
    http_port: Option<u16>,
    /// An origin (e.g. https://app.example.com, or *) whose pages may read the HTTP
    /// listener's answers (CORS); repeatable.
    #[arg(long = "httpCorsOrigin", value_name = "ORIGIN")]
    http_cors_origin: Vec<String>,
    /// Log only warnings and errors.
    #[arg(long)]
    quiet: bool,
    /// Log line format: json (mongod's structured lines: t, s, c, id, ctx, msg, attr),
    /// text, or auto (text on a terminal, json otherwise).
    #[arg(long = "logFormat", default_value = "auto", value_parser = ["auto", "json", "text"])]
    log_format: String,
    /// Operations that take longer than this many milliseconds are logged ("Slow query")
    /// and, at profiling level 1, profiled.
    #[arg(long, default_value_t = 100)]
    slowms: i64,
    /// The fraction of slow operations logged or profiled (0 to 1).
    #[arg(long = "slowOpSampleRate", default_value_t = 1.0)]
    slow_op_sample_rate: f64,
    /// Write the log to this file instead of standard error (`logRotate` rotates it).
    #[arg(long)]
    logpath: Option<std::path::PathBuf>,
    /// Append to the `--logpath` file rather than renaming the old one aside.
    #[arg(long)]
    logappend: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Tools for the write-ahead log.
    #[command(subcommand)]
    Log(LogCommand),
    /// Tails a change stream: one event per line, as canonical Extended JSON or a
    /// compact coloured view on a terminal; with --state, a restart resumes exactly.
    #[cfg(feature = "watch")]
    Watch(watch::Args),
}

#[derive(Subcommand, Debug)]
enum LogCommand {
    /// Prints the log's segments, their sizes, lsn and clusterTime ranges.
    Inspect {
        /// Data directory.
        #[arg(long, default_value = "./eddy-data")]
        dbpath: PathBuf,
    },
    /// Checks every frame's CRCs, lsn continuity and the checkpoint's continuity with the
    /// log; exits non-zero on damage.
    Verify {
        /// Data directory.
        #[arg(long, default_value = "./eddy-data")]
        dbpath: PathBuf,
    },
}

fn parse_tls_mode(s: &str) -> Result<server::TlsMode, String> {
    server::TlsMode::parse(s)
        .ok_or_else(|| "expected disabled, allowTLS, preferTLS or requireTLS".to_string())
}

/// Runs `eddy log ...`.
fn log_tool(cmd: &LogCommand) -> ExitCode {
    let r = match cmd {
        LogCommand::Inspect { dbpath } => {
            storage::wal::report::inspect(dbpath).map(|out| (out, true))
        }
        LogCommand::Verify { dbpath } => storage::wal::report::verify(dbpath),
    };
    match r {
        Ok((out, ok)) => {
            print!("{out}");
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("eddy: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let args = match server::config_file::expand(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("eddy: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
    match cli.command {
        Some(Command::Log(cmd)) => return log_tool(&cmd),
        #[cfg(feature = "watch")]
        Some(Command::Watch(args)) => {
            return match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(watch::main(args)),
                Err(e) => {
                    eprintln!("eddy: cannot start the runtime: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        None => {}
    }
    let mut params = Document::new();
    for p in &cli.set_parameter {
        match server::parse_parameter(p) {
            Some((k, _)) if !commands::is_parameter(&k) => {
                eprintln!("eddy: unknown --setParameter '{k}'");
                return ExitCode::from(2);
            }
            Some((k, v)) => {
                params.insert(k, v);
            }
            None => {
                eprintln!("eddy: --setParameter expects name=value, got '{p}'");
                return ExitCode::from(2);
            }
        }
    }
    if !(0.0..=1.0).contains(&cli.slow_op_sample_rate) {
        eprintln!("eddy: --slowOpSampleRate must be between 0 and 1");
        return ExitCode::from(2);
    }
    let log_to = match &cli.logpath {
        Some(_) => false,
        None => std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let format =
        server::log::Format::parse(&cli.log_format, log_to).unwrap_or(server::log::Format::Text);
    match &cli.logpath {
        Some(p) => {
            if let Err(e) = server::log::init_file(cli.quiet, format, p, cli.logappend) {
                eprintln!("cannot open the log file {}: {e}", p.display());
                std::process::exit(1);
            }
        }
        None => server::log::init(cli.quiet, format),
    }
    commands::logs::set_slow_settings(cli.slowms, cli.slow_op_sample_rate);
    // The log keeps its own verbosity: apply it rather than store it with the others.
    for name in ["logLevel", "logComponentVerbosity"] {
        let Some(v) = params.remove(name) else {
            continue;
        };
        let v = match v {
            bson::Bson::String(s) => match serde_json::from_str::<serde_json::Value>(&s)
                .ok()
                .and_then(|j| bson::Bson::try_from(j).ok())
            {
                Some(b) => b,
                None => bson::Bson::String(s),
            },
            v => v,
        };
        let r = if name == "logLevel" {
            commands::logs::set_log_level(&v)
        } else {
            commands::logs::set_component_verbosity(&v)
        };
        if let Err(e) = r {
            eprintln!("eddy: --setParameter {name}: {}", e.message);
            return ExitCode::from(2);
        }
    }
    let cfg = server::Config {
        bind_ip: cli
            .bind_ip
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        port: cli.port,
        advertise: cli.advertise,
        dbpath: cli.dbpath,
        replicated: cli.repl_set.is_some(),
        repl_set: cli.repl_set.unwrap_or_else(|| "rs0".into()),
        oplog_size_mb: cli.oplog_size,
        oplog_min_retention_hours: cli.oplog_min_retention_hours,
        syncdelay_secs: cli.syncdelay,
        checkpoint_size_mb: cli.checkpoint_size_mb,
        parameters: params,
        argv: std::env::args().collect(),
        config_file: cli.config,
        http_port: cli.http_port,
        http_cors_origins: cli.http_cors_origin,
        http_heartbeat: std::time::Duration::from_secs(5),
        auth: cli.auth,
        key_file: cli.key_file,
        tls: server::TlsConfig {
            mode: cli.tls_mode,
            certificate_key_file: cli.tls_certificate_key_file,
            ca_file: cli.tls_ca_file,
            allow_connections_without_certificates: cli.tls_allow_connections_without_certificates,
        },
        max_conns: cli.max_conns.max(1),
        partial_message_timeout: std::time::Duration::from_secs_f64(
            cli.partial_message_timeout_secs.clamp(0.01, 86_400.0),
        ),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("eddy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let running = match server::start(cfg).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("eddy: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("eddy: cannot install SIGTERM handler: {e}");
                    return ExitCode::FAILURE;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            () = running.stopped() => {}
        }
        running.shutdown();
        tracing::info!("eddy stopped");
        ExitCode::SUCCESS
    })
}
