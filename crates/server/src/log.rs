//! The process's log: human-readable lines on stderr, and the same events as mongod JSON
//! lines in the `getLog` ring ([`commands::logs`]). One reloadable filter decides what is
//! logged; `setParameter logLevel` / `logComponentVerbosity` rebuild it.
//!
//! mongod's components map onto Eddy's crates: `command` is `commands`, `storage` is
//! `storage`, `network` is `server` and `wire`, `query` is `exec`, `query` and
//! `changestream`. Verbosity 0 logs info, 1 debug, 2 and above trace.

use std::fmt::Write as _;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, reload};

/// Eddy's crates (tracing targets) under each mongod component.
const COMPONENT_TARGETS: &[(&str, &[&str])] = &[
    ("command", &["commands"]),
    ("storage", &["storage"]),
    ("network", &["server", "wire"]),
    ("query", &["exec", "query", "changestream"]),
    ("control", &["eddy"]),
];

/// How log lines are written: mongod's JSON lines (one object per line: `t`, `s`, `c`,
/// `id`, `ctx`, `msg`, `attr`), or human-readable text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
}

impl Format {
    /// `--logFormat`: `json`, `text`, or `auto` (text on a terminal, JSON otherwise).
    pub fn parse(s: &str, tty: bool) -> Option<Format> {
        match s {
            "json" => Some(Format::Json),
            "text" => Some(Format::Text),
            "auto" => Some(if tty { Format::Text } else { Format::Json }),
            _ => None,
        }
    }
}

/// Installs the process's subscriber, writing to stderr. `EDDY_LOG` (an `EnvFilter`
/// directive string) overrides the base level; `quiet` lowers it to warnings.
pub fn init(quiet: bool, format: Format) {
    init_to(quiet, format, None);
}

/// A log file that `logRotate` renames aside and reopens.
#[derive(Clone)]
struct LogFile {
    path: std::path::PathBuf,
    file: std::sync::Arc<Mutex<std::fs::File>>,
}

impl LogFile {
    fn open(path: &std::path::Path, append: bool) -> std::io::Result<LogFile> {
        if !append && path.exists() {
            std::fs::rename(path, rotated_name(path))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(LogFile {
            path: path.to_path_buf(),
            file: std::sync::Arc::new(Mutex::new(file)),
        })
    }

    /// Renames the file to `<path>.<UTC timestamp>` and writes to a new one.
    fn rotate(&self) -> std::io::Result<()> {
        let mut f = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::fs::rename(&self.path, rotated_name(&self.path))?;
        *f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        Ok(())
    }
}

/// `<path>.YYYY-MM-DDTHH-MM-SS`, mongod's rotated name, with a counter if taken.
fn rotated_name(path: &std::path::Path) -> std::path::PathBuf {
    let now = bson::DateTime::now()
        .try_to_rfc3339_string()
        .unwrap_or_default();
    let stamp: String = now
        .chars()
        .take(19)
        .map(|c| if c == ':' { '-' } else { c })
        .collect();
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{stamp}"));
    let mut out = std::path::PathBuf::from(&name);
    let mut n = 1;
    while out.exists() {
        let mut alt = name.clone();
        alt.push(format!(".{n}"));
        out = alt.into();
        n += 1;
    }
    out
}

impl std::io::Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .flush()
    }
}

/// [`init`], writing the human-readable lines to `logpath` (appended to with `append`,
/// else the old file is renamed aside) instead of stderr; `logRotate` rotates it.
///
/// # Errors
/// The log file cannot be opened.
pub fn init_file(
    quiet: bool,
    format: Format,
    logpath: &std::path::Path,
    append: bool,
) -> std::io::Result<()> {
    let f = LogFile::open(logpath, append)?;
    init_to(quiet, format, Some(f));
    Ok(())
}

fn init_to(quiet: bool, format: Format, file: Option<LogFile>) {
    let base = std::env::var("EDDY_LOG")
        .ok()
        .filter(|s| EnvFilter::try_new(s).is_ok())
        .unwrap_or_else(|| if quiet { "warn" } else { "info" }.to_string());
    let (filter, handle) = reload::Layer::new(EnvFilter::new(&base));
    let text = format == Format::Text;
    let (to_stderr, to_file) = match &file {
        _ if !text => (None, None),
        Some(f) => {
            let f = f.clone();
            (
                None,
                Some(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(false)
                        .with_writer(move || f.clone()),
                ),
            )
        }
        None => (
            Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)),
            None,
        ),
    };
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(to_stderr)
        .with(to_file)
        .with(JsonLayer {
            out: match (text, &file) {
                (true, _) => JsonOut::RingOnly,
                (false, Some(f)) => JsonOut::File(f.clone()),
                (false, None) => JsonOut::Stderr,
            },
        });
    if registry.try_init().is_err() {
        return;
    }
    if let Some(f) = file {
        commands::logs::set_rotate_hook(Box::new(move || f.rotate().map_err(|e| e.to_string())));
    }
    let handle = Mutex::new(handle);
    commands::logs::set_filter_hook(Box::new(move |default, components| {
        let directives = directives(&base, default, components);
        if let Ok(f) = EnvFilter::try_new(&directives) {
            let _ = handle.lock().map(|h| h.reload(f));
        }
    }));
}

fn level_name(verbosity: i32) -> &'static str {
    match verbosity {
        i32::MIN..=0 => "info",
        1 => "debug",
        _ => "trace",
    }
}

/// The filter for a default verbosity and each component's (-1 inherits).
fn directives(base: &str, default: i32, components: &[(&'static str, i32)]) -> String {
    let mut out = if default > 0 {
        level_name(default).to_string()
    } else {
        base.to_string()
    };
    for (component, verbosity) in components {
        if *verbosity < 0 {
            continue;
        }
        let Some((_, targets)) = COMPONENT_TARGETS.iter().find(|(c, _)| c == component) else {
            continue;
        };
        for t in *targets {
            let _ = write!(out, ",{t}={}", level_name(*verbosity));
        }
    }
    out
}

/// mongod's component name for a tracing target.
fn component(target: &str) -> &'static str {
    let krate = target.split("::").next().unwrap_or(target);
    for (c, targets) in COMPONENT_TARGETS {
        if targets.contains(&krate) {
            return match *c {
                "command" => "COMMAND",
                "storage" => "STORAGE",
                "network" => "NETWORK",
                "query" => "QUERY",
                _ => "CONTROL",
            };
        }
    }
    "-"
}

/// Formats events as mongod's JSON log lines for the `getLog` ring and, with
/// `--logFormat json`, for the log itself.
struct JsonLayer {
    out: JsonOut,
}

enum JsonOut {
    RingOnly,
    Stderr,
    File(LogFile),
}

impl<S: Subscriber> Layer<S> for JsonLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut v = Fields::default();
        event.record(&mut v);
        let severity = match *meta.level() {
            Level::ERROR => "E",
            Level::WARN => "W",
            Level::INFO => "I",
            Level::DEBUG => "D1",
            Level::TRACE => "D2",
        };
        let t = bson::DateTime::now()
            .try_to_rfc3339_string()
            .unwrap_or_default()
            .replace('Z', "+00:00");
        let ctx = v
            .ctx
            .take()
            .unwrap_or_else(|| std::thread::current().name().unwrap_or("main").to_string());
        let mut line = format!(
            "{{\"t\":{{\"$date\":{}}},\"s\":\"{severity}\",\"c\":\"{}\",\"id\":{},\"ctx\":{},\"msg\":{}",
            json_str(&t),
            component(meta.target()),
            v.id,
            json_str(&ctx),
            json_str(&v.message),
        );
        match (v.attr.take(), v.rest.is_empty()) {
            (Some(attr), _) => {
                let _ = write!(line, ",\"attr\":{attr}");
            }
            (None, false) => {
                let _ = write!(line, ",\"attr\":{{{}}}", v.rest.join(","));
            }
            (None, true) => {}
        }
        line.push('}');
        match &self.out {
            JsonOut::RingOnly => {}
            JsonOut::Stderr => {
                use std::io::Write as _;
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
            JsonOut::File(f) => {
                use std::io::Write as _;
                let mut f = f.clone();
                let _ = f.write_all(format!("{line}\n").as_bytes());
            }
        }
        commands::logs::push(line);
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// An event's fields: `id` (mongod's log id), `ctx` (the connection), `attr` (a ready JSON
/// object), the message, and any other fields as attributes.
#[derive(Default)]
struct Fields {
    id: u64,
    ctx: Option<String>,
    attr: Option<String>,
    message: String,
    rest: Vec<String>,
}

impl Fields {
    fn attr(&mut self, name: &str, json: String) {
        self.rest.push(format!("{}:{json}", json_str(name)));
    }
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "id" {
            self.id = value;
        } else {
            self.attr(field.name(), value.to_string());
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        match (field.name(), u64::try_from(value)) {
            ("id", Ok(v)) => self.id = v,
            (name, _) => self.attr(name, value.to_string()),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.attr(field.name(), value.to_string());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_text(field.name(), value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_text(field.name(), format!("{value:?}"));
    }
}

impl Fields {
    fn record_text(&mut self, name: &str, text: String) {
        match name {
            "message" => self.message = text,
            "ctx" => self.ctx = Some(text),
            // Only Eddy's own code sets `attr`, to a JSON object it built.
            "attr" if text.starts_with('{') => self.attr = Some(text),
            _ => self.attr(name, json_str(&text)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_follow_verbosity() {
        assert_eq!(directives("info", 0, &[("command", -1)]), "info");
        assert_eq!(directives("info", 1, &[]), "debug");
        assert_eq!(
            directives("warn", 0, &[("command", 2), ("storage", 0)]),
            "warn,commands=trace,storage=info"
        );
        assert_eq!(
            directives("info", 0, &[("query", 1)]),
            "info,exec=debug,query=debug,changestream=debug"
        );
    }

    #[test]
    fn components_of_targets() {
        assert_eq!(component("commands::crud"), "COMMAND");
        assert_eq!(component("storage::wal::writer"), "STORAGE");
        assert_eq!(component("server"), "NETWORK");
        assert_eq!(component("redb"), "-");
    }
}
