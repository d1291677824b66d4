//! The embedded library against the server, same workload: N single-document inserts
//! from one task (each acknowledged, so each waits for its group's fdatasync), then a
//! change stream opened before them drains their N events.
//!
//! cargo run --release -p eddy --example bench -- [N] [mongodb://URI-of-a-running-eddy]

use std::time::Instant;

use bson::{Document, doc};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: i32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let uri = std::env::args().nth(2);

    let dir = tempfile::tempdir()?;
    let db = eddy::Eddy::open(dir.path()).await?;
    let c = db.database("bench").collection("embedded");
    let mut s = c.watch(vec![], Default::default()).await?;
    let t = Instant::now();
    for i in 0..n {
        c.insert_one(doc! {"_id": i, "pad": "x".repeat(100)})
            .await?;
    }
    let ins = f64::from(n) / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..n {
        s.next().await?.ok_or("stream ended")?;
    }
    let evs = f64::from(n) / t.elapsed().as_secs_f64();
    println!("embedded: {ins:.0} inserts/s, {evs:.0} events/s ({n} documents)");
    drop(s);
    drop(db);

    if let Some(uri) = uri {
        let client = mongodb::Client::with_uri_str(&uri).await?;
        let c = client.database("bench").collection::<Document>("server");
        let _ = c.drop().await;
        let mut s = c.watch().await?;
        let t = Instant::now();
        for i in 0..n {
            c.insert_one(doc! {"_id": i, "pad": "x".repeat(100)})
                .await?;
        }
        let ins = f64::from(n) / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for _ in 0..n {
            s.next().await.ok_or("stream ended")??;
        }
        let evs = f64::from(n) / t.elapsed().as_secs_f64();
        println!("server ({uri}): {ins:.0} inserts/s, {evs:.0} events/s ({n} documents)");
    }
    Ok(())
}
