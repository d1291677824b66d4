// crash: kill -9 during acknowledged writes loses nothing and duplicates nothing.

use std::process::Stdio;
use std::time::Duration;

use bson::doc;
use tokio::process::{Child, Command};

/// A port nothing listens on now.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the `eddy` binary as its own process (so tests can `kill -9` it) and waits
/// until it accepts connections.
pub(crate) async fn start(dir: &std::path::Path, port: u16) -> Child {
    start_with(dir, port, &[]).await
}

/// Like [`start`], with more command-line flags.
pub(crate) async fn start_with(dir: &std::path::Path, port: u16, extra: &[&str]) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args([
            "--port",
            &port.to_string(),
            "--dbpath",
            dir.to_str().unwrap(),
            "--quiet",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("eddy did not start");
}

#[tokio::test]
async fn sigkill_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = start(dir.path(), port).await;
    let client = testkit::client_for(port).await;
    let c = client.database("crash").collection::<bson::Document>("c");
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = {
        let acked = acked.clone();
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..100_000 {
                if c.insert_one(doc! {"_id": i}).await.is_err() {
                    break;
                }
                acked.lock().unwrap().push(i);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let _ = writer.await;
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 10,
        "some writes were acknowledged before the kill"
    );

    let _child = start(dir.path(), port).await;
    let client = testkit::client_for(port).await;
    let c = client.database("crash").collection::<bson::Document>("c");
    let n = c.count_documents(doc! {}).await.unwrap() as usize;
    assert!(n >= acked.len(), "found {n}, acknowledged {}", acked.len());
    assert!(
        n <= acked.len() + 1,
        "at most the one in-flight write extra"
    );
    for i in acked.iter().step_by(97) {
        assert_eq!(c.count_documents(doc! {"_id": *i}).await.unwrap(), 1);
    }
    // The oplog survived with them: one insert entry per document.
    let oplog = client
        .database("local")
        .collection::<bson::Document>("oplog.rs");
    assert_eq!(
        oplog
            .count_documents(doc! {"op": "i", "ns": "crash.c"})
            .await
            .unwrap() as usize,
        n
    );
}

#[tokio::test]
async fn second_server_on_same_dbpath_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _child = start(dir.path(), port).await;
    let out = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args([
            "--port",
            &free_port().to_string(),
            "--dbpath",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another eddy process"));
}

#[tokio::test]
async fn retryable_write_record_survives_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = start(dir.path(), port).await;
    let lsid = doc! {"id": bson::Uuid::new()};
    let cmd = doc! {
        "update": "r",
        "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}}, "upsert": true}],
        "lsid": lsid,
        "txnNumber": 1i64,
        "$db": "rw",
    };
    let first = crate::raw_command(port, cmd.clone()).await;
    assert_eq!(first.get_i32("n").unwrap(), 1);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let _child = start(dir.path(), port).await;
    let r = crate::raw_command(port, cmd).await;
    assert_eq!(
        r.get_i32("n").unwrap(),
        1,
        "the retry answers as the first attempt did"
    );
    let client = testkit::client_for(port).await;
    let d = client
        .database("rw")
        .collection::<bson::Document>("r")
        .find_one(doc! {"_id": 1})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.get_i32("n").unwrap(), 1, "and does not apply twice");
}

#[tokio::test]
async fn cluster_parameters_persist_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = start(dir.path(), port).await;
    let cmd = doc! {"setClusterParameter": {"changeStreamOptions": {"preAndPostImages": {"expireAfterSeconds": 3600}}}, "$db": "admin"};
    let r = crate::raw_command(port, cmd).await;
    assert_eq!(r.get_f64("ok").unwrap(), 1.0, "{r}");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let _child = start(dir.path(), port).await;
    let r = crate::raw_command(
        port,
        doc! {"getClusterParameter": "changeStreamOptions", "$db": "admin"},
    )
    .await;
    let p = r.get_array("clusterParameters").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(
        p.get_document("preAndPostImages")
            .unwrap()
            .get_i64("expireAfterSeconds")
            .unwrap(),
        3600
    );
}
