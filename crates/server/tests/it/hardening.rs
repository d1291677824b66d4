// hardening: what the wire and command layers refuse, and the limits on connections.

use std::time::Duration;

use bson::{RawDocumentBuf, doc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{cmd_error, cursor_batch};

/// An OP_MSG whose body is exactly `body`'s bytes: the only way to send a command with a
/// repeated field, since `bson::Document` cannot hold one.
fn op_msg(request_id: i32, body: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + 1 + body.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as i32).to_le_bytes());
    m.extend_from_slice(&request_id.to_le_bytes());
    m.extend_from_slice(&0i32.to_le_bytes());
    m.extend_from_slice(&2013i32.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m.push(0);
    m.extend_from_slice(body);
    m
}

/// Reads one reply from `s`, or `None` when the server closed the connection; never
/// waits more than 5 s.
async fn read_reply(s: &mut TcpStream) -> Option<bson::Document> {
    tokio::time::timeout(Duration::from_secs(5), crate::read_reply(s))
        .await
        .expect("the server answers or closes")
}

async fn send_raw(port: u16, body: &RawDocumentBuf) -> bson::Document {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&op_msg(1, body.as_bytes())).await.unwrap();
    read_reply(&mut s).await.expect("a reply")
}

fn raw(fields: &[(&str, bson::Bson)]) -> RawDocumentBuf {
    let mut d = RawDocumentBuf::new();
    for (k, v) in fields {
        d.append(*k, bson::RawBson::try_from(v.clone()).unwrap());
    }
    d
}

#[tokio::test]
async fn commands_with_a_repeated_field_are_refused_and_change_nothing() {
    let s = testkit::spawn().await;
    let docs = bson::Bson::Array(vec![doc! {"_id": 1}.into()]);
    let twice = raw(&[
        ("insert", "c".into()),
        ("documents", docs.clone()),
        ("documents", bson::Bson::Array(vec![doc! {"_id": 2}.into()])),
        ("$db", "t".into()),
    ]);
    let r = send_raw(s.port, &twice).await;
    assert_eq!(r.get_f64("ok").unwrap(), 0.0, "{r}");
    assert_eq!(r.get_i32("code").unwrap(), 40413, "{r}");
    assert_eq!(
        r.get_str("errmsg").unwrap(),
        "BSON field 'insert.documents' is a duplicate field"
    );
    assert_eq!(r.get_str("codeName").unwrap(), "Location40413");

    let db_twice = raw(&[
        ("insert", "c".into()),
        ("documents", docs.clone()),
        ("$db", "t".into()),
        ("$db", "other".into()),
    ]);
    let r = send_raw(s.port, &db_twice).await;
    assert_eq!(r.get_i32("code").unwrap(), 40413, "{r}");

    let coll = s.client.database("t").collection::<bson::Document>("c");
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 0);

    // The same command without the repeat works, on the same kind of connection.
    let once = raw(&[
        ("insert", "c".into()),
        ("documents", docs),
        ("$db", "t".into()),
    ]);
    let r = send_raw(s.port, &once).await;
    assert_eq!(r.get_f64("ok").unwrap(), 1.0, "{r}");
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 1);
}

#[tokio::test]
async fn negative_batch_sizes_are_refused() {
    let s = testkit::spawn().await;
    let db = s.client.database("t");
    let coll = db.collection::<bson::Document>("c");
    coll.insert_many((0..5).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    let want = |what: &str| format!("BSON field '{what}' value must be >= 0, actual value '-1'");
    for cmd in [
        doc! {"find": "c", "batchSize": -1},
        doc! {"aggregate": "c", "pipeline": [], "cursor": {"batchSize": -1}},
        doc! {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {"batchSize": -1}},
    ] {
        let (code, _) = cmd_error(&db, cmd.clone()).await;
        assert_eq!(code, 51024, "{cmd}");
    }
    let err = db
        .run_command(doc! {"find": "c", "batchSize": -1})
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&want("batchSize")), "{err}");

    let r = db
        .run_command(doc! {"find": "c", "batchSize": 2})
        .await
        .unwrap();
    let id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    let (code, _) = cmd_error(
        &db,
        doc! {"getMore": id, "collection": "c", "batchSize": -1},
    )
    .await;
    assert_eq!(code, 51024);
    // The cursor survives the refusal; batchSize 0 means the default.
    let r = db
        .run_command(doc! {"getMore": id, "collection": "c", "batchSize": 0})
        .await
        .unwrap();
    let batch = cursor_batch(&r, "nextBatch");
    assert_eq!(batch.len(), 3);
}

#[tokio::test]
async fn connections_over_max_conns_are_closed_and_the_rest_work() {
    // Started without testkit's driver client, whose monitors would hold connections.
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = server::Config::new(dir.path().to_path_buf(), 0);
    cfg.max_conns = 3;
    let s = server::start(cfg).await.unwrap();
    let ping = wire::encode_msg_request(1, &doc! {"ping": 1, "$db": "admin"}, &[], false, None);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
        c.write_all(&ping).await.unwrap();
        assert!(read_reply(&mut c).await.is_some());
        held.push(c);
    }
    // The fourth is closed at once, without a reply.
    let mut extra = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    let _ = extra.write_all(&ping).await;
    assert!(read_reply(&mut extra).await.is_none());
    // The others are unaffected.
    for c in &mut held {
        c.write_all(&ping).await.unwrap();
        assert!(read_reply(c).await.is_some());
    }
    let status = {
        let c = &mut held[0];
        let cmd = doc! {"serverStatus": 1, "$db": "admin"};
        c.write_all(&wire::encode_msg_request(2, &cmd, &[], false, None))
            .await
            .unwrap();
        read_reply(c).await.unwrap()
    };
    let conns = status.get_document("connections").unwrap();
    assert_eq!(conns.get_i64("current").unwrap(), 3, "{conns}");
    assert_eq!(conns.get_i64("available").unwrap(), 0, "{conns}");
    // A slot frees when a connection closes.
    drop(held.pop());
    let mut again = None;
    for _ in 0..50 {
        let mut c = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
        c.write_all(&ping).await.unwrap();
        if read_reply(&mut c).await.is_some() {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a freed slot is reusable");
    s.shutdown();
}

#[tokio::test]
async fn a_half_sent_message_is_dropped_after_the_timeout() {
    let s = testkit::spawn_with(|c| c.partial_message_timeout = Duration::from_millis(1000)).await;
    let ping = wire::encode_msg_request(1, &doc! {"ping": 1, "$db": "admin"}, &[], false, None);

    // An idle connection that sent nothing stays open past the timeout...
    let mut idle = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    // ... but one that sent half a message is closed.
    let mut half = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    half.write_all(&ping[..ping.len() / 2]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), half.read(&mut buf))
        .await
        .expect("closed, not hanging");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");

    idle.write_all(&ping).await.unwrap();
    assert!(read_reply(&mut idle).await.is_some());

    // A message sent slowly, but within the timeout for each part, is served.
    let mut slow = TcpStream::connect(("127.0.0.1", s.port)).await.unwrap();
    slow.write_all(&ping[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    slow.write_all(&ping[10..]).await.unwrap();
    assert!(read_reply(&mut slow).await.is_some());
}
