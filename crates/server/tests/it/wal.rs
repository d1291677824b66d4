// wal: the write-ahead log under kill -9: acknowledged writes survive, unacknowledged ones
// are whole or absent, change streams resume with exactly the missing events, torn tails
// are dropped and damage refuses to start.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bson::{Bson, Document, doc};
use futures_util::{StreamExt, TryStreamExt};
use mongodb::Client;
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::ClientOptions;

use crate::crash::{free_port, start, start_with};

/// A small deterministic generator, seeded so that a failing run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the workload knows it was told.
#[derive(Default, Clone)]
struct Acked {
    /// Single inserts acknowledged.
    inserts: Vec<String>,
    /// insertMany groups: acknowledged, or cut by the kill (all or none must be there).
    groups: Vec<(Vec<String>, bool)>,
    /// `$inc`s acknowledged, and ones in flight at the kill.
    incs: i64,
    incs_unknown: i64,
    /// Deletes acknowledged.
    deletes: Vec<String>,
    /// Transactions committed (both documents present), or cut by the kill.
    txns: Vec<(String, bool)>,
}

/// One change event as the test compares them.
type Seen = (String, String, String);

fn summary(e: &Document) -> Seen {
    let op = e.get_str("operationType").unwrap_or("?").to_string();
    let coll = e
        .get_document("ns")
        .ok()
        .and_then(|n| n.get_str("coll").ok())
        .unwrap_or("")
        .to_string();
    let key = e
        .get_document("documentKey")
        .ok()
        .and_then(|k| k.get("_id"))
        .map(ToString::to_string)
        .unwrap_or_default();
    (op, coll, key)
}

async fn workload(client: Client, cycle: u32, acked: Arc<Mutex<Acked>>, seed: u64) {
    let db = client.database("wal");
    let mut tasks = Vec::new();
    // Single inserts.
    {
        let (db, acked) = (db.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let c = db.collection::<Document>("a");
            for n in 0.. {
                let id = format!("i-{cycle}-{n}");
                if c.insert_one(doc! {"_id": &id, "pad": "x".repeat(300)})
                    .await
                    .is_err()
                {
                    return;
                }
                acked.lock().unwrap().inserts.push(id);
            }
        }));
    }
    // insertMany of five.
    {
        let (db, acked) = (db.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let c = db.collection::<Document>("a");
            for n in 0.. {
                let ids: Vec<String> = (0..5).map(|k| format!("m-{cycle}-{n}-{k}")).collect();
                let docs = ids.iter().map(|id| doc! {"_id": id, "group": n});
                let ok = c.insert_many(docs).await.is_ok();
                acked.lock().unwrap().groups.push((ids, ok));
                if !ok {
                    return;
                }
            }
        }));
    }
    // Updates of one counter.
    {
        let (db, acked) = (db.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let c = db.collection::<Document>("b");
            loop {
                let r = c
                    .update_one(doc! {"_id": "counter"}, doc! {"$inc": {"n": 1}})
                    .upsert(true)
                    .await;
                let mut a = acked.lock().unwrap();
                if r.is_err() {
                    a.incs_unknown += 1;
                    return;
                }
                a.incs += 1;
            }
        }));
    }
    // Deletes from this cycle's pool.
    {
        let (db, acked) = (db.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let c = db.collection::<Document>("c");
            let mut rng = Rng(seed | 1);
            loop {
                let id = format!("d-{cycle}-{}", rng.below(200));
                if c.delete_one(doc! {"_id": &id}).await.is_err() {
                    return;
                }
                acked.lock().unwrap().deletes.push(id);
            }
        }));
    }
    // Transactions over two collections.
    {
        let (client, acked) = (client.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let (x, y) = (
                client.database("wal").collection::<Document>("x"),
                client.database("wal").collection::<Document>("y"),
            );
            for n in 0.. {
                let id = format!("t-{cycle}-{n}");
                let r: mongodb::error::Result<()> = async {
                    let mut s = client.start_session().await?;
                    s.start_transaction().await?;
                    x.insert_one(doc! {"_id": &id}).session(&mut s).await?;
                    y.insert_one(doc! {"_id": &id}).session(&mut s).await?;
                    s.commit_transaction().await
                }
                .await;
                let ok = r.is_ok();
                acked.lock().unwrap().txns.push((id, ok));
                if !ok {
                    return;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn ids(client: &Client, coll: &str) -> HashSet<String> {
    let docs: Vec<Document> = client
        .database("wal")
        .collection::<Document>(coll)
        .find(doc! {})
        .projection(doc! {"_id": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    docs.iter()
        .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
        .collect()
}

/// Everything acknowledged is there; everything cut by a kill is whole or absent.
async fn check(client: &Client, acked: &Acked, cycle: u32) {
    let a = ids(client, "a").await;
    for id in &acked.inserts {
        assert!(
            a.contains(id),
            "cycle {cycle}: acknowledged insert {id} lost"
        );
    }
    for (group, ok) in &acked.groups {
        let n = group.iter().filter(|id| a.contains(*id)).count();
        if *ok {
            assert_eq!(
                n, 5,
                "cycle {cycle}: acknowledged insertMany {group:?} incomplete"
            );
        } else {
            assert!(
                n == 0 || n == 5,
                "cycle {cycle}: insertMany {group:?} half applied ({n} of 5)"
            );
        }
    }
    let counter = client
        .database("wal")
        .collection::<Document>("b")
        .find_one(doc! {"_id": "counter"})
        .await
        .unwrap()
        .map_or(0, |d| match d.get("n") {
            Some(Bson::Int32(n)) => i64::from(*n),
            Some(Bson::Int64(n)) => *n,
            _ => 0,
        });
    assert!(
        counter >= acked.incs && counter <= acked.incs + acked.incs_unknown,
        "cycle {cycle}: counter {counter}, acknowledged {} (+{} in flight)",
        acked.incs,
        acked.incs_unknown
    );
    let c = ids(client, "c").await;
    for id in &acked.deletes {
        assert!(
            !c.contains(id),
            "cycle {cycle}: acknowledged delete of {id} undone"
        );
    }
    let (x, y) = (ids(client, "x").await, ids(client, "y").await);
    assert_eq!(x, y, "cycle {cycle}: a transaction is half applied");
    for (id, ok) in &acked.txns {
        if *ok {
            assert!(
                x.contains(id),
                "cycle {cycle}: committed transaction {id} lost"
            );
        }
    }
}

/// Reads a database's change stream into `seen`, remembering the last resume token.
fn consume(
    client: Client,
    start: Option<ResumeToken>,
    at: Option<bson::Timestamp>,
    seen: Arc<Mutex<(Vec<Seen>, Option<ResumeToken>)>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let db = client.database("wal");
        let mut w = db.watch().max_await_time(Duration::from_millis(100));
        if let Some(t) = start {
            w = w.resume_after(t);
        } else if let Some(at) = at {
            w = w.start_at_operation_time(at);
        }
        let mut cs = match w.await {
            Ok(cs) => cs,
            Err(e) => {
                eprintln!("change stream did not open: {e}");
                return;
            }
        };
        loop {
            match cs.next().await {
                Some(Ok(e)) => {
                    let raw = bson::to_document(&e).unwrap();
                    let mut s = seen.lock().unwrap();
                    s.0.push(summary(&raw));
                    s.1 = Some(e.id.clone());
                }
                Some(Err(e)) => {
                    eprintln!("change stream ended: {e}");
                    return;
                }
                None => return,
            }
        }
    })
}

/// A client that gives up quickly on a server that was killed (instead of the driver's
/// 30 s of server selection for every write in flight).
async fn quick_client(port: u16) -> Client {
    let uri = format!(
        "mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=300&connectTimeoutMS=300"
    );
    Client::with_options(ClientOptions::parse(uri).await.unwrap()).unwrap()
}

#[tokio::test]
async fn kill_9_under_mixed_load_20_cycles() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill_9_under_mixed_load: seed {seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let seen = Arc::new(Mutex::new((Vec::<Seen>::new(), None)));
    let mut first_time = None;
    for cycle in 0..20u32 {
        let mut child = start(dir.path(), port).await;
        let client = quick_client(port).await;
        // What survived the last kill.
        let known = acked.lock().unwrap().clone();
        check(&client, &known, cycle).await;
        if first_time.is_none() {
            // Streams read history from just after this first write.
            let r = client
                .database("wal")
                .run_command(doc! {"create": "a"})
                .await
                .unwrap();
            let t = r.get_timestamp("operationTime").unwrap();
            first_time = Some(bson::Timestamp {
                time: t.time,
                increment: t.increment + 1,
            });
        }
        let pool: Vec<Document> = (0..200)
            .map(|k| doc! {"_id": format!("d-{cycle}-{k}")})
            .collect();
        client
            .database("wal")
            .collection::<Document>("c")
            .insert_many(pool)
            .await
            .unwrap();
        let token = seen.lock().unwrap().1.clone();
        let consumer = consume(client.clone(), token, first_time, seen.clone());
        let load = tokio::spawn(workload(client.clone(), cycle, acked.clone(), rng.next()));
        tokio::time::sleep(Duration::from_millis(150 + rng.below(350))).await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        let _ = load.await;
        consumer.abort();
        let _ = consumer.await;
    }
    // A last start: everything checks, and the stream, resumed from its last token,
    // delivers exactly what a stream from the start of the history would.
    let _child = start(dir.path(), port).await;
    let client = quick_client(port).await;
    let known = acked.lock().unwrap().clone();
    check(&client, &known, 20).await;
    let token = seen.lock().unwrap().1.clone();
    let consumer = consume(client.clone(), token, first_time, seen.clone());
    let reference = Arc::new(Mutex::new((Vec::<Seen>::new(), None)));
    let full = consume(client.clone(), None, first_time, reference.clone());
    let mut last = (0, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = (
            seen.lock().unwrap().0.len(),
            reference.lock().unwrap().0.len(),
        );
        if now == last && now.0 == now.1 {
            break;
        }
        last = now;
    }
    consumer.abort();
    full.abort();
    let (got, want) = (
        seen.lock().unwrap().0.clone(),
        reference.lock().unwrap().0.clone(),
    );
    {
        let a = acked.lock().unwrap();
        eprintln!(
            "kill_9_under_mixed_load: acknowledged {} inserts, {} insertMany, {} $inc (+{} in flight), {} deletes, {} transactions; {} change events",
            a.inserts.len(),
            a.groups.iter().filter(|g| g.1).count(),
            a.incs,
            a.incs_unknown,
            a.deletes.len(),
            a.txns.iter().filter(|t| t.1).count(),
            want.len()
        );
    }
    assert!(
        want.len() > 1000,
        "the workload wrote something: {}",
        want.len()
    );
    assert_eq!(
        got.len(),
        want.len(),
        "resumed streams saw each event exactly once"
    );
    let first_diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert!(
        first_diff.is_none(),
        "resumed streams saw the events in commit order; first difference at {first_diff:?}"
    );
}

/// Writes `n` documents one by one and returns how many the server acknowledged.
async fn insert_n(port: u16, coll: &str, n: i32) {
    let client = testkit::client_for(port).await;
    let c = client.database("wal").collection::<Document>(coll);
    for i in 0..n {
        c.insert_one(doc! {"_id": i, "pad": "y".repeat(500)})
            .await
            .unwrap();
    }
}

fn eddy() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_eddy"))
}

/// The newest segment file and its frames' offsets and lengths, as `eddy log inspect`
/// does not print offsets: read from the frame headers.
fn frames_of(path: &std::path::Path) -> Vec<(u64, u64)> {
    let b = std::fs::read(path).unwrap();
    let mut at = 64usize;
    let mut out = Vec::new();
    while at + 56 <= b.len() && b[at..at + 4] != [0, 0, 0, 0] {
        let len = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
        out.push((at as u64, len as u64));
        at = (at + len).div_ceil(8) * 8;
    }
    out
}

fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_record_torn_by_the_crash_is_dropped_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = start(dir.path(), port).await;
    insert_n(port, "torn", 40).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    // Tear the last frame in the middle, as a crash during its write would have.
    let seg = segments(dir.path())
        .into_iter()
        .rev()
        .find(|p| !frames_of(p).is_empty())
        .unwrap();
    let (at, len) = *frames_of(&seg).last().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; len as usize / 2], at + len / 2)
        .unwrap();
    drop(f);
    let out = eddy()
        .args(["log", "verify", "--dbpath", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "a torn tail is not damage: {text}");
    assert!(
        text.contains("torn tail") && text.contains(&format!("offset {at}")),
        "{text}"
    );
    let _child = start(dir.path(), port).await;
    let client = testkit::client_for(port).await;
    let c = client.database("wal").collection::<Document>("torn");
    assert_eq!(
        c.count_documents(doc! {}).await.unwrap(),
        39,
        "all but the torn write"
    );
    assert!(c.find_one(doc! {"_id": 39}).await.unwrap().is_none());
    c.insert_one(doc! {"_id": 39}).await.unwrap();
    assert_eq!(c.count_documents(doc! {}).await.unwrap(), 40);
}

#[tokio::test]
async fn a_flipped_byte_in_an_old_segment_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // 16 MB of oplog: 1 MB segments.
    let mut child = start_with(dir.path(), port, &["--oplogSize", "16"]).await;
    let client = testkit::client_for(port).await;
    let c = client.database("wal").collection::<Document>("old");
    for b in 0..30 {
        let docs = (0..100).map(|i| doc! {"_id": b * 100 + i, "pad": "z".repeat(500)});
        c.insert_many(docs).await.unwrap();
    }
    drop(client);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "several segments: {segs:?}");
    let old = &segs[0];
    let (at, _) = frames_of(old)[1];
    let f = std::fs::OpenOptions::new().write(true).open(old).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x5A], at + 200).unwrap();
    drop(f);
    let name = old.file_name().unwrap().to_str().unwrap().to_string();
    let out = eddy()
        .args([
            "--port",
            &free_port().to_string(),
            "--dbpath",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "start-up refuses");
    assert!(
        err.contains(&name) && err.contains(&format!("offset {at}")),
        "{err}"
    );
    let out = eddy()
        .args(["log", "verify", "--dbpath", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "verify exits non-zero: {text}");
    assert!(
        text.contains(&name) && text.contains(&format!("offset {at}")),
        "{text}"
    );
}
