//! Encoding: OP_MSG and OP_REPLY replies, plus client-side requests for tests and benches.

use bson::{Document, doc};

use crate::compression::compress;
use crate::decode::MAX_BODY_SIZE;
use crate::{Compressor, HEADER_LEN, MAX_MESSAGE_SIZE_BYTES, WireError, WireErrorKind, flags, op};

/// Encodes an OP_MSG reply: `flags` and one kind-0 section holding `body`. If `flags` has
/// [`flags::CHECKSUM_PRESENT`] a CRC-32C is appended. If `compressor` is `Some(c)` and `c`
/// is not `Noop`, the message is wrapped in OP_COMPRESSED with that compressor.
///
/// Never fails: if `body` cannot be encoded (a key containing a NUL byte, or over the size
/// limits) the reply carries that error instead, as `{ok: 0, errmsg, code, codeName}`. Use
/// [`try_encode_msg`] to handle the failure yourself.
pub fn encode_msg(
    request_id: i32,
    response_to: i32,
    flags: u32,
    body: &Document,
    compressor: Option<Compressor>,
) -> Vec<u8> {
    or_error_reply(
        try_encode_msg(request_id, response_to, flags, body, compressor),
        request_id,
        response_to,
        flags,
        compressor,
    )
}

/// An encoded reply, or, when it could not be encoded, the error as the reply.
fn or_error_reply(
    encoded: Result<Vec<u8>, WireError>,
    request_id: i32,
    response_to: i32,
    flags: u32,
    compressor: Option<Compressor>,
) -> Vec<u8> {
    encoded.unwrap_or_else(|e| {
        encode_op_msg(
            request_id,
            response_to,
            flags,
            &error_body(&e),
            &[],
            compressor,
        )
        .unwrap_or_default()
    })
}

/// Like [`encode_msg`], but returns the encoding failure.
///
/// # Errors
///
/// [`WireErrorKind::InvalidBson`] if `body` cannot be serialized, [`WireErrorKind::TooLarge`]
/// if it is over the command size limit or the message over [`MAX_MESSAGE_SIZE_BYTES`].
pub fn try_encode_msg(
    request_id: i32,
    response_to: i32,
    flags: u32,
    body: &Document,
    compressor: Option<Compressor>,
) -> Result<Vec<u8>, WireError> {
    encode_op_msg(request_id, response_to, flags, body, &[], compressor)
}

/// Like [`encode_msg`], with a cursor batch of already-encoded documents spliced in as the
/// first field, named `key`, of `body`'s first field (which must be a document: the
/// `cursor`). A change stream's events are encoded once and shared by every stream that
/// sends them; this copies their bytes into the reply instead of re-encoding them.
pub fn encode_msg_with_batch(
    request_id: i32,
    response_to: i32,
    flags: u32,
    body: &Document,
    key: &str,
    batch: &[&[u8]],
    compressor: Option<Compressor>,
) -> Vec<u8> {
    let encoded = spliced_msg(flags, body, key, batch)
        .and_then(|buf| finish_msg(buf, request_id, response_to, flags, compressor));
    or_error_reply(encoded, request_id, response_to, flags, compressor)
}

/// The message (header left to fill) whose body is `body` with `batch` as the array `key`
/// at the front of its first sub-document. Each batch document is copied once, straight
/// into the message: a reply of a thousand change events was copied three times before.
fn spliced_msg(
    flags: u32,
    body: &Document,
    key: &str,
    batch: &[&[u8]],
) -> Result<Vec<u8>, WireError> {
    let mut outer = Vec::new();
    write_document(&mut outer, body, MAX_BODY_SIZE)?;
    // The first element: type byte, key, NUL, then the sub-document.
    let bad = || WireError::new(WireErrorKind::InvalidBson, "reply has no cursor document");
    if outer.get(4) != Some(&0x03) {
        return Err(bad());
    }
    let key_end = 5 + outer[5..].iter().position(|b| *b == 0).ok_or_else(bad)?;
    let sub = key_end + 1;
    let sub_len = outer
        .get(sub..sub + 4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(bad)?;
    // Each element: type byte, decimal index, NUL, the document.
    let array_len = 4
        + batch
            .iter()
            .enumerate()
            .map(|(i, d)| 2 + i.checked_ilog10().unwrap_or(0) as usize + 1 + d.len())
            .sum::<usize>()
        + 1;
    let added = 1 + key.len() + 1 + array_len;
    let total = outer.len() + added;
    if total > MAX_BODY_SIZE {
        return Err(WireError::new(
            WireErrorKind::TooLarge,
            format!("document of {total} bytes is over the {MAX_BODY_SIZE}-byte limit"),
        ));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + 5 + total + 4);
    out.resize(HEADER_LEN, 0);
    out.extend_from_slice(&flags.to_le_bytes());
    out.push(0);
    out.extend_from_slice(&message_i32(total)?.to_le_bytes());
    out.extend_from_slice(&outer[4..sub]);
    out.extend_from_slice(&message_i32(sub_len + added)?.to_le_bytes());
    out.push(0x04);
    write_cstr(&mut out, key)?;
    out.extend_from_slice(&message_i32(array_len)?.to_le_bytes());
    let mut index = itoa_buf();
    for (i, d) in batch.iter().enumerate() {
        out.push(0x03);
        out.extend_from_slice(index.format(i));
        out.push(0);
        out.extend_from_slice(d);
    }
    out.push(0);
    out.extend_from_slice(&outer[sub + 4..]);
    Ok(out)
}

/// Decimal array indexes without allocating.
struct IndexKey([u8; 20]);

fn itoa_buf() -> IndexKey {
    IndexKey([0; 20])
}

impl IndexKey {
    fn format(&mut self, mut n: usize) -> &[u8] {
        let mut i = self.0.len();
        loop {
            i -= 1;
            self.0[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        &self.0[i..]
    }
}

/// Encodes an OP_REPLY: `response_flags`, cursorID 0, startingFrom 0, numberReturned 1 and
/// `doc`. Like [`encode_msg`], a `doc` that cannot be encoded is replaced by the error.
pub fn encode_reply(
    request_id: i32,
    response_to: i32,
    response_flags: i32,
    doc: &Document,
) -> Vec<u8> {
    try_encode_reply(request_id, response_to, response_flags, doc).unwrap_or_else(|e| {
        try_encode_reply(request_id, response_to, response_flags, &error_body(&e))
            .unwrap_or_default()
    })
}

/// Encodes an OP_MSG request, as a client would (for tests and benchmarks).
///
/// # Panics
///
/// If a document or identifier cannot be encoded or the message is too large.
pub fn encode_msg_request(
    request_id: i32,
    body: &Document,
    sequences: &[(String, Vec<Document>)],
    checksum: bool,
    compressor: Option<Compressor>,
) -> Vec<u8> {
    let flags = if checksum { flags::CHECKSUM_PRESENT } else { 0 };
    encode_op_msg(request_id, 0, flags, body, sequences, compressor)
        .unwrap_or_else(|e| panic!("cannot encode OP_MSG request: {e}"))
}

/// Encodes an OP_QUERY request (flags 0, numberToSkip 0, numberToReturn -1), as a client
/// would for a legacy `hello` (for tests and benchmarks).
///
/// # Panics
///
/// If the name or document cannot be encoded.
pub fn encode_query_request(
    request_id: i32,
    full_collection_name: &str,
    query: &Document,
) -> Vec<u8> {
    let encode = || {
        let mut buf = vec![0; HEADER_LEN];
        buf.extend_from_slice(&0u32.to_le_bytes());
        write_cstr(&mut buf, full_collection_name)?;
        buf.extend_from_slice(&0i32.to_le_bytes());
        buf.extend_from_slice(&(-1i32).to_le_bytes());
        write_document(&mut buf, query, MAX_BODY_SIZE)?;
        finish_header(&mut buf, request_id, 0, op::QUERY)?;
        Ok::<_, WireError>(buf)
    };
    encode().unwrap_or_else(|e| panic!("cannot encode OP_QUERY request: {e}"))
}

fn try_encode_reply(
    request_id: i32,
    response_to: i32,
    response_flags: i32,
    doc: &Document,
) -> Result<Vec<u8>, WireError> {
    let mut buf = vec![0; HEADER_LEN];
    buf.extend_from_slice(&response_flags.to_le_bytes());
    buf.extend_from_slice(&0i64.to_le_bytes()); // cursorID
    buf.extend_from_slice(&0i32.to_le_bytes()); // startingFrom
    buf.extend_from_slice(&1i32.to_le_bytes()); // numberReturned
    write_document(&mut buf, doc, MAX_BODY_SIZE)?;
    finish_header(&mut buf, request_id, response_to, op::REPLY)?;
    Ok(buf)
}

fn encode_op_msg(
    request_id: i32,
    response_to: i32,
    flag_bits: u32,
    body: &Document,
    sequences: &[(String, Vec<Document>)],
    compressor: Option<Compressor>,
) -> Result<Vec<u8>, WireError> {
    // Sized up front: a 16 MB change-stream batch grew by doubling, copying and faulting
    // in fresh pages at each step.
    let mut buf = Vec::with_capacity(HEADER_LEN + 5 + doc::encoded_len(body) + 4);
    buf.resize(HEADER_LEN, 0);
    buf.extend_from_slice(&flag_bits.to_le_bytes());
    buf.push(0);
    write_document(&mut buf, body, MAX_BODY_SIZE)?;
    for (id, docs) in sequences {
        buf.push(1);
        let start = buf.len();
        buf.extend_from_slice(&[0; 4]);
        write_cstr(&mut buf, id)?;
        for doc in docs {
            write_document(&mut buf, doc, crate::MAX_BSON_OBJECT_SIZE)?;
        }
        let size = message_i32(buf.len() - start)?;
        buf[start..start + 4].copy_from_slice(&size.to_le_bytes());
    }
    finish_msg(buf, request_id, response_to, flag_bits, compressor)
}

/// Fills in the header (and checksum, if flagged) of an OP_MSG and compresses it if asked.
fn finish_msg(
    mut buf: Vec<u8>,
    request_id: i32,
    response_to: i32,
    flag_bits: u32,
    compressor: Option<Compressor>,
) -> Result<Vec<u8>, WireError> {
    let checksum = flag_bits & flags::CHECKSUM_PRESENT != 0;
    if checksum {
        // The checksum covers the header, so the final length must be in place first.
        buf.extend_from_slice(&[0; 4]);
        finish_header(&mut buf, request_id, response_to, op::MSG)?;
        buf.truncate(buf.len() - 4);
        let crc = crc32c::crc32c(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
    } else {
        finish_header(&mut buf, request_id, response_to, op::MSG)?;
    }
    Ok(match compressor {
        Some(c) if c != Compressor::Noop => compress_message(c, buf),
        _ => buf,
    })
}

/// Wraps a complete message in OP_COMPRESSED, or returns it unchanged if compression fails.
fn compress_message(compressor: Compressor, msg: Vec<u8>) -> Vec<u8> {
    let Some(payload) = compress(compressor, &msg[HEADER_LEN..]) else {
        return msg;
    };
    let mut out = vec![0; HEADER_LEN];
    out.extend_from_slice(&msg[12..16]); // originalOpcode
    // The message length already fit in an i32, so its body's does too.
    out.extend_from_slice(&((msg.len() - HEADER_LEN) as i32).to_le_bytes());
    out.push(compressor.id());
    out.extend_from_slice(&payload);
    let request_id = i32::from_le_bytes([msg[4], msg[5], msg[6], msg[7]]);
    let response_to = i32::from_le_bytes([msg[8], msg[9], msg[10], msg[11]]);
    match finish_header(&mut out, request_id, response_to, op::COMPRESSED) {
        Ok(()) => out,
        Err(_) => msg,
    }
}

/// Fills in the header at the front of `buf`, whose length is the message length.
fn finish_header(
    buf: &mut [u8],
    request_id: i32,
    response_to: i32,
    op_code: i32,
) -> Result<(), WireError> {
    let len = message_i32(buf.len())?;
    for (i, field) in [len, request_id, response_to, op_code]
        .into_iter()
        .enumerate()
    {
        buf[i * 4..i * 4 + 4].copy_from_slice(&field.to_le_bytes());
    }
    Ok(())
}

fn message_i32(len: usize) -> Result<i32, WireError> {
    i32::try_from(len)
        .ok()
        .filter(|_| len <= MAX_MESSAGE_SIZE_BYTES)
        .ok_or_else(|| {
            WireError::new(
                WireErrorKind::TooLarge,
                format!("message of {len} bytes is over the {MAX_MESSAGE_SIZE_BYTES}-byte limit"),
            )
        })
}

fn write_document(buf: &mut Vec<u8>, doc: &Document, limit: usize) -> Result<(), WireError> {
    let start = buf.len();
    doc::encode::encode_into(doc, buf)
        .map_err(|e| WireError::new(WireErrorKind::InvalidBson, e.to_string()))?;
    let len = buf.len() - start;
    if len > limit {
        return Err(WireError::new(
            WireErrorKind::TooLarge,
            format!("document of {len} bytes is over the {limit}-byte limit"),
        ));
    }
    Ok(())
}

fn write_cstr(buf: &mut Vec<u8>, s: &str) -> Result<(), WireError> {
    if s.contains('\0') {
        return Err(WireError::new(
            WireErrorKind::Malformed,
            format!("{s:?} contains a NUL byte"),
        ));
    }
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
    Ok(())
}

/// The reply sent in place of a body that cannot be encoded.
fn error_body(e: &WireError) -> Document {
    let e = e.to_mongo_error();
    doc! { "ok": 0.0, "errmsg": e.message, "code": e.code, "codeName": e.code_name }
}
