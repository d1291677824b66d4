//! `eddy-bench`: prints throughput figures for an in-process Eddy server (or any server
//! given by `--uri`). A program that prints figures, never a timed test.
//!
//! Usage: `cargo run --release -p bench -- [inserts|find|stream|all] [--uri URI] [--seconds N]`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bson::{Document, doc};
use futures_util::{StreamExt, TryStreamExt};
use mongodb::Client;

struct Args {
    what: String,
    uri: Option<String>,
    seconds: u64,
}

fn args() -> Args {
    let mut a = Args {
        what: "all".into(),
        uri: None,
        seconds: 5,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--uri" => a.uri = it.next(),
            "--seconds" => a.seconds = it.next().and_then(|s| s.parse().ok()).unwrap_or(5),
            other => a.what = other.to_string(),
        }
    }
    a
}

#[tokio::main]
async fn main() {
    let a = args();
    let _server;
    let client = match &a.uri {
        Some(u) => Client::with_uri_str(u).await.expect("uri"),
        None => {
            let s = testkit::spawn().await;
            let c = s.client.clone();
            _server = s;
            c
        }
    };
    let secs = Duration::from_secs(a.seconds);
    if a.what == "inserts" || a.what == "all" {
        single_inserts(&client, 8, secs).await;
        batch_inserts(&client, 1000, secs).await;
    }
    if a.what == "find" || a.what == "all" {
        find_scan(&client, if a.what == "find" { 1_000_000 } else { 200_000 }).await;
    }
    if a.what == "stream" || a.what == "all" {
        stream_latency(&client, secs).await;
    }
}

async fn single_inserts(client: &Client, clients: usize, secs: Duration) {
    let c = client.database("bench").collection::<Document>("single");
    let _ = c.drop().await;
    let n = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..clients {
        let c = c.clone();
        let n = n.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while start.elapsed() < secs {
                c.insert_one(doc! {"w": w as i32, "i": i as i64, "payload": "x".repeat(100)})
                    .await
                    .unwrap();
                i += 1;
                n.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = n.load(Ordering::Relaxed);
    println!(
        "single-document inserts, {clients} concurrent clients, default write concern: {:.0} inserts/s ({total} in {:.1}s)",
        total as f64 / start.elapsed().as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}

async fn batch_inserts(client: &Client, batch: usize, secs: Duration) {
    let c = client.database("bench").collection::<Document>("batch");
    let _ = c.drop().await;
    let start = Instant::now();
    let mut total = 0u64;
    let mut i = 0i64;
    while start.elapsed() < secs {
        let docs: Vec<Document> = (0..batch)
            .map(|_| {
                i += 1;
                doc! {"i": i, "payload": "x".repeat(100)}
            })
            .collect();
        c.insert_many(docs).await.unwrap();
        total += batch as u64;
    }
    println!(
        "insertMany batches of {batch}: {:.0} inserts/s ({total} in {:.1}s)",
        total as f64 / start.elapsed().as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
}

async fn find_scan(client: &Client, n: usize) {
    let c = client.database("bench").collection::<Document>("scan");
    let _ = c.drop().await;
    let mut i = 0;
    while i < n {
        let docs: Vec<Document> = (i..(i + 10_000).min(n)).map(|k| doc! {"_id": k as i64, "a": (k % 100) as i32, "b": (k % 7) as i32, "c": format!("s{}", k % 13)}).collect();
        i += docs.len();
        c.insert_many(docs).await.unwrap();
    }
    let filter = doc! {"a": 42, "b": {"$gte": 3}, "c": {"$ne": "s1"}};
    for label in ["without an index", "with an index on a"] {
        if label.starts_with("with an") {
            c.create_index(mongodb::IndexModel::builder().keys(doc! {"a": 1}).build())
                .await
                .unwrap();
        }
        let start = Instant::now();
        let found: Vec<Document> = c
            .find(filter.clone())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let el = start.elapsed().as_secs_f64();
        println!(
            "find with a 3-clause filter over {n} documents {label}: {:.0} documents/s examined-equivalent ({} matched in {:.3}s)",
            n as f64 / el,
            found.len(),
            el
        );
    }
}

async fn stream_latency(client: &Client, secs: Duration) {
    let c = client.database("bench").collection::<Document>("stream");
    let _ = c.drop().await;
    let mut cs = c.watch().await.unwrap();
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut acks = Vec::new();
            let mut k = 0i64;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            while start.elapsed() < secs {
                tick.tick().await;
                c.insert_one(doc! {"k": k}).await.unwrap();
                acks.push(Instant::now());
                k += 1;
            }
            acks
        })
    };
    let mut arrivals = Vec::new();
    let deadline = Instant::now() + secs + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(2), cs.next()).await {
            Ok(Some(Ok(_))) => arrivals.push(Instant::now()),
            _ => break,
        }
    }
    let acks = writer.await.unwrap();
    let mut lat: Vec<f64> = acks
        .iter()
        .zip(arrivals.iter())
        .map(|(a, r)| r.saturating_duration_since(*a).as_secs_f64() * 1000.0)
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if lat.is_empty() {
        println!("stream: no events");
        return;
    }
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
    println!(
        "change stream, writes paced at up to 1,000/s: {} events, latency ack->arrival p50 {:.2} ms, p99 {:.2} ms",
        lat.len(),
        p(0.5),
        p(0.99)
    );
}
