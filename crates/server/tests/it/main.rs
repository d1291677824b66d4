//! Integration tests: each starts the real server on an ephemeral port with a temporary
//! data directory and talks to it through the `mongodb` crate (or raw sockets).

mod auth;
mod bulk_write;
mod change_streams;
mod collation;
mod config_file;
mod crash;
mod crud;
mod ddl;
mod embedded;
mod geo;
mod hardening;
mod http;
mod limits;
mod local_sessions;
mod ops;
mod options;
mod protocol;
mod routing;
mod surface;
mod text;
mod tls;
mod transactions;
mod validation;
mod wal;
mod watch;
mod window;

use bson::Document;
use mongodb::Database;

/// Runs a command and returns the server's error code, panicking if it succeeded.
/// A cursor reply's `firstBatch` or `nextBatch` (`key`).
pub fn cursor_batch<'a>(reply: &'a Document, key: &str) -> &'a Vec<bson::Bson> {
    reply
        .get_document("cursor")
        .unwrap()
        .get_array(key)
        .unwrap()
}

/// A reply's number field as an integer, whichever numeric type the server chose.
pub fn doc_num(d: &Document, k: &str) -> i64 {
    match d.get(k) {
        Some(bson::Bson::Int32(n)) => i64::from(*n),
        Some(bson::Bson::Int64(n)) => *n,
        Some(bson::Bson::Double(f)) => *f as i64,
        other => panic!("{k} is {other:?} in {d}"),
    }
}

pub async fn cmd_error(db: &Database, cmd: Document) -> (i32, String) {
    match db.run_command(cmd.clone()).await {
        Ok(r) => panic!("expected {cmd} to fail, got {r}"),
        Err(e) => match *e.kind {
            mongodb::error::ErrorKind::Command(c) => (c.code, c.code_name),
            other => panic!("expected a command error, got {other:?}"),
        },
    }
}

/// Sends one command over a raw connection, exactly as given (drivers add their own
/// `lsid`; tests of session semantics need theirs kept), and returns the reply body.
pub async fn raw_command(port: u16, cmd: Document) -> Document {
    raw_with_sequences(port, cmd, &[]).await
}

/// Like [`raw_command`], with OP_MSG document sequences (as drivers send `ops` and
/// `nsInfo` of bulkWrite).
pub async fn raw_with_sequences(
    port: u16,
    body: Document,
    seqs: &[(String, Vec<Document>)],
) -> Document {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(&wire::encode_msg_request(1, &body, seqs, false, None))
        .await
        .unwrap();
    read_reply(&mut s).await.expect("a reply")
}

/// Reads one OP_MSG reply from `s` and returns its body, or `None` when the server closed
/// the connection first.
pub async fn read_reply(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<Document> {
    use tokio::io::AsyncReadExt;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.ok()?;
    let mut msg = len.to_vec();
    msg.resize(i32::from_le_bytes(len) as usize, 0);
    s.read_exact(&mut msg[4..]).await.ok()?;
    match wire::decode(&msg).unwrap().request {
        wire::Request::Msg(m) => Some(m.body),
        wire::Request::Query(_) => panic!("unexpected reply"),
    }
}
