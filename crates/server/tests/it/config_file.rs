// config_file: `eddy -f FILE` reads mongod.conf's shape, flags override it, unknown keys
// stop start-up with the key and its line.

use std::process::Stdio;
use std::time::Duration;

use bson::{Document, doc};
use tokio::process::Command;

use crate::crash::free_port;

async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("eddy did not start on {port}");
}

#[tokio::test]
async fn config_file_sets_the_server_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("eddy.log");
    let (file_port, flag_port) = (free_port(), free_port());
    let cfg = dir.path().join("eddy.yaml");
    std::fs::write(
        &cfg,
        format!(
            "# as mongod.conf\n\
             net:\n  port: {file_port}\n  bindIp: 127.0.0.1\n  maxIncomingConnections: 321\n\
             storage:\n  dbPath: {}\n  syncPeriodSecs: 2\n  oplogMinRetentionHours: 0.5\n\
             replication:\n  oplogSizeMB: 64\n\
             security:\n  authorization: enabled\n\
             systemLog:\n  destination: file\n  path: {}\n  logAppend: true\n  verbosity: 1\n\
             operationProfiling:\n  slowOpThresholdMs: 250\n  slowOpSampleRate: 0.5\n\
             setParameter:\n  ttlMonitorSleepSecs: 7\n  scramIterationCount: 6000\n",
            data.display(),
            log.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(["-f", cfg.to_str().unwrap()])
        .args(["--port", &flag_port.to_string()])
        .args(["--setParameter", "ttlMonitorSleepSecs=9"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_listening(flag_port).await;
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", file_port))
            .await
            .is_err(),
        "the flag's port replaced the file's"
    );

    // security.authorization: a command needs a user; the first is made from localhost.
    let anon = testkit::client_for(flag_port).await;
    let err = anon
        .database("t")
        .run_command(doc! {"find": "c"})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Unauthorized"), "{err}");
    anon.database("admin")
        .run_command(doc! {"createUser": "root", "pwd": "pw", "roles": ["root"]})
        .await
        .unwrap();
    let uri = format!("mongodb://root:pw@127.0.0.1:{flag_port}/?directConnection=true");
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let admin = client.database("admin");

    let p = admin
        .run_command(doc! {"getParameter": 1, "ttlMonitorSleepSecs": 1, "scramIterationCount": 1, "logLevel": 1})
        .await
        .unwrap();
    assert_eq!(p.get_i32("ttlMonitorSleepSecs").unwrap(), 9, "{p}");
    assert_eq!(p.get_i32("scramIterationCount").unwrap(), 6000, "{p}");
    assert_eq!(
        p.get_i32("logLevel").unwrap(),
        1,
        "systemLog.verbosity: {p}"
    );
    let parsed = admin
        .run_command(doc! {"getCmdLineOpts": 1})
        .await
        .unwrap()
        .get_document("parsed")
        .unwrap()
        .clone();
    let get = |path: &str| -> bson::Bson {
        let mut d: &Document = &parsed;
        let parts: Vec<_> = path.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            d = d
                .get_document(p)
                .unwrap_or_else(|_| panic!("{path} in {parsed}"));
        }
        d.get(parts[parts.len() - 1])
            .unwrap_or_else(|| panic!("{path} in {parsed}"))
            .clone()
    };
    assert_eq!(get("net.port"), bson::Bson::Int32(i32::from(flag_port)));
    assert_eq!(get("net.bindIp"), bson::Bson::String("127.0.0.1".into()));
    assert_eq!(get("net.maxIncomingConnections"), bson::Bson::Int64(321));
    assert_eq!(
        get("storage.dbPath"),
        bson::Bson::String(data.display().to_string())
    );
    assert_eq!(get("storage.syncPeriodSecs"), bson::Bson::Double(2.0));
    assert_eq!(
        get("storage.oplogMinRetentionHours"),
        bson::Bson::Double(0.5)
    );
    assert_eq!(get("replication.oplogSizeMB"), bson::Bson::Int64(64));
    assert_eq!(
        get("security.authorization"),
        bson::Bson::String("enabled".into())
    );
    assert_eq!(get("config"), bson::Bson::String(cfg.display().to_string()));

    // operationProfiling: `profile: -1` reports the settings without changing them.
    let prof = client
        .database("t")
        .run_command(doc! {"profile": -1})
        .await
        .unwrap();
    assert_eq!(crate::doc_num(&prof, "slowms"), 250, "{prof}");
    assert_eq!(prof.get_f64("sampleRate").unwrap(), 0.5, "{prof}");

    // systemLog: the file holds mongod's JSON lines (a file is not a terminal).
    assert!(data.join("eddy.lock").exists() || data.is_dir());
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let first = text.lines().next().expect("log lines");
    let line: serde_json::Value = serde_json::from_str(first).unwrap();
    for k in ["t", "s", "c", "id", "msg"] {
        assert!(line.get(k).is_some(), "{k} in {first}");
    }
}

#[tokio::test]
async fn replica_set_name_comes_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("eddy.yaml");
    std::fs::write(
        &cfg,
        format!(
            "net:\n  port: {port}\nstorage:\n  dbPath: {}\nreplication:\n  replSetName: fromfile\n",
            dir.path().join("d").display()
        ),
    )
    .unwrap();
    let _child = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(["--config", cfg.to_str().unwrap(), "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_listening(port).await;
    let client = testkit::client_for(port).await;
    let admin = client.database("admin");
    admin
        .run_command(doc! {"replSetInitiate": {"_id": "fromfile", "members": [{"_id": 0, "host": format!("localhost:{port}")}]}})
        .await
        .unwrap();
    // The member takes its new configuration in after replSetInitiate returns.
    let t0 = std::time::Instant::now();
    let hello = loop {
        let hello = admin.run_command(doc! {"hello": 1}).await.unwrap();
        if hello.contains_key("setName") || t0.elapsed() > Duration::from_secs(10) {
            break hello;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(hello.get_str("setName").unwrap(), "fromfile", "{hello}");
}

#[tokio::test]
async fn unknown_keys_and_bad_values_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    for (text, must) in [
        ("net:\n  port: 1\n  bindIpp: x\n", vec!["bindIpp", "line 3"]),
        ("storage:\n  engine: wiredTiger\n", vec!["engine", "line 2"]),
        (
            "processManagement:\n  fork: true\n",
            vec!["processManagement", "line 1"],
        ),
        (
            "security:\n  authorization: sometimes\n",
            vec!["sometimes", "line 2"],
        ),
        (
            "setParameter:\n  noSuchParameter: 1\n",
            vec!["noSuchParameter"],
        ),
        ("net: [1\n", vec!["eddy.yaml"]),
    ] {
        let cfg = dir.path().join("eddy.yaml");
        std::fs::write(&cfg, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_eddy"))
            .args(["-f", cfg.to_str().unwrap(), "--dbpath"])
            .arg(dir.path().join("d"))
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        for m in must {
            assert!(err.contains(m), "{text:?}: {err}");
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(["-f", dir.path().join("missing.yaml").to_str().unwrap()])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.yaml"));
}
