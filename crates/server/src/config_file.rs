//! `eddy --config FILE` (`-f FILE`): a YAML file in mongod.conf's shape.
//!
//! The file is read into typed sections that refuse any key they do not know (the error
//! names the key, the keys allowed there and the line), then turned into the command-line
//! flags it stands for. Those go before the flags actually given, and every flag overrides
//! an earlier one, so a flag on the command line overrides the file.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct File {
    net: Option<Net>,
    storage: Option<Storage>,
    replication: Option<Replication>,
    security: Option<Security>,
    set_parameter: Option<BTreeMap<String, serde_norway::Value>>,
    system_log: Option<SystemLog>,
    operation_profiling: Option<Profiling>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Net {
    port: Option<u16>,
    bind_ip: Option<String>,
    max_incoming_connections: Option<u64>,
    tls: Option<Tls>,
    http: Option<Http>,
}

/// Eddy's HTTP listener (mongod's `net.http` is long gone; the shape is Eddy's).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Http {
    port: Option<u16>,
    cors_origins: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Tls {
    mode: Option<TlsMode>,
    certificate_key_file: Option<PathBuf>,
    #[serde(rename = "CAFile")]
    ca_file: Option<PathBuf>,
    allow_connections_without_certificates: Option<bool>,
}

#[derive(Deserialize, Clone, Copy)]
enum TlsMode {
    #[serde(rename = "disabled")]
    Disabled,
    #[serde(rename = "allowTLS")]
    Allow,
    #[serde(rename = "preferTLS")]
    Prefer,
    #[serde(rename = "requireTLS")]
    Require,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Storage {
    db_path: Option<PathBuf>,
    sync_period_secs: Option<f64>,
    oplog_min_retention_hours: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Replication {
    repl_set_name: Option<String>,
    #[serde(rename = "oplogSizeMB")]
    oplog_size_mb: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Security {
    authorization: Option<Authorization>,
    key_file: Option<PathBuf>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Authorization {
    Enabled,
    Disabled,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SystemLog {
    destination: Option<Destination>,
    path: Option<PathBuf>,
    log_append: Option<bool>,
    quiet: Option<bool>,
    verbosity: Option<i32>,
}

/// Only `file`: without `systemLog.destination` the log goes to standard error, as
/// mongod's does; `syslog` is refused by the enum.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Destination {
    File,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Profiling {
    slow_op_threshold_ms: Option<i64>,
    slow_op_sample_rate: Option<f64>,
}

/// The `--config`/`-f` path among the arguments, if any.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--config" || s == "-f" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
        if let Some(p) = s
            .strip_prefix("-f")
            .filter(|p| !p.is_empty() && !s.starts_with("--"))
        {
            return Some(PathBuf::from(p.strip_prefix('=').unwrap_or(p)));
        }
    }
    None
}

/// The process's arguments with those a `--config` file stands for inserted after the
/// program name, or the arguments as they are without one.
///
/// # Errors
/// The file cannot be read, is not YAML, holds an unknown key or a value of the wrong
/// kind: the message names the file, the key and the line.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>, String> {
    let Some(path) = config_path(&args) else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
    let flags = flags(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::with_capacity(args.len() + flags.len());
    let mut args = args.into_iter();
    out.extend(args.next());
    out.extend(flags.into_iter().map(OsString::from));
    out.extend(args);
    Ok(out)
}

/// The command-line flags a config file's text stands for.
///
/// # Errors
/// Not YAML, an unknown key, or a value of the wrong kind, with its line.
pub fn flags(text: &str) -> Result<Vec<String>, String> {
    // An empty file (or one of comments only) is an empty configuration.
    let file: File = if text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    }) {
        File::default()
    } else {
        serde_norway::from_str(text).map_err(|e| with_line(text, &e.to_string()))?
    };
    let mut out = Vec::new();
    let mut flag = |name: &str, value: Option<String>| {
        out.push(match value {
            Some(v) => format!("--{name}={v}"),
            None => format!("--{name}"),
        });
    };
    if let Some(net) = file.net {
        if let Some(p) = net.port {
            flag("port", Some(p.to_string()));
        }
        if let Some(ip) = net.bind_ip {
            flag("bind_ip", Some(ip));
        }
        if let Some(n) = net.max_incoming_connections {
            flag("maxConns", Some(n.to_string()));
        }
        if let Some(http) = net.http {
            if let Some(p) = http.port {
                flag("httpPort", Some(p.to_string()));
            }
            for o in http.cors_origins.unwrap_or_default() {
                flag("httpCorsOrigin", Some(o));
            }
        }
        if let Some(tls) = net.tls {
            if let Some(mode) = tls.mode {
                let name = match mode {
                    TlsMode::Disabled => "disabled",
                    TlsMode::Allow => "allowTLS",
                    TlsMode::Prefer => "preferTLS",
                    TlsMode::Require => "requireTLS",
                };
                flag("tlsMode", Some(name.into()));
            }
            if let Some(f) = tls.certificate_key_file {
                flag("tlsCertificateKeyFile", Some(path_arg(&f)));
            }
            if let Some(f) = tls.ca_file {
                flag("tlsCAFile", Some(path_arg(&f)));
            }
            if tls.allow_connections_without_certificates == Some(true) {
                flag("tlsAllowConnectionsWithoutCertificates", None);
            }
        }
    }
    if let Some(st) = file.storage {
        if let Some(p) = st.db_path {
            flag("dbpath", Some(path_arg(&p)));
        }
        if let Some(s) = st.sync_period_secs {
            flag("syncdelay", Some(s.to_string()));
        }
        if let Some(h) = st.oplog_min_retention_hours {
            flag("oplogMinRetentionHours", Some(h.to_string()));
        }
    }
    if let Some(r) = file.replication {
        if let Some(name) = r.repl_set_name {
            flag("replSet", Some(name));
        }
        if let Some(mb) = r.oplog_size_mb {
            flag("oplogSize", Some(mb.to_string()));
        }
    }
    if let Some(sec) = file.security {
        if sec.authorization == Some(Authorization::Enabled) {
            flag("auth", None);
        }
        if let Some(k) = sec.key_file {
            flag("keyFile", Some(path_arg(&k)));
        }
    }
    if let Some(log) = file.system_log {
        match (log.destination, log.path) {
            (Some(Destination::File), Some(p)) => flag("logpath", Some(path_arg(&p))),
            (Some(Destination::File), None) => {
                return Err("systemLog.destination 'file' needs systemLog.path".into());
            }
            (None, Some(_)) => {
                return Err("systemLog.path needs systemLog.destination: file".into());
            }
            (None, None) => {}
        }
        if log.log_append == Some(true) {
            flag("logappend", None);
        }
        if log.quiet == Some(true) {
            flag("quiet", None);
        }
        if let Some(v) = log.verbosity {
            flag("setParameter", Some(format!("logLevel={v}")));
        }
    }
    if let Some(p) = file.operation_profiling {
        if let Some(ms) = p.slow_op_threshold_ms {
            flag("slowms", Some(ms.to_string()));
        }
        if let Some(r) = p.slow_op_sample_rate {
            flag("slowOpSampleRate", Some(r.to_string()));
        }
    }
    for (name, value) in file.set_parameter.unwrap_or_default() {
        let v = match value {
            serde_norway::Value::Bool(b) => b.to_string(),
            serde_norway::Value::Number(n) => n.to_string(),
            serde_norway::Value::String(s) => s,
            other @ serde_norway::Value::Mapping(_) => {
                serde_json::to_string(&other).map_err(|e| format!("setParameter.{name}: {e}"))?
            }
            _ => {
                return Err(format!(
                    "setParameter.{name}: expected a scalar or a mapping"
                ));
            }
        };
        flag("setParameter", Some(format!("{name}={v}")));
    }
    Ok(out)
}

/// The parser's message, with the line of the unknown key when the parser gave none (it
/// gives none for the top level).
fn with_line(text: &str, msg: &str) -> String {
    if msg.contains(" line ") {
        return msg.to_string();
    }
    let key = msg
        .split_once("unknown field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(k, _)| k);
    let line = key.and_then(|k| {
        text.lines().position(|l| {
            let l = l.trim_start();
            l.strip_prefix(k)
                .is_some_and(|r| r.trim_start().starts_with(':'))
        })
    });
    match line {
        Some(n) => format!("{msg} at line {}", n + 1),
        None => msg.to_string(),
    }
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_becomes_its_flag() {
        let text = "\
net:
  port: 27999
  bindIp: 127.0.0.1,10.0.0.1
  maxIncomingConnections: 500
  http:
    port: 8080
    corsOrigins: ['http://a.example', '*']
  tls:
    mode: requireTLS
    certificateKeyFile: /etc/eddy/server.pem
    CAFile: /etc/eddy/ca.pem
    allowConnectionsWithoutCertificates: true
storage:
  dbPath: /var/lib/eddy
  syncPeriodSecs: 30
  oplogMinRetentionHours: 1.5
replication:
  replSetName: rs9
  oplogSizeMB: 2048
security:
  authorization: enabled
  keyFile: /etc/eddy/key
systemLog:
  destination: file
  path: /var/log/eddy.log
  logAppend: true
  quiet: true
  verbosity: 2
operationProfiling:
  slowOpThresholdMs: 250
  slowOpSampleRate: 0.5
setParameter:
  enableTestCommands: 1
  ttlMonitorSleepSecs: 5
  logComponentVerbosity: {command: {verbosity: 1}}
";
        assert_eq!(
            flags(text).unwrap(),
            [
                "--port=27999",
                "--bind_ip=127.0.0.1,10.0.0.1",
                "--maxConns=500",
                "--httpPort=8080",
                "--httpCorsOrigin=http://a.example",
                "--httpCorsOrigin=*",
                "--tlsMode=requireTLS",
                "--tlsCertificateKeyFile=/etc/eddy/server.pem",
                "--tlsCAFile=/etc/eddy/ca.pem",
                "--tlsAllowConnectionsWithoutCertificates",
                "--dbpath=/var/lib/eddy",
                "--syncdelay=30",
                "--oplogMinRetentionHours=1.5",
                "--replSet=rs9",
                "--oplogSize=2048",
                "--auth",
                "--keyFile=/etc/eddy/key",
                "--logpath=/var/log/eddy.log",
                "--logappend",
                "--quiet",
                "--setParameter=logLevel=2",
                "--slowms=250",
                "--slowOpSampleRate=0.5",
                "--setParameter=enableTestCommands=1",
                "--setParameter=logComponentVerbosity={\"command\":{\"verbosity\":1}}",
                "--setParameter=ttlMonitorSleepSecs=5",
            ]
        );
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let e = flags("net:\n  port: 1\n  prot: 2\n").unwrap_err();
        assert!(e.contains("prot") && e.contains("line 3"), "{e}");
        let e = flags("storage:\n  dbPath: /x\nsharding:\n  clusterRole: shardsvr\n").unwrap_err();
        assert!(e.contains("sharding") && e.contains("line 3"), "{e}");
        let e = flags("security:\n  authorization: maybe\n").unwrap_err();
        assert!(e.contains("maybe") && e.contains("line 2"), "{e}");
        let e = flags("net:\n  port: seventy\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = flags("net:\n  port: 1\nsharding: {}\n").unwrap_err();
        assert!(e.contains("sharding") && e.contains("line 3"), "{e}");
        let e = flags("systemLog:\n  destination: syslog\n").unwrap_err();
        assert!(e.contains("syslog"), "{e}");
        assert!(flags("systemLog:\n  destination: file\n").is_err());
        assert!(flags("net: [1, 2]\n").is_err());
    }

    #[test]
    fn empty_and_disabled_say_nothing() {
        assert!(flags("").unwrap().is_empty());
        assert!(flags("# nothing\n").unwrap().is_empty());
        assert!(
            flags("security:\n  authorization: disabled\n")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn config_path_forms() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            config_path(&a(&["eddy", "--config", "x.yaml"])),
            Some("x.yaml".into())
        );
        assert_eq!(
            config_path(&a(&["eddy", "--port", "1", "-f", "y.yaml"])),
            Some("y.yaml".into())
        );
        assert_eq!(
            config_path(&a(&["eddy", "--config=z.yaml"])),
            Some("z.yaml".into())
        );
        assert_eq!(
            config_path(&a(&["eddy", "-fw.yaml"])),
            Some("w.yaml".into())
        );
        assert_eq!(config_path(&a(&["eddy", "--port", "1"])), None);
    }
}
