//! `eddy-bench`: prints throughput and latency figures. A program that prints figures,
//! never a timed test.
//!
//! By default it starts the `eddy` binary built next to it (`target/release/eddy`) on a free
//! port with a temporary data directory, so that the server's CPU time can be read from
//! `/proc`; `--uri URI --pid PID` measures a server that is already running.
//!
//! Usage: `cargo build --release && target/release/eddy-bench
//! [inserts|find|stream|images|txn|fanout|streams|catchup|recovery|all] [--seconds N] [--docs N]
//! [--log-mb N] [--streams 1,100,10000] [--uri URI --pid PID]`
//!
//! `catchup` (not part of `all`) has 1 stream drain 1,000,000 100-byte events and 50 streams
//! 200,000 1 KB events each, while a writer inserts elsewhere (`--catchup L,N,SIZE` for
//! one other case).
//!
//! `streams` (not part of `all`) opens each number of concurrent change streams over raw connections (one
//! connection and one waiting `getMore` per stream; raise `ulimit -n` past the largest).
//!
//! `recovery` (not part of `all`) starts its own server with checkpoints held off, writes
//! `--log-mb` (default 1024) of log, kills the server with SIGKILL, and times the restart.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bson::{Document, doc};
use futures_util::{StreamExt, TryStreamExt};
use mongodb::Client;
use mongodb::options::ClientOptions;

struct Args {
    what: String,
    uri: Option<String>,
    pid: Option<u32>,
    seconds: u64,
    docs: usize,
    log_mb: u64,
    streams: Vec<usize>,
    catchup: Vec<usize>,
}

fn args() -> Args {
    let mut a = Args {
        what: "all".into(),
        uri: None,
        pid: None,
        seconds: 5,
        docs: 1_000_000,
        log_mb: 1024,
        streams: vec![1, 100, 10_000],
        catchup: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--uri" => a.uri = it.next(),
            "--pid" => a.pid = Some(number("--pid", it.next())),
            "--seconds" => a.seconds = number("--seconds", it.next()),
            "--docs" => a.docs = number("--docs", it.next()),
            "--log-mb" => a.log_mb = number("--log-mb", it.next()),
            "--catchup" => {
                a.catchup = numbers("--catchup", it.next());
                if a.catchup.len() != 3 {
                    usage("--catchup takes LAGGARDS,EVENTS,SIZE");
                }
            }
            "--streams" => a.streams = numbers("--streams", it.next()),
            other => a.what = other.to_string(),
        }
    }
    a
}

/// A flag's number, or the usage error.
fn number<T: std::str::FromStr>(flag: &str, v: Option<String>) -> T {
    let v = v.unwrap_or_default();
    v.parse()
        .unwrap_or_else(|_| usage(&format!("{flag} takes a number, got {v:?}")))
}

/// A comma-separated list of numbers, or the usage error.
fn numbers(flag: &str, list: Option<String>) -> Vec<usize> {
    let list = list.unwrap_or_default();
    let parsed: Option<Vec<usize>> = list.split(',').map(|n| n.parse().ok()).collect();
    match parsed {
        Some(v) if !v.is_empty() => v,
        _ => usage(&format!(
            "{flag} takes comma-separated numbers, got {list:?}"
        )),
    }
}

fn usage(why: &str) -> ! {
    eprintln!("eddy-bench: {why}");
    std::process::exit(2)
}

/// A server process started for the benchmark; killed on drop.
struct Server {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_server() -> (Server, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("eddy-bench-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    spawn_server(dir, port, &[])
}

/// The `eddy` built next to this binary, on `port` with data in `dir`.
fn eddy_command(dir: &std::path::Path, port: u16, extra: &[&str]) -> Command {
    let bin = std::env::current_exe().expect("exe").with_file_name("eddy");
    let mut c = Command::new(bin);
    c.args([
        "--port",
        &port.to_string(),
        "--dbpath",
        dir.to_str().unwrap(),
        "--quiet",
    ])
    .args(extra)
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    c
}

/// Starts `eddy` on `port` with data in `dir` (kept as it is) and waits until it accepts.
fn spawn_server(dir: std::path::PathBuf, port: u16, extra: &[&str]) -> (Server, String) {
    let bin = std::env::current_exe().expect("exe").with_file_name("eddy");
    let child = eddy_command(&dir, port, extra).spawn().unwrap_or_else(|e| {
        panic!(
            "cannot start {}: {e} (cargo build --release first)",
            bin.display()
        )
    });
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    (
        Server { child, dir },
        format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
    )
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the full line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

async fn client(uri: &str, pool: u32) -> Client {
    let mut o = ClientOptions::parse(uri).await.expect("uri");
    o.max_pool_size = Some(pool);
    Client::with_options(o).expect("client")
}

#[tokio::main]
async fn main() {
    let a = args();
    let (server, uri, pid) = match &a.uri {
        Some(u) => (None, u.clone(), a.pid),
        None => {
            let (s, u) = start_server();
            let pid = s.child.id();
            (Some(s), u, Some(pid))
        }
    };
    let c = client(&uri, 64).await;
    let secs = Duration::from_secs(a.seconds);
    let all = a.what == "all";
    if all || a.what == "inserts" {
        for clients in [1, 8, 64] {
            single_inserts(&c, clients, secs, pid).await;
        }
        batch_inserts(&c, 100, secs, pid).await;
        batch_inserts(&c, 1000, secs, pid).await;
    }
    if all || a.what == "find" {
        find_scan(&c, a.docs).await;
    }
    if all || a.what == "stream" {
        stream_latency(&c, secs).await;
        stream_throughput(&c, secs).await;
    }
    if all || a.what == "images" {
        for enabled in [false, true] {
            images_cost(&c, enabled, secs).await;
        }
    }
    if all || a.what == "txn" {
        transactions(&c, 8, false, secs).await;
        transactions(&c, 8, true, secs).await;
    }
    let port = || -> u16 {
        uri.rsplit_once(':')
            .and_then(|(_, p)| p.split(['/', '?']).next()?.parse().ok())
            .expect("a port in the URI")
    };
    if a.what == "streams" {
        for n in &a.streams {
            streams(&uri, port(), *n, secs, pid).await;
        }
    }
    if a.what == "catchup" {
        match a.catchup.as_slice() {
            [l, n, size] => catch_up(&uri, port(), *l, *n as u64, *size, pid).await,
            _ => {
                catch_up(&uri, port(), 1, 1_000_000, 100, pid).await;
                catch_up(&uri, port(), 50, 200_000, 1024, pid).await;
            }
        }
    }
    if all || a.what == "fanout" {
        for n in [1, 100, 1000] {
            fanout(&uri, n, pid).await;
        }
    }
    drop(server);
    if a.what == "recovery" {
        recovery(a.log_mb).await;
    }
}

/// Server CPU per operation, as text.
fn cpu_per(pid: Option<u32>, cpu0: Option<f64>, ops: u64) -> String {
    match (pid, cpu0) {
        (Some(p), Some(c0)) if ops > 0 => format!(
            "server CPU {:.0} µs per document",
            (cpu_seconds(p) - c0) * 1e6 / ops as f64
        ),
        _ => "server CPU n/a".into(),
    }
}

async fn single_inserts(client: &Client, clients: usize, secs: Duration, pid: Option<u32>) {
    let c = client.database("bench").collection::<Document>("single");
    let _ = c.drop().await;
    c.insert_one(doc! {"warm": true}).await.unwrap();
    let n = Arc::new(AtomicU64::new(0));
    let cpu0 = pid.map(cpu_seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..clients {
        let c = c.clone();
        let n = n.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0i64;
            while start.elapsed() < secs {
                c.insert_one(doc! {"w": w as i32, "i": i, "payload": "x".repeat(100)})
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
    let el = start.elapsed().as_secs_f64();
    println!(
        "inserts: single-document, {clients} concurrent clients, default write concern: {:.0} inserts/s ({total} in {el:.1} s), {}",
        total as f64 / el,
        cpu_per(pid, cpu0, total)
    );
}

async fn batch_inserts(client: &Client, batch: usize, secs: Duration, pid: Option<u32>) {
    let c = client.database("bench").collection::<Document>("batch");
    let _ = c.drop().await;
    c.insert_one(doc! {"warm": true}).await.unwrap();
    let cpu0 = pid.map(cpu_seconds);
    let start = Instant::now();
    let (mut total, mut i) = (0u64, 0i64);
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
    let el = start.elapsed().as_secs_f64();
    println!(
        "inserts: insertMany batches of {batch}: {:.0} inserts/s ({total} in {el:.1} s), {}",
        total as f64 / el,
        cpu_per(pid, cpu0, total)
    );
}

/// Restart time after SIGKILL with `log_mb` of log written since the last checkpoint.
async fn recovery(log_mb: u64) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("eddy-bench-recovery-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    // No checkpoint while the log is written: hold them off by time and size, and keep the
    // size bound above what is written so that nothing is truncated.
    let oplog = (log_mb * 2 + 1024).to_string();
    let hold = [
        "--syncdelay",
        "100000",
        "--checkpointSizeMB",
        "1000000",
        "--oplogSize",
        &oplog,
    ];
    let (mut server, uri) = spawn_server(dir.clone(), port, &hold);
    let c = client(&uri, 8).await;
    let coll = c.database("bench").collection::<Document>("recovery");
    let payload = "x".repeat(900);
    let mut n = 0i64;
    let mut docs_written = 0u64;
    let start = Instant::now();
    loop {
        let status = c
            .database("admin")
            .run_command(doc! {"serverStatus": 1})
            .await
            .unwrap();
        let bytes = status
            .get_document("oplog")
            .ok()
            .and_then(|o| o.get_i64("logSizeBytes").ok())
            .unwrap_or(0) as u64;
        if bytes >= log_mb * 1024 * 1024 {
            break;
        }
        let docs: Vec<Document> = (0..1000)
            .map(|_| {
                n += 1;
                doc! {"_id": n, "k": n % 1000, "payload": &payload}
            })
            .collect();
        coll.insert_many(docs).await.unwrap();
        docs_written += 1000;
    }
    let wrote = start.elapsed().as_secs_f64();
    let logged = dir_bytes(&dir.join("log"));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    if std::env::var_os("EDDY_BENCH_KEEP").is_some() {
        // For profiling the restart by hand: leave the crashed directory behind.
        let keep = dir.with_extension("kept");
        let _ = std::fs::remove_dir_all(&keep);
        std::fs::rename(&dir, &keep).unwrap();
        println!(
            "recovery: crashed data directory kept at {}",
            keep.display()
        );
        return;
    }
    let t0 = Instant::now();
    let mut child = eddy_command(&dir, port, &hold).spawn().unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let restart = t0.elapsed().as_secs_f64();
    let c = client(&uri, 2).await;
    let found = c
        .database("bench")
        .collection::<Document>("recovery")
        .estimated_document_count()
        .await
        .unwrap();
    let mb = log_mb as f64 * 1024.0 * 1024.0 / 1e6;
    println!(
        "recovery: {docs_written} documents ({:.0} MB of log, {:.0} MB of segment files) written in {wrote:.1} s with no checkpoint, then SIGKILL: restart took {restart:.2} s ({:.0} MB/s of log); {found} documents afterwards",
        mb,
        logged as f64 / 1e6,
        mb / restart
    );
    let _ = child.kill();
    let _ = child.wait();
    server.child = child;
    drop(server);
}

fn dir_bytes(d: &std::path::Path) -> u64 {
    std::fs::read_dir(d)
        .map(|it| {
            it.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

async fn find_scan(client: &Client, n: usize) {
    let c = client.database("bench").collection::<Document>("scan");
    let _ = c.drop().await;
    let mut i = 0;
    while i < n {
        let docs: Vec<Document> = (i..(i + 10_000).min(n))
            .map(|k| doc! {"_id": k as i64, "a": (k % 100) as i32, "b": (k % 7) as i32, "c": format!("s{}", k % 13)})
            .collect();
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
            "find: 3-clause filter over {n} documents {label}: {:.0} documents/s ({} matched in {el:.3} s)",
            n as f64 / el,
            found.len()
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
    let rate = acks.len() as f64 / secs.as_secs_f64();
    let mut lat: Vec<f64> = acks
        .iter()
        .zip(arrivals.iter())
        .map(|(a, r)| r.saturating_duration_since(*a).as_secs_f64() * 1000.0)
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if lat.is_empty() {
        println!("stream latency: no events");
        return;
    }
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
    println!(
        "stream latency: writes at {rate:.0}/s (target 1,000/s), {} events, ack->arrival p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        lat.len(),
        p(0.5),
        p(0.99),
        p(1.0)
    );
}

async fn stream_throughput(client: &Client, secs: Duration) {
    let c = client.database("bench").collection::<Document>("flat");
    let _ = c.drop().await;
    let mut cs = c.watch().batch_size(10_000).await.unwrap();
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < secs {
                let docs: Vec<Document> = (0..1000)
                    .map(|i| doc! {"i": i, "payload": "x".repeat(100)})
                    .collect();
                c.insert_many(docs).await.unwrap();
                n += 1000;
            }
            n
        })
    };
    let start = Instant::now();
    let mut got = 0u64;
    let mut last = start;
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(3), cs.next()).await {
        got += 1;
        last = Instant::now();
    }
    let written = writer.await.unwrap();
    let el = last.duration_since(start).as_secs_f64();
    println!(
        "stream throughput: writer flat out (insertMany of 1,000): {written} written, {got} delivered to one stream, {:.0} events/s",
        got as f64 / el
    );
}

/// Inserts/s and updates/s from 8 clients, with `changeStreamPreAndPostImages` off or on.
async fn images_cost(client: &Client, enabled: bool, secs: Duration) {
    let db = client.database("bench");
    let name = format!("images_{enabled}");
    let _ = db.collection::<Document>(&name).drop().await;
    db.run_command(doc! {"create": &name, "changeStreamPreAndPostImages": {"enabled": enabled}})
        .await
        .unwrap();
    let c = db.collection::<Document>(&name);
    for (label, update) in [("inserts", false), ("updates", true)] {
        let n = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..8i64 {
            let c = c.clone();
            let n = n.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = 0i64;
                while start.elapsed() < secs {
                    if update {
                        let id = w * 1_000_000 + (i % 1000);
                        c.update_one(doc! {"_id": id}, doc! {"$inc": {"n": 1}})
                            .await
                            .unwrap();
                    } else {
                        c.insert_one(
                            doc! {"_id": w * 1_000_000 + i, "n": 0, "payload": "x".repeat(100)},
                        )
                        .await
                        .unwrap();
                    }
                    i += 1;
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let total = n.load(Ordering::Relaxed);
        let el = start.elapsed().as_secs_f64();
        println!(
            "images {}: {label} from 8 clients: {:.0}/s",
            if enabled { "on " } else { "off" },
            total as f64 / el
        );
    }
}

/// `n` streams, each matching one of 10 values of `k`, so each sees a tenth of the events.
async fn fanout(uri: &str, n: usize, pid: Option<u32>) {
    const SHARES: i32 = 10;
    const DOCS: usize = 20_000;
    let c = client(uri, n as u32 + 16).await;
    let coll = c
        .database("bench")
        .collection::<Document>(&format!("fan{n}"));
    let _ = coll.drop().await;
    coll.insert_one(doc! {"warm": true}).await.unwrap();
    let total = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    for j in 0..n {
        let mut cs = coll
            .watch()
            .pipeline(vec![
                doc! {"$match": {"fullDocument.k": (j as i32) % SHARES}},
            ])
            .max_await_time(Duration::from_millis(500))
            .await
            .unwrap();
        let total = total.clone();
        let expect = DOCS / SHARES as usize;
        streams.push(tokio::spawn(async move {
            let mut got = 0;
            while got < expect {
                match tokio::time::timeout(Duration::from_secs(60), cs.next()).await {
                    Ok(Some(Ok(_))) => {
                        got += 1;
                        total.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => break,
                }
            }
            Instant::now()
        }));
    }
    let cpu0 = pid.map(cpu_seconds);
    let start = Instant::now();
    for b in 0..(DOCS / 100) {
        let docs: Vec<Document> = (0..100)
            .map(|i| doc! {"k": ((b * 100 + i) as i32) % SHARES, "b": b as i32})
            .collect();
        coll.insert_many(docs).await.unwrap();
    }
    let mut end = start;
    for s in streams {
        end = end.max(s.await.unwrap());
    }
    let cpu = pid.map(|p| cpu_seconds(p) - cpu0.unwrap_or(0.0));
    let delivered = total.load(Ordering::Relaxed);
    let el = end.duration_since(start).as_secs_f64();
    let cpu_txt = cpu.map_or("server CPU n/a".to_string(), |s| {
        format!(
            "server CPU {:.1} ms per 1,000 deliveries ({s:.2} s)",
            s * 1000.0 / (delivered as f64 / 1000.0)
        )
    });
    println!(
        "fan-out: {n} streams, each matching 1/{SHARES} of {DOCS} inserts (100-doc batches): {delivered} deliveries, {:.0} deliveries/s, {cpu_txt}",
        delivered as f64 / el
    );
}

/// Multi-document transactions from `clients` concurrent sessions: each inserts 5
/// documents into each of two collections and, when `contended`, also increments one of
/// four shared counters (so transactions conflict and are retried, as drivers do).
async fn transactions(client: &Client, clients: usize, contended: bool, secs: Duration) {
    let db = client.database("bench");
    let (a, b, hot) = (
        db.collection::<Document>("txn_a"),
        db.collection::<Document>("txn_b"),
        db.collection::<Document>("txn_hot"),
    );
    for c in [&a, &b, &hot] {
        let _ = c.drop().await;
    }
    hot.insert_many((0..4).map(|i| doc! {"_id": i, "n": 0i64}))
        .await
        .unwrap();
    let commits = Arc::new(AtomicU64::new(0));
    let conflicts = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..clients {
        let (a, b, hot) = (a.clone(), b.clone(), hot.clone());
        let (commits, conflicts) = (commits.clone(), conflicts.clone());
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = client.start_session().await.unwrap();
            let mut i = 0i64;
            while start.elapsed() < secs {
                s.start_transaction().await.unwrap();
                let r: mongodb::error::Result<()> = async {
                    let docs: Vec<Document> = (0..5)
                        .map(|k| doc! {"w": w as i32, "i": i, "k": k})
                        .collect();
                    a.insert_many(docs.clone()).session(&mut s).await?;
                    b.insert_many(docs).session(&mut s).await?;
                    if contended {
                        hot.update_one(doc! {"_id": (i % 4) as i32}, doc! {"$inc": {"n": 1}})
                            .session(&mut s)
                            .await?;
                    }
                    s.commit_transaction().await
                }
                .await;
                match r {
                    Ok(()) => {
                        commits.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                    Err(e) if e.contains_label(mongodb::error::TRANSIENT_TRANSACTION_ERROR) => {
                        conflicts.fetch_add(1, Ordering::Relaxed);
                        let _ = s.abort_transaction().await;
                    }
                    Err(e) => panic!("transaction failed: {e}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let el = start.elapsed().as_secs_f64();
    let n = commits.load(Ordering::Relaxed);
    let kind = if contended {
        "10 inserts + 1 of 4 hot counters"
    } else {
        "10 inserts over 2 collections"
    };
    println!(
        "transactions: {clients} sessions, {kind}: {:.0} commits/s ({:.0} documents/s), {} write conflicts retried",
        n as f64 / el,
        n as f64 * 10.0 / el,
        conflicts.load(Ordering::Relaxed)
    );
}

/// Server RSS in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A raw wire-protocol connection: one command at a time, replies decoded to documents.
/// Lighter than a driver's pool, so that tens of thousands of streams fit in one process.
struct Raw {
    sock: tokio::net::TcpStream,
    next_id: i32,
}

impl Raw {
    /// Connects from 127.0.0.`source` (past ~28,000 connections one source address runs
    /// out of ephemeral ports).
    async fn connect(port: u16, source: u8) -> std::io::Result<Raw> {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.bind(std::net::SocketAddr::from(([127, 0, 0, source], 0)))?;
        let sock = s
            .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .await?;
        sock.set_nodelay(true)?;
        Ok(Raw { sock, next_id: 1 })
    }

    /// Sends a command and returns the whole reply message.
    async fn round_trip(&mut self, body: &Document) -> std::io::Result<Vec<u8>> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.next_id += 1;
        let msg = wire::encode_msg_request(self.next_id, body, &[], false, None);
        self.sock.write_all(&msg).await?;
        let mut len = [0u8; 4];
        self.sock.read_exact(&mut len).await?;
        let n = i32::from_le_bytes(len) as usize;
        let mut buf = vec![0u8; n];
        buf[..4].copy_from_slice(&len);
        self.sock.read_exact(&mut buf[4..]).await?;
        Ok(buf)
    }

    async fn command(&mut self, body: &Document) -> std::io::Result<Document> {
        let buf = self.round_trip(body).await?;
        match wire::decode(&buf).map(|f| f.request) {
            Ok(wire::Request::Msg(m)) => Ok(m.body),
            other => Err(std::io::Error::other(format!("unexpected reply {other:?}"))),
        }
    }
}

/// Nanoseconds since the benchmark's epoch, as written into each document and read back
/// from its event.
fn now_ns(epoch: Instant) -> i64 {
    i64::try_from(epoch.elapsed().as_nanos()).unwrap_or(i64::MAX)
}

/// `n` concurrent change streams on one collection, each on its own connection with a
/// `getMore` waiting, each matching 1% of the events (`fullDocument.k` equal to its own
/// value of 100), while writers insert 1,000 documents/s. Prints insert-start → event
/// arrival latency, server CPU per 1,000 deliveries, and server memory per connection and
/// per idle stream besides its connection.
async fn streams(uri: &str, port: u16, n: usize, secs: Duration, pid: Option<u32>) {
    const SHARES: i64 = 100;
    const RATE: u64 = 1000;
    let c = client(uri, 16).await;
    let coll = c.database("bench").collection::<Document>("streams");
    let _ = coll.drop().await;
    coll.insert_one(doc! {"warm": true}).await.unwrap();
    let epoch = Instant::now();
    let rss0 = pid.map_or(0, rss_kib);
    // Connections first (with a hello each), then a stream on each.
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let source = 1 + (i / 20_000) as u8;
        let mut r = match Raw::connect(port, source).await {
            Ok(r) => r,
            Err(e) => {
                println!("streams: {n}: connection {i} failed: {e} (raise ulimit -n)");
                return;
            }
        };
        r.command(&doc! {"hello": 1, "$db": "admin"}).await.unwrap();
        conns.push(r);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_conns = pid.map_or(0, rss_kib);
    let mut ids = Vec::with_capacity(n);
    for (j, r) in conns.iter_mut().enumerate() {
        let reply = r
            .command(&doc! {
                "aggregate": "streams",
                "pipeline": [{"$changeStream": {}}, {"$match": {"fullDocument.k": (j as i64) % SHARES}}],
                "cursor": {},
                "$db": "bench",
            })
            .await
            .unwrap();
        ids.push(reply.get_document("cursor").unwrap().get_i64("id").unwrap());
    }
    let delivered = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<u32>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::with_capacity(n);
    for (mut r, id) in conns.into_iter().zip(ids) {
        let (delivered, latencies, stop) = (delivered.clone(), latencies.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let get_more =
                doc! {"getMore": id, "collection": "streams", "maxTimeMS": 2000, "$db": "bench"};
            while !stop.load(Ordering::Relaxed) {
                let Ok(reply) = r.command(&get_more).await else {
                    break;
                };
                let Ok(batch) = reply
                    .get_document("cursor")
                    .and_then(|c| c.get_array("nextBatch"))
                else {
                    break;
                };
                let now = now_ns(epoch);
                let mine = batch.iter().filter_map(|ev| {
                    let t = ev
                        .as_document()?
                        .get_document("fullDocument")
                        .ok()?
                        .get_i64("t")
                        .ok()?;
                    Some(u32::try_from((now - t) / 1000).unwrap_or(u32::MAX))
                });
                latencies.lock().unwrap().extend(mine);
                delivered.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    // Every stream has its getMore waiting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_streams = pid.map_or(0, rss_kib);
    let cpu0 = pid.map(cpu_seconds);
    let start = Instant::now();
    let writers = 4u64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let coll = coll.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 * writers / RATE));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut i = w as i64;
            let mut done = 0u64;
            while start.elapsed() < secs {
                tick.tick().await;
                coll.insert_one(doc! {"k": i % SHARES, "t": now_ns(epoch)})
                    .await
                    .unwrap();
                i += writers as i64;
                done += 1;
            }
            done
        }));
    }
    let mut written = 0;
    for t in tasks {
        written += t.await.unwrap();
    }
    let wrote_for = start.elapsed().as_secs_f64();
    // Let the last events arrive.
    let expect = written * n as u64 / SHARES as u64;
    let settle = Instant::now();
    while delivered.load(Ordering::Relaxed) < expect && settle.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = pid.map(|p| cpu_seconds(p) - cpu0.unwrap_or(0.0));
    stop.store(true, Ordering::Relaxed);
    let got = delivered.load(Ordering::Relaxed);
    for r in &readers {
        r.abort();
    }
    for r in readers {
        let _ = r.await;
    }
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort_unstable();
    let p = |q: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * q) as usize)
            .map_or(f64::NAN, |v| f64::from(*v) / 1000.0)
    };
    let cpu_txt = cpu.map_or("server CPU n/a".to_string(), |s| {
        format!(
            "server CPU {:.1} ms per 1,000 deliveries ({:.0} µs per write)",
            s * 1000.0 / (got.max(1) as f64 / 1000.0),
            s * 1e6 / written.max(1) as f64
        )
    });
    let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / n as f64;
    println!(
        "streams: {n} streams, 1% each, writes {:.0}/s (target {RATE}/s): {got} of {expect} deliveries, insert->event p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {cpu_txt}; server RSS {:.1} KiB per connection, {:.1} KiB per idle stream besides it",
        written as f64 / wrote_for,
        p(0.5),
        p(0.99),
        p(1.0),
        per(rss0, rss_conns),
        per(rss_conns, rss_streams),
    );
}

impl Raw {
    /// Sends a command and returns the reply's body as raw BSON (an OP_MSG's section 0),
    /// without decoding it.
    async fn command_raw(&mut self, body: &Document) -> std::io::Result<Vec<u8>> {
        let mut buf = self.round_trip(body).await?;
        // Header (16), flag bits (4), section kind 0 (1), then the body.
        Ok(buf.split_off(21))
    }
}

/// Reads a stream's backlog until it has `expect` events, checking each event's
/// `fullDocument.i` follows the last; returns the events read.
async fn drain_raw(mut r: Raw, id: i64, coll: &str, expect: u64) -> std::io::Result<u64> {
    let get_more = doc! {"getMore": id, "collection": coll, "batchSize": 1_000_000, "maxTimeMS": 1000, "$db": "bench"};
    let mut got = 0u64;
    while got < expect {
        let body = r.command_raw(&get_more).await?;
        let reply = bson::RawDocument::from_bytes(&body).map_err(std::io::Error::other)?;
        let batch = reply
            .get_document("cursor")
            .and_then(|c| c.get_array("nextBatch"))
            .map_err(|e| {
                std::io::Error::other(format!("{e}: {:?}", bson::Document::try_from(reply)))
            })?;
        let mut n = 0;
        for ev in batch {
            let i = ev
                .ok()
                .and_then(|e| e.as_document())
                .and_then(|e| e.get_document("fullDocument").ok())
                .and_then(|d| d.get_i64("i").ok());
            if i != Some(got as i64) {
                return Err(std::io::Error::other(format!(
                    "event {got} out of order: {i:?}"
                )));
            }
            got += 1;
            n += 1;
        }
        if n == 0 {
            break;
        }
    }
    Ok(got)
}

/// `laggards` change streams, each `n` events of `size` bytes behind, drain at once
/// over raw connections while a writer inserts into another collection. Prints events/s
/// (in all), the server's RSS before and at its peak, and the writer's rate before and
/// during the drain.
async fn catch_up(uri: &str, port: u16, laggards: usize, n: u64, size: usize, pid: Option<u32>) {
    let c = client(uri, 16).await;
    let db = c.database("bench");
    let coll = db.collection::<Document>("catchup");
    let _ = coll.drop().await;
    coll.insert_one(doc! {"warm": true}).await.unwrap();
    let mut streams = Vec::new();
    for _ in 0..laggards {
        let mut r = Raw::connect(port, 1).await.unwrap();
        let reply = r
            .command(&doc! {"aggregate": "catchup", "pipeline": [{"$changeStream": {}}], "cursor": {}, "$db": "bench"})
            .await
            .unwrap();
        let id = reply.get_document("cursor").unwrap().get_i64("id").unwrap();
        streams.push((r, id));
    }
    let pad = "x".repeat(size.saturating_sub(40));
    let start = Instant::now();
    let mut i = 0i64;
    while (i as u64) < n {
        let docs: Vec<Document> = (i..(i + 1000).min(n as i64))
            .map(|k| doc! {"i": k, "pad": &pad})
            .collect();
        i += docs.len() as i64;
        coll.insert_many(docs).await.unwrap();
    }
    let load_rate = n as f64 / start.elapsed().as_secs_f64();
    // The side writer: single-document inserts into another collection, one at a time,
    // flat out (durable commits: its rate is the commit pipeline's).
    let side = db.collection::<Document>("catchup_side");
    let _ = side.drop().await;
    let writer_rate = |secs: Duration, stop: Arc<std::sync::atomic::AtomicBool>| {
        let side = side.clone();
        let pad = pad.clone();
        async move {
            let t = Instant::now();
            let mut w = 0u64;
            while t.elapsed() < secs && !stop.load(Ordering::Relaxed) {
                side.insert_one(doc! {"k": w as i64, "pad": &pad})
                    .await
                    .unwrap();
                w += 1;
            }
            w as f64 / t.elapsed().as_secs_f64()
        }
    };
    let never = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let alone = writer_rate(Duration::from_secs(3), never).await;
    let rss_before = pid.map_or(0, rss_kib);
    let peak = Arc::new(AtomicU64::new(rss_before));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while !sampling.load(Ordering::Relaxed) {
                if let Some(p) = pid {
                    peak.fetch_max(rss_kib(p), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // One laggard drains alone (its rate is the figure); many drain beside the writer.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(laggards == 1));
    let during = tokio::spawn(writer_rate(Duration::from_secs(3600), stop.clone()));
    let t = Instant::now();
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|(r, id)| tokio::spawn(drain_raw(r, id, "catchup", n)))
        .collect();
    let mut total = 0u64;
    let mut complete = 0usize;
    for task in tasks {
        match task.await.unwrap() {
            Ok(got) => {
                total += got;
                complete += usize::from(got == n);
            }
            Err(e) => println!("catch-up: a stream failed: {e}"),
        }
    }
    let el = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let during = during.await.unwrap();
    sampling.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    println!(
        "catch-up: {laggards} streams each {n} events of {size} B behind (loaded at {load_rate:.0} docs/s): {complete} drained completely and in order, {total} events in {el:.1} s = {:.0} events/s; server RSS {} MB before, peak {} MB; side writer {alone:.0} docs/s alone, {during:.0} docs/s during the drain ({:.0}%; not run beside a single laggard)",
        total as f64 / el,
        rss_before / 1024,
        peak.load(Ordering::Relaxed) / 1024,
        during * 100.0 / alone.max(1.0)
    );
}
