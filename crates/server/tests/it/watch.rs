// watch: `eddy watch` tails a change stream as a separate process; with --state and
// --out it writes every event exactly once across kill -9 of itself and of the server.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bson::doc;
use tokio::process::{Child, Command};

use crate::crash::{free_port, start};

fn watcher(port: u16, dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_eddy"))
        .arg("watch")
        .arg(format!("mongodb://127.0.0.1:{port}/?directConnection=true"))
        .args(["--db", "w", "--coll", "c", "--max-await-ms", "100"])
        .args(["--filter", r#"{"operationType": "insert"}"#])
        .arg("--state")
        .arg(dir.join("state.json"))
        .arg("--out")
        .arg(dir.join("out.jsonl"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The `_id`s of the inserted documents in the output file, in order.
fn ids(dir: &Path) -> Vec<i64> {
    let text = std::fs::read_to_string(dir.join("out.jsonl")).unwrap_or_default();
    text.lines()
        .filter(|l| l.ends_with('}'))
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            v["fullDocument"]["_id"]["$numberLong"]
                .as_str()
                .unwrap_or_else(|| panic!("{l}"))
                .parse()
                .unwrap()
        })
        .collect()
}

/// A pseudo-random number of milliseconds in `lo..hi`, from the clock.
fn jitter(lo: u64, hi: u64) -> u64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    lo + u64::from(n) % (hi - lo)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_exactly_once_after_kill_9() {
    const N: i64 = 3000;
    let data = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = start(data.path(), port).await;
    let client = testkit::client_for(port).await;
    client.database("w").create_collection("c").await.unwrap();
    let mut w = watcher(port, out.path());
    // Let the first watcher open its stream and save a position before any insert.
    let t0 = Instant::now();
    while !out.path().join("state.json").exists() {
        assert!(t0.elapsed() < Duration::from_secs(10), "no state saved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let writer = tokio::spawn(async move {
        let c = client.database("w").collection::<bson::Document>("c");
        let mut i = 0;
        while i < N {
            match c.insert_one(doc! {"_id": i, "pad": "x".repeat(200)}).await {
                Ok(_) => i += 1,
                // The server is being restarted: that insert either landed (and shows as a
                // duplicate key now) or did not.
                Err(e) if e.to_string().contains("E11000") => i += 1,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    // kill -9 the watcher eight times while the inserts run, then the server once.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(jitter(50, 400))).await;
        w.start_kill().unwrap();
        w.wait().await.unwrap();
        w = watcher(port, out.path());
    }
    tokio::time::sleep(Duration::from_millis(jitter(50, 300))).await;
    server.start_kill().unwrap();
    server.wait().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _server = start(data.path(), port).await;
    writer.await.unwrap();
    let t0 = Instant::now();
    while (ids(out.path()).len() as i64) < N && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.start_kill().unwrap();
    let got = ids(out.path());
    let want: Vec<i64> = (0..N).collect();
    if got != want {
        let dup = got.windows(2).find(|p| p[1] <= p[0]);
        let missing = want.iter().find(|i| !got.contains(i));
        panic!(
            "{} events, first out of order {dup:?}, first missing {missing:?}",
            got.len()
        );
    }
}

#[tokio::test]
async fn watch_explains_a_bad_filter_and_ends_on_invalidate() {
    let s = testkit::spawn().await;
    let uri = format!("mongodb://127.0.0.1:{}/?directConnection=true", s.port);
    let run = |args: Vec<&'static str>| {
        let uri = uri.clone();
        async move {
            Command::new(env!("CARGO_BIN_EXE_eddy"))
                .arg("watch")
                .arg(uri)
                .args(args)
                .output()
                .await
                .unwrap()
        }
    };
    let o = run(vec!["--db", "w", "--filter", r#"{"x": {"$bogus": 1}}"#]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("unknown operator: $bogus") && err.contains("code 2"),
        "{err}"
    );
    let o = run(vec!["--filter", "{x: 1"]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--filter: not valid JSON"), "{err}");
    let o = run(vec!["--coll", "c"]).await;
    assert_eq!(o.status.code(), Some(2), "--coll needs --db");
    let o = run(vec!["--resume-after", "zz"]).await;
    assert_eq!(o.status.code(), Some(2));

    // A collection stream prints the drop and the invalidate, then exits 0.
    s.client
        .database("w")
        .create_collection("gone")
        .await
        .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .arg("watch")
        .arg(&uri)
        .args([
            "--db",
            "w",
            "--coll",
            "gone",
            "--format",
            "json",
            "--max-await-ms",
            "100",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = s.client.database("w").collection::<bson::Document>("gone");
    c.insert_one(doc! {"_id": 1}).await.unwrap();
    c.drop().await.unwrap();
    let o = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("watch exits after the invalidate")
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let ops: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["operationType"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ops, ["insert", "drop", "invalidate"]);
}

#[tokio::test]
async fn watch_help_documents_every_flag() {
    let o = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(["watch", "--help"])
        .output()
        .await
        .unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    for flag in [
        "[URI]",
        "--db",
        "--coll",
        "--filter",
        "--full-document ",
        "--full-document-before-change",
        "--resume-after",
        "--start-at",
        "--state",
        "--out",
        "--format",
        "--limit",
        "--batch-size",
        "--max-await-ms",
        "Exit status",
    ] {
        assert!(help.contains(flag), "{flag} in {help}");
    }
}
