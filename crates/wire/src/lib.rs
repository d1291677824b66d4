//! The MongoDB wire protocol codec: message framing, decoding and encoding.
//!
//! Everything here is sync and works on byte slices; the server owns the sockets and calls
//! [`check`] on its read buffer until a whole message is there, then [`decode`] on exactly
//! those bytes, and writes what [`encode_msg`] or [`encode_reply`] return.
//!
//! Layout:
//! - `lib.rs`: limits, opcodes, the message types and [`WireError`].
//! - `decode.rs`: [`check`], [`parse_header`], [`decode`] (OP_MSG, OP_QUERY, OP_COMPRESSED).
//! - `encode.rs`: replies (OP_MSG, OP_REPLY) and client-side requests for tests and benches.
//! - `compression.rs`: snappy, zlib and zstd for OP_COMPRESSED.
//!
//! Key decision: decoding is strict and never panics. Every length is checked against its
//! container with checked arithmetic, every BSON document is fully validated (with a nesting
//! limit, so hostile input cannot overflow the stack) and must consume exactly its bytes,
//! and a decompressed message is rebuilt with its original header so it goes through the
//! same checks (including the OP_MSG checksum) as an uncompressed one.

mod compression;
mod decode;
mod encode;

use std::fmt;

use bson::{Bson, Document};
use errors::{ErrorCode, MongoError};

pub use decode::{check, decode, parse_header};
pub use encode::{
    encode_msg, encode_msg_request, encode_msg_with_batch, encode_query_request, encode_reply,
    try_encode_msg,
};

/// The largest message Eddy accepts or sends, header included (MongoDB's `maxMessageSizeBytes`).
pub const MAX_MESSAGE_SIZE_BYTES: usize = 48_000_000;
/// The largest user document, 16 MiB (MongoDB's `maxBsonObjectSize`).
pub const MAX_BSON_OBJECT_SIZE: usize = 16 * 1024 * 1024;
/// The most write operations in one batch (MongoDB's `maxWriteBatchSize`).
pub const MAX_WRITE_BATCH_SIZE: usize = 100_000;
/// The length of the standard message header: four int32s.
pub const HEADER_LEN: usize = 16;
/// A command body may exceed [`MAX_BSON_OBJECT_SIZE`] by this much, so that a maximum-size
/// user document still fits with the command around it (MongoDB's `BSONObjMaxInternalSize`
/// is 16 MiB + 16 KiB).
pub const COMMAND_BODY_SLACK_BYTES: usize = 16 * 1024;
/// The deepest nesting of documents and arrays accepted (MongoDB's
/// `BSONDepth::kDefaultMaxAllowableDepth`).
pub const MAX_BSON_DEPTH: usize = 200;

/// Message opcodes.
pub mod op {
    /// OP_REPLY: the legacy reply to OP_QUERY.
    pub const REPLY: i32 = 1;
    /// OP_QUERY: legacy; drivers still use it for the first `hello`/`isMaster`.
    pub const QUERY: i32 = 2004;
    /// OP_COMPRESSED: wraps another message.
    pub const COMPRESSED: i32 = 2012;
    /// OP_MSG: the modern command message.
    pub const MSG: i32 = 2013;
}

/// OP_MSG flag bits.
pub mod flags {
    /// The message ends with a CRC-32C of everything before it.
    pub const CHECKSUM_PRESENT: u32 = 1;
    /// Another message follows without a request in between (exhaust cursors,
    /// unacknowledged writes).
    pub const MORE_TO_COME: u32 = 2;
    /// The client accepts `MORE_TO_COME` replies.
    pub const EXHAUST_ALLOWED: u32 = 1 << 16;
    /// Bits 0-15 must be understood by the receiver; these are the ones Eddy knows.
    pub(crate) const KNOWN_REQUIRED: u32 = CHECKSUM_PRESENT | MORE_TO_COME;
    /// Bits 0-15 are required: an unknown one set there is an error.
    pub(crate) const REQUIRED_MASK: u32 = 0xFFFF;
}

/// The standard message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Total message length in bytes, header included.
    pub message_length: i32,
    /// Chosen by the sender; a reply's `response_to` repeats it.
    pub request_id: i32,
    /// The `request_id` this message answers, or 0.
    pub response_to: i32,
    /// One of [`op`].
    pub op_code: i32,
}

/// An OP_COMPRESSED compressor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compressor {
    /// No compression (id 0).
    Noop,
    /// Snappy, raw format (id 1).
    Snappy,
    /// zlib (id 2).
    Zlib,
    /// Zstandard (id 3).
    Zstd,
}

impl Compressor {
    /// The wire id.
    pub fn id(self) -> u8 {
        match self {
            Compressor::Noop => 0,
            Compressor::Snappy => 1,
            Compressor::Zlib => 2,
            Compressor::Zstd => 3,
        }
    }

    /// The compressor with this wire id.
    pub fn from_id(id: u8) -> Option<Self> {
        match id {
            0 => Some(Compressor::Noop),
            1 => Some(Compressor::Snappy),
            2 => Some(Compressor::Zlib),
            3 => Some(Compressor::Zstd),
            _ => None,
        }
    }

    /// The name used in `hello.compression`.
    pub fn name(self) -> &'static str {
        match self {
            Compressor::Noop => "noop",
            Compressor::Snappy => "snappy",
            Compressor::Zlib => "zlib",
            Compressor::Zstd => "zstd",
        }
    }

    /// The compressor with this `hello.compression` name.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "noop" => Some(Compressor::Noop),
            "snappy" => Some(Compressor::Snappy),
            "zlib" => Some(Compressor::Zlib),
            "zstd" => Some(Compressor::Zstd),
            _ => None,
        }
    }
}

/// A decoded OP_MSG.
#[derive(Debug, Clone, PartialEq)]
pub struct OpMsg {
    /// The flag bits as received (see [`flags`]).
    pub flags: u32,
    /// The kind-0 section: the command document.
    pub body: Document,
    /// The kind-1 sections: (identifier, documents), in wire order. Identifiers are unique
    /// and never collide with a top-level body field.
    pub sequences: Vec<(String, Vec<Document>)>,
}

impl OpMsg {
    /// The body with each kind-1 sequence merged in as an array field under its identifier
    /// (what command handlers want).
    pub fn into_command(self) -> Document {
        let mut body = self.body;
        for (id, docs) in self.sequences {
            body.insert(
                id,
                Bson::Array(docs.into_iter().map(Bson::Document).collect()),
            );
        }
        body
    }

    /// Whether the sender set `MORE_TO_COME` (no reply is expected).
    pub fn more_to_come(&self) -> bool {
        self.flags & flags::MORE_TO_COME != 0
    }
}

/// A decoded OP_QUERY.
#[derive(Debug, Clone, PartialEq)]
pub struct OpQuery {
    /// The flag bits as received.
    pub flags: u32,
    /// `db.collection`; for commands `db.$cmd`.
    pub full_collection_name: String,
    /// Documents to skip.
    pub number_to_skip: i32,
    /// Batch size; -1 for commands.
    pub number_to_return: i32,
    /// The query, or the command document.
    pub query: Document,
    /// The optional projection.
    pub return_fields_selector: Option<Document>,
}

/// A decoded client request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// OP_MSG.
    Msg(OpMsg),
    /// OP_QUERY.
    Query(OpQuery),
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The header as received; for a compressed message this is the OP_COMPRESSED header
    /// (same ids, the wire length and opcode 2012).
    pub header: Header,
    /// The request.
    pub request: Request,
    /// `Some(c)` if it arrived inside OP_COMPRESSED (reply with the same compressor).
    pub compressor: Option<Compressor>,
}

/// What went wrong while decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireErrorKind {
    /// A declared message length is out of range or disagrees with the bytes given.
    InvalidLength,
    /// An opcode Eddy does not accept from clients.
    UnknownOpcode,
    /// A document is not valid BSON.
    InvalidBson,
    /// The OP_MSG CRC-32C does not match.
    ChecksumMismatch,
    /// Any other structural problem: truncation, bad sections, unknown flags, trailing bytes.
    Malformed,
    /// An unknown compressor or a payload that does not decompress to the declared size.
    Compression,
    /// A document is over the size limit.
    TooLarge,
    /// A command body repeats a top-level field (mongod's IDL parsers refuse it with
    /// Location40413).
    DuplicateField,
}

/// A decoding (or, rarely, encoding) failure.
#[derive(Debug, Clone, PartialEq)]
pub struct WireError {
    /// The category, which decides the MongoDB error code.
    pub kind: WireErrorKind,
    /// A human-readable description.
    pub message: String,
}

impl WireError {
    /// An error of this kind.
    pub fn new(kind: WireErrorKind, message: impl Into<String>) -> WireError {
        WireError {
            kind,
            message: message.into(),
        }
    }

    /// The MongoError to put in an error reply: ProtocolError (17) generally, InvalidBSON (22)
    /// for bad BSON, BSONObjectTooLarge (10334) for oversize documents.
    pub fn to_mongo_error(&self) -> MongoError {
        let code = match self.kind {
            WireErrorKind::InvalidBson => ErrorCode::InvalidBSON,
            WireErrorKind::TooLarge => ErrorCode::BSONObjectTooLarge,
            WireErrorKind::InvalidLength
            | WireErrorKind::UnknownOpcode
            | WireErrorKind::ChecksumMismatch
            | WireErrorKind::Malformed
            | WireErrorKind::Compression
            | WireErrorKind::DuplicateField => ErrorCode::ProtocolError,
        };
        if self.kind == WireErrorKind::DuplicateField {
            return MongoError::with_code(40413, self.message.clone());
        }
        MongoError::new(code, self.message.clone())
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for WireError {}

#[cfg(test)]
mod tests {
    use bson::{Bson, doc};

    use super::*;

    fn body() -> Document {
        doc! { "insert": "coll", "ordered": true, "$db": "test" }
    }

    fn docs(n: i32) -> Vec<Document> {
        (0..n)
            .map(|i| doc! { "_id": i, "name": format!("doc {i}"), "tags": ["a", "b"] })
            .collect()
    }

    fn bson_bytes(doc: &Document) -> Vec<u8> {
        let mut buf = Vec::new();
        doc.to_writer(&mut buf).unwrap();
        buf
    }

    /// A message with the given opcode and body, its length filled in.
    fn raw_message(op_code: i32, rest: &[u8]) -> Vec<u8> {
        let mut msg = Vec::new();
        for field in [(HEADER_LEN + rest.len()) as i32, 42, 0, op_code] {
            msg.extend_from_slice(&field.to_le_bytes());
        }
        msg.extend_from_slice(rest);
        msg
    }

    /// An OP_MSG with flags 0 and the given raw section bytes.
    fn raw_op_msg(sections: &[u8]) -> Vec<u8> {
        let mut rest = 0u32.to_le_bytes().to_vec();
        rest.extend_from_slice(sections);
        raw_message(op::MSG, &rest)
    }

    fn kind0(doc: &[u8]) -> Vec<u8> {
        let mut s = vec![0];
        s.extend_from_slice(doc);
        s
    }

    fn kind1(id: &str, docs: &[Document]) -> Vec<u8> {
        let mut content = id.as_bytes().to_vec();
        content.push(0);
        for d in docs {
            content.extend(bson_bytes(d));
        }
        let mut s = vec![1];
        s.extend_from_slice(&((content.len() + 4) as i32).to_le_bytes());
        s.extend(content);
        s
    }

    /// Sets the header length to the buffer's length.
    fn fix_len(mut msg: Vec<u8>) -> Vec<u8> {
        let len = msg.len() as i32;
        msg[..4].copy_from_slice(&len.to_le_bytes());
        msg
    }

    fn decoded(msg: &[u8]) -> Frame {
        assert_eq!(check(msg).unwrap(), Some(msg.len()));
        decode(msg).unwrap()
    }

    fn msg_of(frame: Frame) -> OpMsg {
        match frame.request {
            Request::Msg(m) => m,
            Request::Query(q) => panic!("expected OP_MSG, got {q:?}"),
        }
    }

    fn err_kind(msg: &[u8]) -> WireErrorKind {
        decode(msg).unwrap_err().kind
    }

    #[test]
    fn op_msg_round_trip() {
        let msg = encode_msg_request(7, &body(), &[], false, None);
        let frame = decoded(&msg);
        assert_eq!(
            frame.header,
            Header {
                message_length: msg.len() as i32,
                request_id: 7,
                response_to: 0,
                op_code: 2013
            }
        );
        assert_eq!(frame.compressor, None);
        let m = msg_of(frame);
        assert_eq!(
            m,
            OpMsg {
                flags: 0,
                body: body(),
                sequences: vec![]
            }
        );
        assert!(!m.more_to_come());
        assert_eq!(m.into_command(), body());
    }

    #[test]
    fn op_msg_sequences_and_checksum_round_trip() {
        let sequences = vec![
            ("documents".to_string(), docs(3)),
            ("empty".to_string(), vec![]),
        ];
        for checksum in [false, true] {
            let msg = encode_msg_request(8, &body(), &sequences, checksum, None);
            let m = msg_of(decoded(&msg));
            assert_eq!(m.flags, if checksum { flags::CHECKSUM_PRESENT } else { 0 });
            assert_eq!(m.body, body());
            assert_eq!(m.sequences, sequences);
            let cmd = m.into_command();
            let inserted: Vec<Bson> = docs(3).into_iter().map(Bson::Document).collect();
            assert_eq!(cmd.get_array("documents").unwrap(), &inserted);
            assert!(cmd.get_array("empty").unwrap().is_empty());
            assert_eq!(cmd.get_str("insert").unwrap(), "coll");
        }
    }

    #[test]
    fn spliced_batch_decodes_as_if_encoded_in_place() {
        let body = doc! { "cursor": { "postBatchResumeToken": {"_data": "82"}, "id": 7i64, "ns": "db.c" }, "ok": 1.0 };
        for n in [0, 1, 11, 250] {
            let events = docs(n);
            let bytes: Vec<Vec<u8>> = events.iter().map(bson_bytes).collect();
            let encoded: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
            for compressor in [None, Some(Compressor::Zlib)] {
                let msg = encode_msg_with_batch(3, 4, 0, &body, "nextBatch", &encoded, compressor);
                let got = msg_of(decoded(&msg)).body;
                let batch: Vec<Bson> = events.iter().cloned().map(Bson::Document).collect();
                let mut cursor = doc! { "nextBatch": batch };
                cursor.extend(body.get_document("cursor").unwrap().clone());
                assert_eq!(got, doc! { "cursor": cursor, "ok": 1.0 }, "{n} events");
            }
        }
        // A body whose first field is not a document, or a batch past the limit, is sent
        // as an error reply instead.
        let msg = encode_msg_with_batch(
            3,
            4,
            0,
            &doc! {"ok": 1.0},
            "nextBatch",
            &[bson_bytes(&doc! {}).as_slice()],
            None,
        );
        assert_eq!(msg_of(decoded(&msg)).body.get_f64("ok"), Ok(0.0));
        let big = bson_bytes(&doc! { "pad": "x".repeat(1 << 20) });
        let msg = encode_msg_with_batch(3, 4, 0, &body, "nextBatch", &[big.as_slice(); 17], None);
        assert_eq!(msg_of(decoded(&msg)).body.get_f64("ok"), Ok(0.0));
    }

    #[test]
    fn encode_msg_reply_flags_and_checksum() {
        let reply = doc! { "ok": 1.0, "n": 3 };
        let msg = encode_msg(5, 9, flags::MORE_TO_COME, &reply, None);
        let frame = decoded(&msg);
        assert_eq!((frame.header.request_id, frame.header.response_to), (5, 9));
        let m = msg_of(frame);
        assert!(m.more_to_come());
        assert_eq!(m.body, reply);

        let msg = encode_msg(5, 9, flags::CHECKSUM_PRESENT, &reply, None);
        assert_eq!(msg_of(decoded(&msg)).body, reply);
    }

    #[test]
    fn every_compressor_round_trips() {
        let big = doc! { "insert": "coll", "pad": "x".repeat(4000), "$db": "test" };
        let sequences = vec![("documents".to_string(), docs(50))];
        for c in [
            Compressor::Noop,
            Compressor::Snappy,
            Compressor::Zlib,
            Compressor::Zstd,
        ] {
            for checksum in [false, true] {
                let msg = encode_msg_request(11, &big, &sequences, checksum, Some(c));
                let frame = decoded(&msg);
                if c == Compressor::Noop {
                    assert_eq!(frame.compressor, None);
                    assert_eq!(frame.header.op_code, op::MSG);
                } else {
                    assert_eq!(frame.compressor, Some(c), "{c:?}");
                    assert_eq!(frame.header.op_code, op::COMPRESSED);
                    assert!(msg.len() < 2000, "{c:?} did not compress: {}", msg.len());
                }
                assert_eq!(frame.header.request_id, 11);
                let m = msg_of(frame);
                assert_eq!((m.body, m.sequences), (big.clone(), sequences.clone()));
            }
            let reply = encode_msg(1, 11, 0, &big, Some(c));
            let frame = decoded(&reply);
            assert_eq!(frame.header.response_to, 11);
            assert_eq!(msg_of(frame).body, big);
        }
    }

    #[test]
    fn noop_compressed_message_decodes() {
        let inner = encode_msg_request(3, &body(), &[], false, None);
        let mut rest = op::MSG.to_le_bytes().to_vec();
        rest.extend_from_slice(&((inner.len() - HEADER_LEN) as i32).to_le_bytes());
        rest.push(Compressor::Noop.id());
        rest.extend_from_slice(&inner[HEADER_LEN..]);
        let frame = decoded(&raw_message(op::COMPRESSED, &rest));
        assert_eq!(frame.compressor, Some(Compressor::Noop));
        assert_eq!(msg_of(frame).body, body());
    }

    #[test]
    fn op_query_round_trip() {
        let hello = doc! { "isMaster": 1, "client": { "driver": "x" } };
        let msg = encode_query_request(4, "admin.$cmd", &hello);
        let frame = decoded(&msg);
        assert_eq!(frame.header.op_code, op::QUERY);
        let expected = OpQuery {
            flags: 0,
            full_collection_name: "admin.$cmd".into(),
            number_to_skip: 0,
            number_to_return: -1,
            query: hello.clone(),
            return_fields_selector: None,
        };
        assert_eq!(frame.request, Request::Query(expected.clone()));

        // With a projection.
        let projection = doc! { "a": 1 };
        let mut msg = msg;
        msg.extend(bson_bytes(&projection));
        let frame = decoded(&fix_len(msg.clone()));
        let Request::Query(q) = frame.request else {
            panic!("expected OP_QUERY")
        };
        assert_eq!(
            q,
            OpQuery {
                return_fields_selector: Some(projection),
                ..expected
            }
        );

        // Anything after the projection is garbage.
        msg.push(0);
        assert_eq!(err_kind(&fix_len(msg)), WireErrorKind::Malformed);
    }

    #[test]
    fn op_query_compressed() {
        let inner = encode_query_request(4, "admin.$cmd", &doc! { "hello": 1 });
        let mut rest = op::QUERY.to_le_bytes().to_vec();
        rest.extend_from_slice(&((inner.len() - HEADER_LEN) as i32).to_le_bytes());
        rest.push(Compressor::Zlib.id());
        rest.extend(compression::compress(Compressor::Zlib, &inner[HEADER_LEN..]).unwrap());
        let frame = decoded(&raw_message(op::COMPRESSED, &rest));
        assert_eq!(frame.compressor, Some(Compressor::Zlib));
        assert!(matches!(frame.request, Request::Query(q) if q.query == doc! { "hello": 1 }));
    }

    #[test]
    fn op_reply_layout() {
        let reply = doc! { "ismaster": true, "ok": 1.0 };
        let msg = encode_reply(10, 4, 8, &reply);
        let header = parse_header(&msg).unwrap();
        assert_eq!(
            header,
            Header {
                message_length: msg.len() as i32,
                request_id: 10,
                response_to: 4,
                op_code: 1
            }
        );
        assert_eq!(check(&msg).unwrap(), Some(msg.len()));
        assert_eq!(&msg[16..20], &8i32.to_le_bytes()); // responseFlags
        assert_eq!(&msg[20..28], &0i64.to_le_bytes()); // cursorID
        assert_eq!(&msg[28..32], &0i32.to_le_bytes()); // startingFrom
        assert_eq!(&msg[32..36], &1i32.to_le_bytes()); // numberReturned
        assert_eq!(Document::from_reader(&msg[36..]).unwrap(), reply);
        assert_eq!(msg.len(), 36 + bson_bytes(&reply).len());
        // Clients do not send replies.
        assert_eq!(err_kind(&msg), WireErrorKind::UnknownOpcode);
    }

    #[test]
    fn unencodable_reply_becomes_an_error_reply() {
        let bad = doc! { "a\0b": 1 };
        let e = try_encode_msg(1, 2, 0, &bad, None).unwrap_err();
        assert_eq!(e.kind, WireErrorKind::InvalidBson);
        let body = msg_of(decoded(&encode_msg(1, 2, 0, &bad, None))).body;
        assert_eq!(body.get_f64("ok").unwrap(), 0.0);
        assert_eq!(body.get_i32("code").unwrap(), 22);
        let reply = encode_reply(1, 2, 0, &bad);
        assert_eq!(
            Document::from_reader(&reply[36..])
                .unwrap()
                .get_i32("code")
                .unwrap(),
            22
        );
    }

    #[test]
    fn check_frames_the_stream() {
        let msg = encode_msg_request(1, &body(), &[], false, None);
        for cut in 0..msg.len() {
            assert_eq!(check(&msg[..cut]).unwrap(), None, "prefix of {cut} bytes");
        }
        let mut two = msg.clone();
        two.extend_from_slice(&msg);
        assert_eq!(check(&two).unwrap(), Some(msg.len()));

        for bad in [
            -1i32,
            0,
            15,
            (MAX_MESSAGE_SIZE_BYTES + 1) as i32,
            i32::MAX,
            i32::MIN,
        ] {
            let e = check(&bad.to_le_bytes()).unwrap_err();
            assert_eq!(e.kind, WireErrorKind::InvalidLength, "{bad}");
        }
        assert_eq!(
            check(&(MAX_MESSAGE_SIZE_BYTES as i32).to_le_bytes()).unwrap(),
            None
        );
        assert_eq!(
            parse_header(&msg[..15]).unwrap_err().kind,
            WireErrorKind::InvalidLength
        );
    }

    #[test]
    fn truncated_messages_are_rejected() {
        let msg = encode_msg_request(1, &body(), &[("documents".into(), docs(2))], true, None);
        for cut in 0..msg.len() {
            // As given, the header length disagrees with the bytes.
            assert!(decode(&msg[..cut]).is_err(), "prefix of {cut} bytes");
            // With the length patched the structure is still incomplete.
            if cut >= HEADER_LEN {
                assert!(
                    decode(&fix_len(msg[..cut].to_vec())).is_err(),
                    "patched prefix {cut}"
                );
            }
        }
        let short = fix_len(msg[..HEADER_LEN + 2].to_vec());
        assert_eq!(err_kind(&short), WireErrorKind::Malformed);
    }

    #[test]
    fn lying_section_lengths_are_rejected() {
        let body_bytes = bson_bytes(&body());
        let mut good = kind0(&body_bytes);
        good.extend(kind1("documents", &docs(2)));
        assert!(decode(&raw_op_msg(&good)).is_ok());

        let size_at = kind0(&body_bytes).len() + 1;
        for size in [-1i32, 0, 3, 4, 5, 20, 1000, i32::MAX] {
            let mut sections = good.clone();
            sections[size_at..size_at + 4].copy_from_slice(&size.to_le_bytes());
            assert_eq!(
                err_kind(&raw_op_msg(&sections)),
                WireErrorKind::Malformed,
                "{size}"
            );
        }

        // A body document longer than the message, and one too short to be a document.
        let mut long = body_bytes.clone();
        long[..4].copy_from_slice(&((body_bytes.len() + 1) as i32).to_le_bytes());
        assert_eq!(
            err_kind(&raw_op_msg(&kind0(&long))),
            WireErrorKind::Malformed
        );
        let mut short = body_bytes.clone();
        short[..4].copy_from_slice(&4i32.to_le_bytes());
        assert_eq!(
            err_kind(&raw_op_msg(&kind0(&short))),
            WireErrorKind::InvalidBson
        );
        // A body that claims fewer bytes than it has leaves garbage, read as a section.
        let mut shorter = body_bytes.clone();
        shorter[..4].copy_from_slice(&((body_bytes.len() - 1) as i32).to_le_bytes());
        assert!(decode(&raw_op_msg(&kind0(&shorter))).is_err());
    }

    #[test]
    fn bad_bson_is_rejected() {
        // {a: <type 0x55>}
        let unknown_type = [8, 0, 0, 0, 0x55, b'a', 0, 0];
        // {a: "\xff"}
        let bad_utf8 = [15, 0, 0, 0, 2, b'a', 0, 2, 0, 0, 0, 0xff, 0, 0, 0];
        // {a: int32} with the trailing NUL missing.
        let unterminated = [12, 0, 0, 0, 0x10, b'a', 0, 1, 0, 0, 0, 1];
        // {a: "x"} whose string length runs past the document.
        let long_string = [14, 0, 0, 0, 2, b'a', 0, 9, 0, 0, 0, b'x', 0, 0];
        for bad in [&unknown_type[..], &bad_utf8, &unterminated, &long_string] {
            assert_eq!(
                err_kind(&raw_op_msg(&kind0(bad))),
                WireErrorKind::InvalidBson,
                "{bad:?}"
            );
        }
        // The same inside a document sequence.
        let mut sections = kind0(&bson_bytes(&body()));
        sections.push(1);
        sections.extend_from_slice(&((4 + 2 + unknown_type.len()) as i32).to_le_bytes());
        sections.extend_from_slice(b"d\0");
        sections.extend_from_slice(&unknown_type);
        assert_eq!(err_kind(&raw_op_msg(&sections)), WireErrorKind::InvalidBson);
        let e = decode(&raw_op_msg(&sections)).unwrap_err().to_mongo_error();
        assert_eq!((e.code, e.code_name.as_str()), (22, "InvalidBSON"));
    }

    #[test]
    fn nesting_is_limited() {
        fn nested(depth: usize) -> Document {
            let mut d = doc! { "x": 1 };
            for _ in 1..depth {
                d = doc! { "a": [d] };
            }
            d
        }
        let ok = nested(MAX_BSON_DEPTH / 2);
        assert!(decode(&encode_msg_request(1, &ok, &[], false, None)).is_ok());
        let deep = nested(MAX_BSON_DEPTH);
        let msg = encode_msg_request(1, &deep, &[], false, None);
        assert_eq!(err_kind(&msg), WireErrorKind::InvalidBson);
    }

    #[test]
    fn oversize_documents_are_rejected() {
        // Only the declared length matters: the limit is checked before reading.
        let mut sections = vec![0];
        sections.extend_from_slice(&((MAX_BSON_OBJECT_SIZE + 16 * 1024 + 1) as i32).to_le_bytes());
        let e = decode(&raw_op_msg(&sections)).unwrap_err();
        assert_eq!(e.kind, WireErrorKind::TooLarge);
        assert_eq!(e.to_mongo_error().code, 10334);

        let mut sections = kind0(&bson_bytes(&body()));
        sections.push(1);
        sections.extend_from_slice(&10i32.to_le_bytes());
        sections.extend_from_slice(b"d\0");
        sections.extend_from_slice(&((MAX_BSON_OBJECT_SIZE + 1) as i32).to_le_bytes());
        assert_eq!(err_kind(&raw_op_msg(&sections)), WireErrorKind::TooLarge);

        // Two halves: the bson crate refuses a single binary over 16 MiB.
        let half = bson::Binary {
            subtype: bson::spec::BinarySubtype::Generic,
            bytes: vec![0; MAX_BSON_OBJECT_SIZE / 2 + 16 * 1024],
        };
        let huge = doc! { "a": half.clone(), "b": half };
        let e = try_encode_msg(1, 2, 0, &huge, None).unwrap_err();
        assert_eq!(e.kind, WireErrorKind::TooLarge);
        assert_eq!(
            msg_of(decoded(&encode_msg(1, 2, 0, &huge, None)))
                .body
                .get_i32("code"),
            Ok(10334)
        );
    }

    #[test]
    fn bad_checksum_is_rejected() {
        let msg = encode_msg_request(1, &body(), &[("documents".into(), docs(1))], true, None);
        for i in [0, 5, 19, 25, msg.len() - 1] {
            let mut bad = msg.clone();
            bad[i] ^= 0x40;
            if i == 0 {
                assert_eq!(err_kind(&bad), WireErrorKind::InvalidLength);
            } else {
                assert_eq!(err_kind(&bad), WireErrorKind::ChecksumMismatch, "byte {i}");
            }
        }
        // The checksum flag on a message with no room for one.
        let mut rest = flags::CHECKSUM_PRESENT.to_le_bytes().to_vec();
        rest.extend_from_slice(&[0, 0]);
        assert_eq!(
            err_kind(&raw_message(op::MSG, &rest)),
            WireErrorKind::Malformed
        );
    }

    #[test]
    fn section_structure_is_enforced() {
        let b = bson_bytes(&body());
        let two_bodies = [kind0(&b), kind0(&b)].concat();
        let no_body = kind1("documents", &docs(1));
        let dup_seq = [kind0(&b), kind1("d", &docs(1)), kind1("d", &docs(1))].concat();
        let collides = [kind0(&b), kind1("insert", &docs(1))].concat();
        let unknown_kind = [kind0(&b), vec![2]].concat();
        for sections in [two_bodies, no_body, dup_seq, collides, unknown_kind, vec![]] {
            assert_eq!(
                err_kind(&raw_op_msg(&sections)),
                WireErrorKind::Malformed,
                "{sections:?}"
            );
        }
    }

    #[test]
    fn flag_bits() {
        let section = kind0(&bson_bytes(&body()));
        for (bits, ok) in [
            (flags::MORE_TO_COME, true),
            (flags::EXHAUST_ALLOWED, true),
            (1 << 20, true),
            (1 << 2, false),
            (1 << 15, false),
        ] {
            let mut rest = bits.to_le_bytes().to_vec();
            rest.extend_from_slice(&section);
            let result = decode(&raw_message(op::MSG, &rest));
            assert_eq!(result.is_ok(), ok, "{bits:#x}: {result:?}");
        }
    }

    #[test]
    fn unknown_opcodes_are_rejected() {
        let section = kind0(&bson_bytes(&body()));
        for op_code in [op::REPLY, 2001, 2002, 2005, 0, -1] {
            let e = decode(&raw_message(op_code, &section)).unwrap_err();
            assert_eq!(e.kind, WireErrorKind::UnknownOpcode);
            assert_eq!(e.to_mongo_error().code, 17);
        }
    }

    /// An OP_COMPRESSED around `encode_msg_request`'s body, with its fields overridable.
    fn compressed(original: i32, size_delta: i32, id: u8, payload: Option<Vec<u8>>) -> Vec<u8> {
        let inner = encode_msg_request(1, &body(), &[], false, None);
        let plain = &inner[HEADER_LEN..];
        let mut rest = original.to_le_bytes().to_vec();
        rest.extend_from_slice(&(plain.len() as i32 + size_delta).to_le_bytes());
        rest.push(id);
        let c = Compressor::from_id(id).unwrap_or(Compressor::Noop);
        rest.extend(payload.unwrap_or_else(|| compression::compress(c, plain).unwrap()));
        raw_message(op::COMPRESSED, &rest)
    }

    #[test]
    fn bad_compressed_messages_are_rejected() {
        use WireErrorKind::{Compression, InvalidLength, UnknownOpcode};
        for c in [
            Compressor::Noop,
            Compressor::Snappy,
            Compressor::Zlib,
            Compressor::Zstd,
        ] {
            let id = c.id();
            assert!(decode(&compressed(op::MSG, 0, id, None)).is_ok(), "{c:?}");
            for delta in [-1, 1, 100] {
                assert_eq!(
                    err_kind(&compressed(op::MSG, delta, id, None)),
                    Compression,
                    "{c:?}"
                );
            }
            let garbage = Some(vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3]);
            assert_eq!(
                err_kind(&compressed(op::MSG, 0, id, garbage)),
                Compression,
                "{c:?}"
            );
            assert_eq!(
                err_kind(&compressed(op::MSG, 0, id, Some(vec![]))),
                Compression
            );
            for original in [op::COMPRESSED, op::REPLY, 7] {
                assert_eq!(err_kind(&compressed(original, 0, id, None)), UnknownOpcode);
            }
        }
        // zlib with bytes after the stream.
        let mut payload = compression::compress(Compressor::Zlib, b"0123456789").unwrap();
        payload.push(0);
        let mut out = Vec::new();
        let e = compression::decompress_into(Compressor::Zlib, &payload, 10, &mut out);
        assert_eq!(e.unwrap_err().kind, Compression);

        for id in [4, 9, 255] {
            assert_eq!(
                err_kind(&compressed(op::MSG, 0, id, None)),
                Compression,
                "id {id}"
            );
        }
        for delta in [-1000, i32::MIN / 2, (MAX_MESSAGE_SIZE_BYTES as i32)] {
            assert_eq!(
                err_kind(&compressed(op::MSG, delta, 1, None)),
                InvalidLength,
                "{delta}"
            );
        }
        // A header-only OP_COMPRESSED.
        assert!(decode(&raw_message(op::COMPRESSED, &[])).is_err());
    }

    #[test]
    fn compressor_ids_and_names() {
        for (c, id, name) in [
            (Compressor::Noop, 0, "noop"),
            (Compressor::Snappy, 1, "snappy"),
            (Compressor::Zlib, 2, "zlib"),
            (Compressor::Zstd, 3, "zstd"),
        ] {
            assert_eq!((c.id(), c.name()), (id, name));
            assert_eq!(Compressor::from_id(id), Some(c));
            assert_eq!(Compressor::from_name(name), Some(c));
        }
        assert_eq!(Compressor::from_id(4), None);
        assert_eq!(Compressor::from_name("lz4"), None);
    }

    #[test]
    fn error_codes() {
        let code = |kind| WireError::new(kind, "x").to_mongo_error().code;
        assert_eq!(code(WireErrorKind::InvalidBson), 22);
        assert_eq!(code(WireErrorKind::TooLarge), 10334);
        for kind in [
            WireErrorKind::InvalidLength,
            WireErrorKind::UnknownOpcode,
            WireErrorKind::ChecksumMismatch,
            WireErrorKind::Malformed,
            WireErrorKind::Compression,
        ] {
            assert_eq!(code(kind), 17);
        }
        assert_eq!(
            WireError::new(WireErrorKind::Malformed, "boom").to_string(),
            "boom"
        );
    }

    /// Mutates valid messages at random (deterministically) and checks decoding never
    /// panics and only accepts what it can decode consistently.
    #[test]
    fn fuzz_mutations_never_panic() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seq = vec![("documents".to_string(), docs(3))];
        let mut seeds = vec![
            encode_query_request(1, "admin.$cmd", &doc! { "isMaster": 1 }),
            encode_reply(1, 2, 0, &body()),
        ];
        for c in [
            None,
            Some(Compressor::Snappy),
            Some(Compressor::Zlib),
            Some(Compressor::Zstd),
        ] {
            seeds.push(encode_msg_request(1, &body(), &seq, false, c));
            seeds.push(encode_msg_request(1, &body(), &seq, true, c));
        }
        let mut accepted = 0;
        for _ in 0..10_000 {
            let mut msg = seeds[next() as usize % seeds.len()].clone();
            for _ in 0..=next() % 4 {
                let len = msg.len().max(1);
                let at = next() as usize % len;
                match next() % 6 {
                    0 => msg.truncate(at),
                    1 => msg.insert(at.min(msg.len()), next() as u8),
                    2 if !msg.is_empty() => drop(msg.remove(at)),
                    3 if at < msg.len() => msg[at] = [0, 0xff, 0x7f, 0x80, 1][next() as usize % 5],
                    _ if at < msg.len() => msg[at] ^= 1 << (next() % 8),
                    _ => {}
                }
            }
            // Half the time keep the header length honest so decoding gets past framing.
            if next() % 2 == 0 && msg.len() >= 4 {
                msg = fix_len(msg);
            }
            let _ = parse_header(&msg);
            if let Ok(Some(n)) = check(&msg)
                && decode(&msg[..n]).is_ok()
            {
                accepted += 1;
            }
            let _ = decode(&msg);
        }
        // Some mutations (e.g. to request ids) leave valid messages.
        assert!(accepted > 0);
    }
}
