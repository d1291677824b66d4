//! The commit pipeline's and the log's figures for the metrics endpoint (and
//! `serverStatus`): how long a commit group takes, how many writes share it, and the
//! log's fdatasyncs and bytes. One set per process.

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// The storage figures.
pub struct StorageMetrics {
    /// Seconds from a group's start to its durability (applying it and its fdatasync).
    pub commit_seconds: Histogram,
    /// Writes committed together in one group.
    pub group_size: Histogram,
    /// Seconds one fdatasync of the log takes.
    pub fsync_seconds: Histogram,
    /// fdatasyncs of the log (one per commit group).
    pub fsyncs: Counter,
    /// Bytes appended to the log.
    pub log_bytes: Counter,
    /// Commit groups run, and the writes in them.
    pub groups: Counter,
    pub grouped_writes: Counter,
}

/// The process's storage figures.
pub static METRICS: LazyLock<StorageMetrics> = LazyLock::new(|| StorageMetrics {
    // 50 µs to about 3.3 s.
    commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 17)),
    group_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
    fsync_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 17)),
    fsyncs: Counter::default(),
    log_bytes: Counter::default(),
    groups: Counter::default(),
    grouped_writes: Counter::default(),
});
