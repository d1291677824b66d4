// protocol: malformed messages get an error or close only their own connection.

use std::time::Duration;

use bson::doc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn roundtrip(port: u16, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = vec![0u8; 1 << 16];
    match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(buf[..n].to_vec()),
        _ => None,
    }
}

fn reply_doc(bytes: &[u8]) -> bson::Document {
    let frame = wire::decode(bytes).expect("a valid reply");
    match frame.request {
        wire::Request::Msg(m) => m.body,
        wire::Request::Query(_) => panic!("unexpected"),
    }
}

#[tokio::test]
async fn malformed_input_does_not_hurt_other_connections() {
    let s = testkit::spawn().await;
    let port = s.port;
    let ping = wire::encode_msg_request(7, &doc! {"ping": 1, "$db": "admin"}, &[], false, None);

    // Bad checksum: an error reply, and the connection stays usable.
    let mut bad_sum =
        wire::encode_msg_request(8, &doc! {"ping": 1, "$db": "admin"}, &[], true, None);
    let last = bad_sum.len() - 1;
    bad_sum[last] ^= 0xFF;
    let r = roundtrip(port, &bad_sum).await.expect("an error reply");
    assert_eq!(reply_doc(&r).get_f64("ok").unwrap(), 0.0);

    // Bad BSON inside a well-framed message.
    let mut bad_bson = ping.clone();
    let n = bad_bson.len();
    bad_bson[n - 2] = 0x7F;
    let r = roundtrip(port, &bad_bson).await.expect("an error reply");
    assert_eq!(reply_doc(&r).get_f64("ok").unwrap(), 0.0);

    // Unknown opcode.
    let mut unknown = ping.clone();
    unknown[12..16].copy_from_slice(&9999i32.to_le_bytes());
    let r = roundtrip(port, &unknown).await.expect("an error reply");
    assert_eq!(reply_doc(&r).get_f64("ok").unwrap(), 0.0);

    // Lying lengths: too small, too large: the connection is closed.
    let mut tiny = ping.clone();
    tiny[0..4].copy_from_slice(&3i32.to_le_bytes());
    assert!(roundtrip(port, &tiny).await.is_none());
    let mut huge = ping.clone();
    huge[0..4].copy_from_slice(&i32::MAX.to_le_bytes());
    assert!(roundtrip(port, &huge).await.is_none());
    // Truncated: the server waits for the rest; closing the socket ends it.
    {
        let mut t = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        t.write_all(&ping[..ping.len() / 2]).await.unwrap();
    }

    // A well-formed ping still works on a fresh connection, and through the driver.
    let r = roundtrip(port, &ping).await.expect("reply");
    assert_eq!(reply_doc(&r).get_f64("ok").unwrap(), 1.0);
    s.client
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .unwrap();

    // Legacy OP_QUERY handshake gets an OP_REPLY.
    let q = wire::encode_query_request(3, "admin.$cmd", &doc! {"isMaster": 1});
    let r = roundtrip(port, &q).await.expect("reply");
    assert_eq!(
        i32::from_le_bytes(r[12..16].try_into().unwrap()),
        wire::op::REPLY
    );

    // Compressed requests get compressed replies.
    for c in [
        wire::Compressor::Snappy,
        wire::Compressor::Zlib,
        wire::Compressor::Zstd,
    ] {
        let m =
            wire::encode_msg_request(11, &doc! {"ping": 1, "$db": "admin"}, &[], false, Some(c));
        let r = roundtrip(port, &m).await.expect("reply");
        assert_eq!(
            i32::from_le_bytes(r[12..16].try_into().unwrap()),
            wire::op::COMPRESSED
        );
        assert_eq!(reply_doc(&r).get_f64("ok").unwrap(), 1.0);
    }
    // unacknowledged write (moreToCome): no reply, but it is applied.
    let w = wire::encode_msg_request(
        12,
        &doc! {"insert": "u", "documents": [{"_id": 1}], "$db": "t", "writeConcern": {"w": 0}},
        &[],
        false,
        None,
    );
    let mut flagged = w.clone();
    flagged[16..20].copy_from_slice(&wire::flags::MORE_TO_COME.to_le_bytes());
    let mut sock = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    sock.write_all(&flagged).await.unwrap();
    sock.write_all(&ping).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = sock.read(&mut buf).await.unwrap();
    assert_eq!(
        reply_doc(&buf[..n]).get_f64("ok").unwrap(),
        1.0,
        "the first reply is the ping's"
    );
    let c = s.client.database("t").collection::<bson::Document>("u");
    assert_eq!(c.count_documents(doc! {}).await.unwrap(), 1);
}
