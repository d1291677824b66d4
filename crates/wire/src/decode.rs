//! Framing and decoding of client requests.

use bson::Document;

use crate::compression::decompress_into;
use crate::{
    COMMAND_BODY_SLACK_BYTES, Compressor, Frame, HEADER_LEN, Header, MAX_BSON_DEPTH,
    MAX_BSON_OBJECT_SIZE, MAX_MESSAGE_SIZE_BYTES, OpMsg, OpQuery, Request, WireError,
    WireErrorKind, flags, op,
};

/// The limit for a command body: a full-size user document plus room for the command.
pub(crate) const MAX_BODY_SIZE: usize = MAX_BSON_OBJECT_SIZE + COMMAND_BODY_SLACK_BYTES;

/// Whether a complete message is at the front of `buf`.
///
/// Returns `Ok(None)` if the 4-byte length or the whole message is not there yet, and
/// `Ok(Some(n))` when a complete message of `n` bytes is.
///
/// # Errors
///
/// [`WireErrorKind::InvalidLength`] if the declared length is below [`HEADER_LEN`] or above
/// [`MAX_MESSAGE_SIZE_BYTES`]; the caller should then close the connection, since the
/// stream can no longer be framed.
pub fn check(buf: &[u8]) -> Result<Option<usize>, WireError> {
    let Some(len) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = message_length(i32::from_le_bytes(*len))?;
    Ok((buf.len() >= len).then_some(len))
}

/// Parses the 16-byte header at the front of `buf`.
///
/// # Errors
///
/// [`WireErrorKind::InvalidLength`] if `buf` is shorter than [`HEADER_LEN`].
pub fn parse_header(buf: &[u8]) -> Result<Header, WireError> {
    let mut r = Reader(buf);
    if buf.len() < HEADER_LEN {
        return Err(invalid_length(format!(
            "a header needs {HEADER_LEN} bytes, got {}",
            buf.len()
        )));
    }
    Ok(Header {
        message_length: r.i32("messageLength")?,
        request_id: r.i32("requestID")?,
        response_to: r.i32("responseTo")?,
        op_code: r.i32("opCode")?,
    })
}

/// Decodes one complete message: exactly the `n` bytes [`check`] reported.
///
/// Accepts OP_MSG, OP_QUERY and OP_COMPRESSED wrapping either of them. Every document is
/// fully validated and must consume exactly its bytes; nothing may trail anywhere.
///
/// # Errors
///
/// A [`WireError`] whose kind says what was wrong; [`WireError::to_mongo_error`] gives the
/// reply error. Never panics, whatever the input.
pub fn decode(msg: &[u8]) -> Result<Frame, WireError> {
    let header = parse_header(msg)?;
    let len = message_length(header.message_length)?;
    if len != msg.len() {
        return Err(invalid_length(format!(
            "messageLength is {len} but the message has {} bytes",
            msg.len()
        )));
    }
    if header.op_code == op::COMPRESSED {
        return decode_compressed(header, msg);
    }
    let request = decode_request(header.op_code, msg)?;
    Ok(Frame {
        header,
        request,
        compressor: None,
    })
}

/// Unwraps OP_COMPRESSED, then decodes the inner message with its original header restored.
fn decode_compressed(header: Header, msg: &[u8]) -> Result<Frame, WireError> {
    let mut r = Reader(&msg[HEADER_LEN..]);
    let original_op_code = r.i32("originalOpcode")?;
    let uncompressed_size = r.i32("uncompressedSize")?;
    let compressor_id = r.u8("compressorId")?;
    let payload = r.0;

    if !matches!(original_op_code, op::MSG | op::QUERY) {
        return Err(WireError::new(
            WireErrorKind::UnknownOpcode,
            format!("OP_COMPRESSED cannot wrap opcode {original_op_code}"),
        ));
    }
    // HEADER_LEN is 16, so the cast is exact.
    let total_i32 = uncompressed_size
        .checked_add(HEADER_LEN as i32)
        .ok_or_else(|| invalid_length(format!("bad uncompressedSize {uncompressed_size}")))?;
    let total = message_length(total_i32)?;
    let compressor = Compressor::from_id(compressor_id).ok_or_else(|| {
        WireError::new(
            WireErrorKind::Compression,
            format!("unknown compressor id {compressor_id}"),
        )
    })?;

    // Rebuild the message the client compressed, so the inner decode (and the OP_MSG
    // checksum, which covers the header) sees it exactly as if it had been sent plain.
    let mut inner = Vec::with_capacity(total);
    for field in [
        total_i32,
        header.request_id,
        header.response_to,
        original_op_code,
    ] {
        inner.extend_from_slice(&field.to_le_bytes());
    }
    decompress_into(compressor, payload, total - HEADER_LEN, &mut inner)?;

    let request = decode_request(original_op_code, &inner)?;
    Ok(Frame {
        header,
        request,
        compressor: Some(compressor),
    })
}

fn decode_request(op_code: i32, msg: &[u8]) -> Result<Request, WireError> {
    match op_code {
        op::MSG => decode_op_msg(msg).map(Request::Msg),
        op::QUERY => decode_op_query(&msg[HEADER_LEN..]).map(Request::Query),
        other => Err(WireError::new(
            WireErrorKind::UnknownOpcode,
            format!("unknown opcode {other}"),
        )),
    }
}

/// `msg` is the whole message, header included: the checksum covers it all.
fn decode_op_msg(msg: &[u8]) -> Result<OpMsg, WireError> {
    let mut r = Reader(&msg[HEADER_LEN..]);
    let flag_bits = r.u32("flagBits")?;
    let unknown = flag_bits & flags::REQUIRED_MASK & !flags::KNOWN_REQUIRED;
    if unknown != 0 {
        return Err(malformed(format!(
            "unknown required OP_MSG flag bits {unknown:#x}"
        )));
    }
    if flag_bits & flags::CHECKSUM_PRESENT != 0 {
        let (covered, crc) = msg
            .split_last_chunk::<4>()
            .filter(|(covered, _)| covered.len() >= HEADER_LEN + 4)
            .ok_or_else(|| malformed("OP_MSG too short for its checksum"))?;
        let expected = u32::from_le_bytes(*crc);
        let actual = crc32c::crc32c(covered);
        if expected != actual {
            return Err(WireError::new(
                WireErrorKind::ChecksumMismatch,
                format!("OP_MSG checksum mismatch: expected {expected:#010x}, got {actual:#010x}"),
            ));
        }
        r = Reader(&covered[HEADER_LEN + 4..]);
    }

    let mut body = None;
    let mut sequences: Vec<(String, Vec<Document>)> = Vec::new();
    while !r.is_empty() {
        match r.u8("section kind")? {
            0 => {
                if body.is_some() {
                    return Err(malformed("OP_MSG has more than one body section"));
                }
                let (d, repeated) =
                    doc::raw::bytes_to_command(r.document_bytes(MAX_BODY_SIZE)?, MAX_BSON_DEPTH)
                        .map_err(|e| invalid_bson(e.to_string()))?;
                if let Some(field) = repeated {
                    return Err(duplicate_field(&d, &field));
                }
                body = Some(d);
            }
            1 => {
                let size = r.i32("section size")?;
                let content_len = usize::try_from(size)
                    .ok()
                    .and_then(|s| s.checked_sub(4))
                    .ok_or_else(|| malformed(format!("bad document sequence size {size}")))?;
                let mut section = Reader(r.take(content_len, "document sequence")?);
                let id = section.cstr("document sequence identifier")?;
                if sequences.iter().any(|(seen, _)| seen == id) {
                    return Err(malformed(format!("duplicate document sequence {id:?}")));
                }
                let mut docs = Vec::new();
                while !section.is_empty() {
                    docs.push(section.document(MAX_BSON_OBJECT_SIZE)?);
                }
                sequences.push((id.to_owned(), docs));
            }
            kind => return Err(malformed(format!("unknown OP_MSG section kind {kind}"))),
        }
    }
    let body = body.ok_or_else(|| malformed("OP_MSG has no body section"))?;
    if let Some((id, _)) = sequences.iter().find(|(id, _)| body.contains_key(id)) {
        return Err(malformed(format!(
            "document sequence {id:?} duplicates a body field"
        )));
    }
    Ok(OpMsg {
        flags: flag_bits,
        body,
        sequences,
    })
}

/// `body` is the message after the header.
fn decode_op_query(body: &[u8]) -> Result<OpQuery, WireError> {
    let mut r = Reader(body);
    let flags = r.u32("flags")?;
    let full_collection_name = r.cstr("fullCollectionName")?.to_owned();
    let number_to_skip = r.i32("numberToSkip")?;
    let number_to_return = r.i32("numberToReturn")?;
    let query = r.document(MAX_BODY_SIZE)?;
    let return_fields_selector = if r.is_empty() {
        None
    } else {
        Some(r.document(MAX_BSON_OBJECT_SIZE)?)
    };
    if !r.is_empty() {
        return Err(malformed(format!(
            "{} trailing bytes after OP_QUERY",
            r.0.len()
        )));
    }
    Ok(OpQuery {
        flags,
        full_collection_name,
        number_to_skip,
        number_to_return,
        query,
        return_fields_selector,
    })
}

/// Validates a declared message length and returns it as a `usize`.
fn message_length(len: i32) -> Result<usize, WireError> {
    usize::try_from(len)
        .ok()
        .filter(|len| (HEADER_LEN..=MAX_MESSAGE_SIZE_BYTES).contains(len))
        .ok_or_else(|| {
            invalid_length(format!(
                "message length {len} is outside {HEADER_LEN}..={MAX_MESSAGE_SIZE_BYTES}"
            ))
        })
}

/// A cursor that consumes a byte slice from the front; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or_else(|| {
            malformed(format!(
                "{what} needs {n} bytes but only {} remain",
                self.0.len()
            ))
        })?;
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], WireError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<N>()
            .ok_or_else(|| malformed(format!("truncated {what}")))?;
        self.0 = rest;
        Ok(*head)
    }

    fn u8(&mut self, what: &str) -> Result<u8, WireError> {
        self.array::<1>(what).map(|[b]| b)
    }

    fn i32(&mut self, what: &str) -> Result<i32, WireError> {
        self.array(what).map(i32::from_le_bytes)
    }

    fn u32(&mut self, what: &str) -> Result<u32, WireError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn cstr(&mut self, what: &str) -> Result<&'a str, WireError> {
        let nul = self
            .0
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| malformed(format!("unterminated {what}")))?;
        let s = std::str::from_utf8(&self.0[..nul])
            .map_err(|_| malformed(format!("{what} is not valid UTF-8")))?;
        self.0 = &self.0[nul + 1..];
        Ok(s)
    }

    /// Reads one BSON document of at most `limit` bytes.
    fn document(&mut self, limit: usize) -> Result<Document, WireError> {
        parse_document(self.document_bytes(limit)?)
    }

    /// The bytes of the document that comes next, its length checked against `limit`.
    fn document_bytes(&mut self, limit: usize) -> Result<&'a [u8], WireError> {
        let declared = self
            .0
            .first_chunk::<4>()
            .map(|len| i32::from_le_bytes(*len))
            .ok_or_else(|| malformed("truncated document length"))?;
        let len = usize::try_from(declared)
            .ok()
            .filter(|&len| len >= 5)
            .ok_or_else(|| invalid_bson(format!("bad document length {declared}")))?;
        if len > limit {
            return Err(WireError::new(
                WireErrorKind::TooLarge,
                format!("document of {len} bytes is over the {limit}-byte limit"),
            ));
        }
        self.take(len, "document")
    }
}

/// A command body that repeats a top-level field, refused as mongod's command parsers
/// refuse it (`{insert, documents, documents}` would otherwise keep only the last).
fn duplicate_field(body: &Document, field: &str) -> WireError {
    let command = body.keys().next().map_or("", String::as_str);
    WireError::new(
        WireErrorKind::DuplicateField,
        format!("BSON field '{command}.{field}' is a duplicate field"),
    )
}

/// Fully validates `bytes` as exactly one BSON document and converts it, refusing nesting
/// deeper than `MAX_BSON_DEPTH` (the conversion recurses once per level, and 16 MiB of
/// `{a: {a: ...}}` would otherwise blow the stack).
fn parse_document(bytes: &[u8]) -> Result<Document, WireError> {
    doc::raw::bytes_to_document(bytes, MAX_BSON_DEPTH).map_err(|e| invalid_bson(e.to_string()))
}

fn malformed(message: impl Into<String>) -> WireError {
    WireError::new(WireErrorKind::Malformed, message)
}

fn invalid_length(message: impl Into<String>) -> WireError {
    WireError::new(WireErrorKind::InvalidLength, message)
}

fn invalid_bson(message: impl Into<String>) -> WireError {
    WireError::new(WireErrorKind::InvalidBson, message)
}
