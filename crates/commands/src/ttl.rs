//! The TTL monitor: deletes the documents a TTL index says have expired.
//!
//! As in mongod, one pass runs every `ttlMonitorSleepSecs` (60 by default; settable with
//! `--setParameter` and `setParameter`, and switched off with `ttlMonitorEnabled: false`).
//! A document expires when its indexed field is a date (or an array holding one: the
//! earliest counts) more than `expireAfterSeconds` in the past. Expired documents are
//! deleted through the ordinary delete path, so they reach the oplog, change streams and
//! replicas like any delete, in batches of at most [`BATCH`] per commit so that a large
//! expiry never holds the commit pipeline for long. Only a primary (or a lone server)
//! deletes: its deletes replicate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bson::{Bson, DateTime, doc};
use errors::Result;
use query::filter::Filter;
use storage::catalog::Namespace;

use crate::ServerCtx;
use crate::crud::{Session, delete_matching};

/// Documents deleted per commit.
pub const BATCH: usize = 1000;

/// `serverStatus.metrics.ttl`.
#[derive(Default)]
pub struct TtlStats {
    pub passes: AtomicU64,
    pub deleted_documents: AtomicU64,
}

/// Starts the monitor; it stops when the server does.
pub fn spawn(ctx: Weak<ServerCtx>) {
    tokio::spawn(async move {
        loop {
            let secs = {
                let Some(ctx) = ctx.upgrade() else { break };
                sleep_secs(&ctx)
            };
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let Some(ctx) = ctx.upgrade() else { break };
            if !enabled(&ctx) {
                continue;
            }
            if let Err(e) = pass(&ctx).await {
                tracing::warn!(error = %e, "TTL monitor pass failed");
            }
        }
    });
}

fn sleep_secs(ctx: &ServerCtx) -> u64 {
    let p = ctx.parameters.lock().unwrap();
    match p.get("ttlMonitorSleepSecs").and_then(doc::compare::as_f64) {
        Some(s) if s >= 1.0 => s as u64,
        _ => 1,
    }
}

fn enabled(ctx: &ServerCtx) -> bool {
    let on = !matches!(
        ctx.parameters.lock().unwrap().get("ttlMonitorEnabled"),
        Some(Bson::Boolean(false))
    );
    on && ctx.repl.as_ref().is_none_or(|s| s.writable())
}

/// One pass over every TTL index. Returns the documents deleted.
///
/// # Errors
/// A storage error.
pub async fn pass(ctx: &Arc<ServerCtx>) -> Result<u64> {
    let mut targets = Vec::new();
    for m in ctx.store.snapshot()?.collections(None)? {
        if m.is_view() {
            continue;
        }
        for ix in &m.indexes {
            if let (Some(secs), Some((field, _))) = (ix.expire_after_secs(), ix.key.iter().next()) {
                targets.push((m.ns.clone(), field.clone(), secs));
            }
        }
    }
    let mut total = 0;
    for (ns, field, secs) in targets {
        total += expire(ctx, &ns, &field, secs).await?;
    }
    ctx.ttl.passes.fetch_add(1, Ordering::Relaxed);
    ctx.ttl
        .deleted_documents
        .fetch_add(total, Ordering::Relaxed);
    Ok(total)
}

/// Deletes the documents of `ns` whose `field` is a date older than `secs` seconds.
async fn expire(ctx: &Arc<ServerCtx>, ns: &Namespace, field: &str, secs: i64) -> Result<u64> {
    let cutoff = DateTime::from_millis(
        DateTime::now()
            .timestamp_millis()
            .saturating_sub(secs.saturating_mul(1000)),
    );
    // `$lt` on a date matches dates only (type bracketing), and an array when any of its
    // elements matches: its earliest date, as mongod's monitor reads it.
    let filter = Filter::parse(&doc! {field: {"$lt": cutoff}})?;
    let mut total = 0;
    loop {
        let (ns, filter) = (ns.clone(), filter.clone());
        let n = ctx
            .store
            .write(move |w| {
                let Some(meta) = w.collection(&ns)? else {
                    return Ok(0);
                };
                delete_matching(w, &meta, &filter, &Session::default(), BATCH)
            })
            .await?;
        total += n as u64;
        if n < BATCH {
            return Ok(total);
        }
    }
}
