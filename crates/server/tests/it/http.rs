// http: the HTTP listener — /metrics agrees with serverStatus, change streams as
// Server-Sent Events (ids are resume tokens, Last-Event-ID resumes, heartbeats move the
// position, the $match language's errors), CORS, and Basic authentication with the same
// privileges as the wire protocol.

use std::time::Duration;

use bson::{Document, doc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn spawn_http(adjust: impl FnOnce(&mut server::Config)) -> testkit::TestServer {
    testkit::spawn_with(|c| {
        c.http_port = Some(0);
        c.http_cors_origins = vec!["http://app.example".into()];
        c.http_heartbeat = Duration::from_millis(300);
        adjust(c);
    })
    .await
}

/// Sends a GET and returns the connection after the request went out.
async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// A whole (non-streaming) response: status, headers (lowercased names), body.
async fn fetch(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let mut h: Vec<(&str, &str)> = headers.to_vec();
    h.push(("Connection", "close"));
    let mut s = get(port, path, &h).await;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .unwrap();
    split(&String::from_utf8_lossy(&buf))
}

fn split(resp: &str) -> (u16, String, String) {
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_lowercase(), body.to_string())
}

/// Reads a streaming response until `done` holds for what has arrived.
async fn read_until(s: &mut TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if done(&text) {
            return text;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => return text,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => panic!("{e}"),
        }
    }
}

/// The SSE messages in a response so far: (event, id, data).
fn messages(text: &str) -> Vec<(String, String, String)> {
    // After the head, when the head is there; the chunk-size lines of the chunked
    // transfer match none of the fields.
    let body = match text.split_once("\r\n\r\n") {
        Some((head, b)) if head.starts_with("HTTP/") => b,
        _ => text,
    };
    let mut out = Vec::new();
    let mut cur = (String::from("message"), String::new(), String::new());
    for line in body.lines() {
        if let Some(v) = line.strip_prefix("event: ") {
            cur.0 = v.to_string();
        } else if let Some(v) = line.strip_prefix("id: ") {
            cur.1 = v.to_string();
        } else if let Some(v) = line.strip_prefix("data: ") {
            cur.2 = v.to_string();
            out.push(std::mem::replace(
                &mut cur,
                ("message".into(), String::new(), String::new()),
            ));
        }
    }
    out
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_agree_with_server_status() {
    let s = spawn_http(|_| {}).await;
    let hp = s.running.http_port.unwrap();
    let c = s.client.database("m").collection::<Document>("c");
    for i in 0..20 {
        c.insert_one(doc! {"_id": i}).await.unwrap();
    }
    c.find_one(doc! {"_id": 3}).await.unwrap();
    // A stream that is opened and then not read falls behind.
    let opened = s
        .client
        .database("m")
        .run_command(doc! {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {"batchSize": 0}})
        .await
        .unwrap();
    assert_ne!(
        opened
            .get_document("cursor")
            .unwrap()
            .get_i64("id")
            .unwrap(),
        0
    );
    for i in 20..70 {
        c.insert_one(doc! {"_id": i}).await.unwrap();
    }
    let (status, head, text) = fetch(hp, "/metrics", &[]).await;
    assert_eq!(status, 200, "{head}");
    let ss = s
        .client
        .database("admin")
        .run_command(doc! {"serverStatus": 1})
        .await
        .unwrap();
    let op = ss.get_document("opcounters").unwrap();
    assert_eq!(
        metric(&text, "eddy_opcounters_total{type=\"insert\"}"),
        crate::doc_num(op, "insert") as f64
    );
    assert_eq!(
        metric(&text, "eddy_opcounters_total{type=\"insert\"}"),
        70.0
    );
    assert!(metric(&text, "eddy_connections") >= 1.0);
    assert!(metric(&text, "eddy_log_fsyncs_total") >= 70.0);
    assert!(metric(&text, "eddy_log_written_bytes_total") > 0.0);
    assert!(metric(&text, "eddy_commit_group_size_count") >= 70.0);
    assert!(
        metric(
            &text,
            "eddy_command_duration_seconds_count{command=\"insert\"}"
        ) >= 70.0
    );
    assert_eq!(metric(&text, "eddy_change_streams_open"), 1.0);
    let lag = text
        .lines()
        .find(|l| l.starts_with("eddy_change_stream_lag_events{"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(lag.contains("ns=\"m.c\""), "{lag}");
    let behind: f64 = lag.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(behind >= 50.0, "{lag}");
    assert!(
        metric(&text, "eddy_oplog_last_timestamp_seconds")
            >= metric(&text, "eddy_oplog_first_timestamp_seconds")
    );
    assert!(metric(&text, "eddy_resident_memory_bytes") > 1e6);
    assert!(metric(&text, "eddy_cursors_open") >= 1.0);
    // The same figures under mongod's names.
    let lat = ss.get_document("opLatencies").unwrap();
    assert!(crate::doc_num(lat.get_document("writes").unwrap(), "ops") >= 70);
    let cmds = ss
        .get_document("metrics")
        .unwrap()
        .get_document("commands")
        .unwrap();
    assert!(crate::doc_num(cmds.get_document("insert").unwrap(), "total") >= 70);
    assert!(crate::doc_num(ss.get_document("mem").unwrap(), "resident") > 0);
    let eddy = ss.get_document("eddy").unwrap();
    assert!(crate::doc_num(eddy.get_document("log").unwrap(), "fsyncs") >= 70);
    assert_eq!(
        crate::doc_num(eddy.get_document("changeStreams").unwrap(), "open"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_resume_through_last_event_id() {
    let s = spawn_http(|_| {}).await;
    let hp = s.running.http_port.unwrap();
    let c = s.client.database("w").collection::<Document>("c");
    c.insert_one(doc! {"_id": "before"}).await.unwrap();
    let mut sse = get(
        hp,
        "/v1/watch/w/c?fullDocument=updateLookup&pipeline=%5B%7B%22%24match%22%3A%7B%22operationType%22%3A%7B%22%24in%22%3A%5B%22insert%22%2C%22update%22%5D%7D%7D%7D%5D",
        &[("Origin", "http://app.example")],
    )
    .await;
    let head = read_until(&mut sse, |t| t.contains("retry: 1000")).await;
    let (status, lower, _) = split(&head);
    assert_eq!(status, 200, "{head}");
    assert!(lower.contains("content-type: text/event-stream"), "{lower}");
    assert!(
        lower.contains("access-control-allow-origin: http://app.example"),
        "{lower}"
    );
    for i in 0..3 {
        c.insert_one(doc! {"_id": i, "v": i}).await.unwrap();
    }
    c.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 10}})
        .await
        .unwrap();
    c.delete_one(doc! {"_id": 2}).await.unwrap();
    let text = read_until(&mut sse, |t| {
        messages(t).iter().filter(|m| m.0 == "message").count() >= 4
    })
    .await;
    let events: Vec<_> = messages(&text)
        .into_iter()
        .filter(|m| m.0 == "message")
        .collect();
    let docs: Vec<serde_json::Value> = events
        .iter()
        .map(|m| serde_json::from_str(&m.2).unwrap())
        .collect();
    let ops: Vec<&str> = docs
        .iter()
        .map(|d| d["operationType"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["insert", "insert", "insert", "update"], "{text}");
    assert_eq!(docs[3]["fullDocument"]["v"], 10);
    for (m, d) in events.iter().zip(&docs) {
        assert_eq!(
            m.1,
            d["_id"]["_data"].as_str().unwrap(),
            "the id is the token"
        );
    }
    drop(sse);

    // A reconnect with Last-Event-ID gets exactly what came after that event.
    c.insert_one(doc! {"_id": 3}).await.unwrap();
    let mut again = get(hp, "/v1/watch/w/c", &[("Last-Event-ID", &events[1].1)]).await;
    let text = read_until(&mut again, |t| {
        messages(t).iter().filter(|m| m.0 == "message").count() >= 4
    })
    .await;
    let ids: Vec<serde_json::Value> = messages(&text)
        .into_iter()
        .filter(|m| m.0 == "message")
        .map(|m| {
            serde_json::from_str::<serde_json::Value>(&m.2).unwrap()["documentKey"]["_id"].clone()
        })
        .collect();
    assert_eq!(
        ids,
        [
            serde_json::json!(2),
            serde_json::json!(1),
            serde_json::json!(2),
            serde_json::json!(3)
        ]
    );

    // Idle, the heartbeat's id is the postBatchResumeToken, and it moves on.
    let text = read_until(&mut again, |t| {
        messages(t).iter().filter(|m| m.0 == "heartbeat").count() >= 1
    })
    .await;
    let beat = messages(&text)
        .into_iter()
        .find(|m| m.0 == "heartbeat")
        .expect("a heartbeat");
    let data: serde_json::Value = serde_json::from_str(&beat.2).unwrap();
    assert_eq!(
        beat.1,
        data["postBatchResumeToken"]["_data"].as_str().unwrap()
    );
}

#[tokio::test]
async fn bad_requests_get_mongodb_errors() {
    let s = spawn_http(|_| {}).await;
    let hp = s.running.http_port.unwrap();
    let (status, _, body) = fetch(
        hp,
        "/v1/watch/w/c?pipeline=%5B%7B%22%24match%22%3A%7B%22x%22%3A%7B%22%24bogus%22%3A1%7D%7D%7D%5D",
        &[],
    )
    .await;
    assert_eq!(status, 400);
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["errmsg"], "unknown operator: $bogus");
    assert_eq!(e["code"], 2);
    assert_eq!(e["codeName"], "BadValue");
    let (status, _, body) = fetch(hp, "/v1/watch/w/c?pipeline=%5B", &[]).await;
    assert_eq!(status, 400);
    assert!(body.contains("not valid JSON"), "{body}");
    let (status, _, body) = fetch(
        hp,
        "/v1/watch/w/c?pipeline=%5B%7B%22%24out%22%3A%22x%22%7D%5D",
        &[],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _, _) = fetch(hp, "/v1/watch/w/c?nope=1", &[]).await;
    assert_eq!(status, 400);
    let (status, _, _) = fetch(hp, "/nothing", &[]).await;
    assert_eq!(status, 404);
    // An origin not allowed gets no CORS header; a preflight from one allowed does.
    let (_, head, _) = fetch(hp, "/metrics", &[("Origin", "http://evil.example")]).await;
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    let mut pre = TcpStream::connect(("127.0.0.1", hp)).await.unwrap();
    pre.write_all(b"OPTIONS /v1/watch/w/c HTTP/1.1\r\nHost: x\r\nOrigin: http://app.example\r\nAccess-Control-Request-Headers: last-event-id\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    pre.read_to_end(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf).to_lowercase();
    assert!(head.starts_with("http/1.1 204"), "{head}");
    assert!(
        head.contains("access-control-allow-origin: http://app.example"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-headers: authorization, last-event-id"),
        "{head}"
    );
}

#[tokio::test]
async fn server_sent_events_authenticate_with_basic_and_keep_privileges() {
    let s = spawn_http(|c| c.auth = true).await;
    let hp = s.running.http_port.unwrap();
    s.client
        .database("admin")
        .run_command(doc! {"createUser": "root", "pwd": "rootpw", "roles": ["root"]})
        .await
        .unwrap();
    let uri = format!(
        "mongodb://root:rootpw@127.0.0.1:{}/?directConnection=true",
        s.port
    );
    let root = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let admin = root.database("admin");
    admin
        .run_command(
            doc! {"createUser": "reader", "pwd": "r", "roles": [{"role": "read", "db": "w"}]},
        )
        .await
        .unwrap();
    admin
        .run_command(doc! {"createUser": "other", "pwd": "o", "roles": [{"role": "read", "db": "elsewhere"}]})
        .await
        .unwrap();
    let basic = |u: &str, p: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    };

    let (status, head, body) = fetch(hp, "/v1/watch/w/c", &[]).await;
    assert_eq!(status, 401, "{body}");
    assert!(head.contains("www-authenticate: basic"), "{head}");
    let (status, _, body) = fetch(
        hp,
        "/v1/watch/w/c",
        &[("Authorization", &basic("reader", "wrong"))],
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("AuthenticationFailed"), "{body}");
    let (status, _, body) = fetch(
        hp,
        "/v1/watch/w/c",
        &[("Authorization", &basic("other", "o"))],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("Unauthorized"), "{body}");

    let auth = basic("reader", "r");
    let mut sse = get(hp, "/v1/watch/w/c", &[("Authorization", &auth)]).await;
    let head = read_until(&mut sse, |t| t.contains("retry:")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    root.database("w")
        .collection::<Document>("c")
        .insert_one(doc! {"_id": "secret"})
        .await
        .unwrap();
    let text = read_until(&mut sse, |t| t.contains("\"secret\"")).await;
    assert!(text.contains("\"secret\""), "{text}");
}
