//! Figures for operators: the Prometheus registry the HTTP listener's `/metrics` serves,
//! and the same figures under mongod's names in `serverStatus` (`opLatencies`,
//! `metrics.commands`, `mem`) plus Eddy's own (`eddy.log`, `eddy.changeStreams`, ...).
//!
//! Counters and histograms that change as work is done live in statics (commands here,
//! commit groups and the log in [`storage::metrics`]); what is read from the server's
//! state at scrape time (connections, the oplog window, streams and their lag, cursors,
//! pre-images, memory) comes from a [`Collector`] over the [`ServerCtx`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use bson::{Document, doc};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::ServerCtx;

/// How many of the most lagging change streams get their own series.
pub const TOP_LAGGING_STREAMS: usize = 10;

type Labels = Vec<(&'static str, String)>;

fn latency_histogram() -> Histogram {
    // 10 µs to about 84 s.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 24))
}

/// The command figures.
pub struct CommandMetrics {
    /// Seconds per command, by command name (`unknown` for names no command has, so
    /// clients cannot grow the label set).
    pub latency: Family<Labels, Histogram, fn() -> Histogram>,
    /// Commands that failed, by name.
    pub failed: Family<Labels, Counter>,
    /// Change events returned to streams (first batches and getMores).
    pub change_events: Counter,
    /// Events sent to Server-Sent Events clients, and those connected now.
    pub sse_events: Counter,
    pub sse_clients: prometheus_client::metrics::gauge::Gauge,
    /// `serverStatus.opLatencies`: microseconds and operations for reads, writes and
    /// other commands.
    op_latencies: [(AtomicU64, AtomicU64); 3],
    /// `serverStatus.metrics.commands`: total and failed, by name.
    by_name: Mutex<BTreeMap<String, (u64, u64)>>,
}

/// The process's command figures.
pub static METRICS: LazyLock<CommandMetrics> = LazyLock::new(|| CommandMetrics {
    latency: Family::new_with_constructor(latency_histogram),
    failed: Family::default(),
    change_events: Counter::default(),
    sse_events: Counter::default(),
    sse_clients: Default::default(),
    op_latencies: Default::default(),
    by_name: Mutex::new(BTreeMap::new()),
});

/// mongod's `opLatencies` class of a command: 0 reads, 1 writes, 2 commands.
fn class(name: &str) -> usize {
    match name {
        "find" | "aggregate" | "count" | "distinct" | "getMore" => 0,
        "insert" | "update" | "delete" | "findAndModify" | "bulkWrite" => 1,
        _ => 2,
    }
}

/// Records a finished command.
pub fn command_done(name: &str, reply: &Document, took: Duration) {
    let m = &*METRICS;
    let code = reply.get_i32("code").ok();
    let ok = reply.get_f64("ok") == Ok(1.0);
    let label = if code == Some(errors::ErrorCode::CommandNotFound as i32) {
        "unknown".to_string()
    } else {
        name.to_string()
    };
    let labels = vec![("command", label.clone())];
    m.latency.get_or_create(&labels).observe(took.as_secs_f64());
    if !ok {
        m.failed.get_or_create(&labels).inc();
    }
    let (micros, ops) = &m.op_latencies[class(name)];
    micros.fetch_add(
        u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
    ops.fetch_add(1, Ordering::Relaxed);
    let mut by = m
        .by_name
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let e = by.entry(label).or_default();
    e.0 += 1;
    if !ok {
        e.1 += 1;
    }
}

/// The resident set size, from `/proc/self/statm` (0 where there is none).
pub fn resident_bytes() -> u64 {
    statm(1)
}

/// The virtual size, from `/proc/self/statm`.
pub fn virtual_bytes() -> u64 {
    statm(0)
}

fn statm(field: usize) -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(field)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// `serverStatus`'s `opLatencies`, `metrics.commands`, `mem` and `eddy` sections.
pub fn server_status_fields(ctx: &ServerCtx, out: &mut Document) {
    let m = &*METRICS;
    let lat = |i: usize| {
        let (micros, ops) = &m.op_latencies[i];
        doc! {
            "latency": micros.load(Ordering::Relaxed) as i64,
            "ops": ops.load(Ordering::Relaxed) as i64,
        }
    };
    out.insert(
        "opLatencies",
        doc! {
            "reads": lat(0),
            "writes": lat(1),
            "commands": lat(2),
            "transactions": {"latency": 0i64, "ops": 0i64},
        },
    );
    let mut commands = Document::new();
    for (name, (total, failed)) in m
        .by_name
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
    {
        commands.insert(
            name.clone(),
            doc! {"total": *total as i64, "failed": *failed as i64},
        );
    }
    if let Ok(metrics) = out.get_document_mut("metrics") {
        metrics.insert("commands", commands);
    }
    out.insert(
        "mem",
        doc! {
            "bits": 64,
            "resident": (resident_bytes() >> 20) as i64,
            "virtual": (virtual_bytes() >> 20) as i64,
            "supported": true,
        },
    );
    let s = &*storage::metrics::METRICS;
    // Only the count: each stream's lag is a walk of the log it has still to read.
    let open = ctx.cursors.change_stream_count();
    let (images, image_bytes) = ctx
        .store
        .snapshot()
        .and_then(|snap| snap.preimage_size())
        .unwrap_or((0, 0));
    out.insert(
        "eddy",
        doc! {
            "log": {
                "fsyncs": s.fsyncs.get() as i64,
                "bytesWritten": s.log_bytes.get() as i64,
            },
            "commit": {
                "groups": s.groups.get() as i64,
                "writes": s.grouped_writes.get() as i64,
            },
            "changeStreams": {
                "open": open as i64,
                "eventsDelivered": m.change_events.get() as i64,
            },
            "serverSentEvents": {
                "clients": m.sse_clients.get(),
                "eventsSent": m.sse_events.get() as i64,
            },
            "preImages": {"count": images as i64, "bytes": image_bytes as i64},
        },
    );
}

/// A registry with every figure: the statics above and in storage, and the server's
/// state read at each scrape.
pub fn registry(ctx: &Arc<ServerCtx>) -> Registry {
    let mut r = Registry::with_prefix("eddy");
    let m = &*METRICS;
    r.register(
        "command_duration_seconds",
        "Time to run a command, by command",
        m.latency.clone(),
    );
    r.register(
        "command_failures",
        "Commands that failed, by command",
        m.failed.clone(),
    );
    r.register(
        "change_stream_events_delivered",
        "Change events returned to change streams",
        m.change_events.clone(),
    );
    r.register(
        "sse_events_sent",
        "Change events sent to Server-Sent Events clients",
        m.sse_events.clone(),
    );
    r.register(
        "sse_clients",
        "Server-Sent Events clients connected",
        m.sse_clients.clone(),
    );
    let s = &*storage::metrics::METRICS;
    r.register(
        "commit_duration_seconds",
        "Time from a commit group's start to its durability (applying it and the log's fdatasync)",
        s.commit_seconds.clone(),
    );
    r.register(
        "commit_group_size",
        "Writes committed together in one group",
        s.group_size.clone(),
    );
    r.register(
        "log_fsync_duration_seconds",
        "Time one fdatasync of the write-ahead log takes",
        s.fsync_seconds.clone(),
    );
    r.register(
        "log_fsyncs",
        "fdatasyncs of the write-ahead log",
        s.fsyncs.clone(),
    );
    r.register(
        "log_written_bytes",
        "Bytes appended to the write-ahead log",
        s.log_bytes.clone(),
    );
    r.register_collector(Box::new(StateCollector(Arc::downgrade(ctx))));
    r
}

/// Reads the server's state at each scrape.
struct StateCollector(Weak<ServerCtx>);

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

/// One metric family read at scrape time: a series per label set (none for a bare one).
fn family<N: Copy, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    (name, help, ty): (&str, &str, MetricType),
    series: &[(Labels, N)],
    make: fn(N) -> M,
) -> Result<(), std::fmt::Error> {
    let mut me = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, v) in series {
        if labels.is_empty() {
            make(*v).encode(me.encode_family(&NO_LABELS)?)?;
        } else {
            make(*v).encode(me.encode_family(labels)?)?;
        }
    }
    Ok(())
}

const NO_LABELS: [(&str, &str); 0] = [];

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, N)],
) -> Result<(), std::fmt::Error> {
    family(
        enc,
        (name, help, MetricType::Gauge),
        series,
        ConstGauge::new,
    )
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    family(
        enc,
        (name, help, MetricType::Counter),
        series,
        ConstCounter::new,
    )
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(ctx) = self.0.upgrade() else {
            return Ok(());
        };
        let s = &ctx.stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            &mut enc,
            "connections",
            "Client connections open now",
            &[(vec![], load(&s.connections_current) as i64)],
        )?;
        counter(
            &mut enc,
            "connections_created",
            "Client connections accepted since start",
            &[(vec![], load(&s.connections_total))],
        )?;
        let ops: Vec<(Labels, u64)> = [
            ("insert", &s.insert),
            ("query", &s.query),
            ("update", &s.update),
            ("delete", &s.delete),
            ("getmore", &s.getmore),
            ("command", &s.command),
        ]
        .iter()
        .map(|(t, a)| (vec![("type", (*t).to_string())], load(a)))
        .collect();
        counter(
            &mut enc,
            "opcounters",
            "Operations by type, as serverStatus.opcounters counts them",
            &ops,
        )?;
        counter(
            &mut enc,
            "commit_groups",
            "Commit groups made durable",
            &[(vec![], storage::metrics::METRICS.groups.get())],
        )?;
        if let Ok(snap) = ctx.store.snapshot() {
            if let Ok(Some((first, last))) = snap.oplog_bounds() {
                gauge(
                    &mut enc,
                    "oplog_first_timestamp_seconds",
                    "Cluster time (seconds) of the oldest oplog entry kept",
                    &[(vec![], i64::from(first.time))],
                )?;
                gauge(
                    &mut enc,
                    "oplog_last_timestamp_seconds",
                    "Cluster time (seconds) of the newest oplog entry",
                    &[(vec![], i64::from(last.time))],
                )?;
                gauge(
                    &mut enc,
                    "oplog_window_seconds",
                    "Seconds between the oldest and the newest oplog entries",
                    &[(vec![], i64::from(last.time.saturating_sub(first.time)))],
                )?;
            }
            if let Ok((count, bytes)) = snap.preimage_size() {
                gauge(
                    &mut enc,
                    "preimages",
                    "Pre-images stored for change streams",
                    &[(vec![], count as i64)],
                )?;
                gauge(
                    &mut enc,
                    "preimages_bytes",
                    "Bytes of the pre-image store",
                    &[(vec![], bytes as i64)],
                )?;
            }
        }
        let log = ctx.store.log();
        gauge(
            &mut enc,
            "oplog_bytes",
            "Bytes of the write-ahead log (the oplog) on disk",
            &[(vec![], log.bytes() as i64)],
        )?;
        gauge(
            &mut enc,
            "oplog_segments",
            "Segments of the write-ahead log",
            &[(vec![], log.segment_count() as i64)],
        )?;
        let (open, lags) = ctx.cursors.change_stream_lags(&ctx, TOP_LAGGING_STREAMS);
        gauge(
            &mut enc,
            "change_streams_open",
            "Change streams open (cursors)",
            &[(vec![], open as i64)],
        )?;
        let series = |f: fn(&crate::cursor::StreamLag) -> i64| -> Vec<(Labels, i64)> {
            lags.iter()
                .map(|l| {
                    (
                        vec![("cursor_id", l.cursor_id.to_string()), ("ns", l.ns.clone())],
                        f(l),
                    )
                })
                .collect()
        };
        gauge(
            &mut enc,
            "change_stream_lag_events",
            "Oplog entries a change stream has still to read (the most lagging streams)",
            &series(|l| l.events),
        )?;
        gauge(
            &mut enc,
            "change_stream_lag_seconds",
            "Seconds between a change stream's position and the newest commit (the most lagging streams)",
            &series(|l| l.seconds),
        )?;
        gauge(
            &mut enc,
            "cursors_open",
            "Cursors open (queries, tailable cursors and change streams)",
            &[(vec![], ctx.cursors.len() as i64)],
        )?;
        gauge(
            &mut enc,
            "resident_memory_bytes",
            "Resident set size of the process",
            &[(vec![], resident_bytes() as i64)],
        )?;
        gauge(
            &mut enc,
            "virtual_memory_bytes",
            "Virtual memory size of the process",
            &[(vec![], virtual_bytes() as i64)],
        )?;
        gauge(
            &mut enc,
            "uptime_seconds",
            "Seconds since the server started",
            &[(vec![], ctx.started.elapsed().as_secs() as i64)],
        )?;
        Ok(())
    }
}
