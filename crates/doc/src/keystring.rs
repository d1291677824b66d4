//! KeyString (MongoDB's format V1): an order-preserving byte encoding of BSON values.
//!
//! Comparing two encodings with `memcmp` gives the same answer as comparing the values in
//! MongoDB's order ([`crate::compare::cmp_values`]), and values that compare equal (`1`, `1.0`,
//! `NumberLong(1)`) encode to the same bytes. What the bytes lose (the exact numeric type,
//! string vs symbol) goes into separate [`TypeBits`], which only decoding reads. Implemented
//! from the byte tables in `shared/resume-tokens.md` §3 (not from MongoDB's source).
//!
//! Key decisions and limitations:
//! - A key is each value's encoding (type byte + payload, every byte complemented for a
//!   descending field) followed by the end byte `04`. Inside objects each field is written as
//!   its generic type byte, the raw name, `00`, then the value; objects and arrays end in `00`.
//! - `undefined` encodes as `0F`, below `null` (`14`), as MongoDB's KeyString does, although
//!   `cmp_values` treats the two as equal. DBPointers encode by namespace length, namespace and
//!   OID, whereas `cmp_values` treats all DBPointers as equal.
//! - Decimal128 is keyed by its nearest double (the same value `cmp_values` compares by), so
//!   decimals that are not exactly a double share a key with that double; MongoDB's own decimal
//!   continuation bytes are not produced. The exact decimal is kept in the type bits (an
//!   Eddy-specific layout: the decimal tag `11`, then for a zero key the marker `111`, then the
//!   128 raw bits), so decoding restores it exactly. Decoding rejects keys that carry MongoDB's
//!   decimal continuation bits.
//! - Only the `04` end byte is produced and accepted (never the `01`/`FE` range discriminators).
//! - Under a collation ([`append_value_collated`]) a string is keyed by its collation sort
//!   key in place of its UTF-8 bytes, as MongoDB keys indexes with a collation; such keys
//!   order and compare equal as the collation does, and cannot be decoded back to the string.

use bson::spec::BinarySubtype;
use bson::{Binary, Bson, Document, JavaScriptCodeWithScope, Regex, Timestamp};

use crate::collation::Collation;
use crate::compare::decimal_to_f64;

/// The end byte of a whole key.
pub const END: u8 = 0x04;

const MIN_KEY: u8 = 0x0A;
const UNDEFINED: u8 = 0x0F;
const NULL: u8 = 0x14;
const NAN: u8 = 0x1E;
const NEG_LARGE: u8 = 0x1F;
const NEG_SMALL: u8 = 0x28;
const ZERO: u8 = 0x29;
const POS_SMALL: u8 = 0x2A;
const POS_LARGE: u8 = 0x33;
const STRING: u8 = 0x3C;
const OBJECT: u8 = 0x46;
const ARRAY: u8 = 0x50;
const BIN_DATA: u8 = 0x5A;
const OID: u8 = 0x64;
const FALSE: u8 = 0x6E;
const TRUE: u8 = 0x6F;
const DATE: u8 = 0x78;
const TIMESTAMP: u8 = 0x82;
const REGEX: u8 = 0x8C;
const DB_REF: u8 = 0x96;
const CODE: u8 = 0xA0;
const CODE_W_SCOPE: u8 = 0xAA;
const MAX_KEY: u8 = 0xF0;

/// Deepest object/array nesting `decode_key` accepts (guards against stack exhaustion).
const MAX_DEPTH: usize = 200;

const TWO_63: f64 = 9_223_372_036_854_775_808.0;

/// 2^e as a double (exact for -1022 <= e <= 1023).
fn pow2(e: i32) -> f64 {
    f64::from_bits(((1023 + e) as u64) << 52)
}

/// The bits that restore exact types on decode: 2 per number (int32 `00`, int64 `01`,
/// double `10`, decimal `11` + more; -0.0 is `11000`), 1 per string (`0`) or symbol (`1`),
/// packed from the least significant bit of each byte up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeBits {
    data: Vec<u8>,
    len: usize,
}

impl TypeBits {
    /// No bits.
    pub fn new() -> TypeBits {
        TypeBits::default()
    }

    fn push(&mut self, bit: bool) {
        if self.len.is_multiple_of(8) {
            self.data.push(0);
        }
        if bit {
            *self.data.last_mut().expect("pushed above") |= 1 << (self.len % 8);
        }
        self.len += 1;
    }

    fn push_all(&mut self, bits: &[u8]) {
        bits.iter().for_each(|b| self.push(*b != 0));
    }

    /// Whether every bit is zero (then MongoDB omits `_typeBits`).
    pub fn is_all_zero(&self) -> bool {
        self.data.iter().all(|b| *b == 0)
    }

    /// The serialised form: empty when all zero; one byte when there is a single data byte
    /// below `0x80`; else `0x80|n` and n bytes (n <= 127), or `0x80`, a 4-byte little-endian
    /// length and the bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let n = self.data.len();
        if self.is_all_zero() {
            return Vec::new();
        }
        if n == 1 && self.data[0] < 0x80 {
            return self.data.clone();
        }
        let mut out = Vec::with_capacity(n + 5);
        if n <= 127 {
            out.push(0x80 | n as u8);
        } else {
            out.push(0x80);
            out.extend_from_slice(&(n as u32).to_le_bytes());
        }
        out.extend_from_slice(&self.data);
        out
    }
}

/// Reads serialised type bits; past the end every bit reads as zero.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn parse(bytes: &'a [u8]) -> Result<BitReader<'a>, String> {
        let (header, len) = match bytes.first() {
            None => (0, 0),
            Some(&b) if b & 0x80 == 0 => (0, 1),
            Some(&0x80) => {
                let len = bytes.get(1..5).ok_or("type bits: truncated length")?;
                (
                    5,
                    u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize,
                )
            }
            Some(&b) => (1, (b & 0x7F) as usize),
        };
        if header + len != bytes.len() {
            return Err("type bits: length does not match".into());
        }
        Ok(BitReader {
            data: &bytes[header..],
            pos: 0,
        })
    }

    fn bit(&mut self) -> u8 {
        let byte = self.data.get(self.pos / 8).copied().unwrap_or(0);
        let bit = (byte >> (self.pos % 8)) & 1;
        self.pos += 1;
        bit
    }

    fn bits(&mut self, n: usize) -> u8 {
        (0..n).fold(0, |acc, _| (acc << 1) | self.bit())
    }
}

/// Upper-case hex of `b`, as resume tokens' `_data` spells KeyString bytes.
pub fn hex_upper(b: &[u8]) -> String {
    let mut s = Vec::with_capacity(b.len() * 2);
    hex_upper_into(&mut s, b);
    String::from_utf8(s).expect("hex digits are ASCII")
}

/// Appends `b` in uppercase hex to `out`.
pub fn hex_upper_into(out: &mut Vec<u8>, b: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    out.reserve(b.len() * 2);
    for &x in b {
        out.extend_from_slice(&[DIGITS[usize::from(x >> 4)], DIGITS[usize::from(x & 0x0F)]]);
    }
}

/// Appends one value's encoding (type byte + payload), ascending or descending (all bytes
/// inverted). The type bits are discarded; see [`append_value_with_type_bits`].
pub fn append_value(buf: &mut Vec<u8>, v: &Bson, descending: bool) {
    append_value_with_type_bits(buf, &mut TypeBits::new(), v, descending);
}

/// As [`append_value`], also appending the value's type bits to `tb`.
pub fn append_value_with_type_bits(
    buf: &mut Vec<u8>,
    tb: &mut TypeBits,
    v: &Bson,
    descending: bool,
) {
    let start = buf.len();
    encode(buf, tb, v, None);
    if descending {
        buf[start..].iter_mut().for_each(|b| *b = !*b);
    }
}

/// As [`append_value_with_type_bits`] (ascending) for a document value, without it having
/// to be wrapped in a `Bson` (which would mean copying it).
pub fn append_document_with_type_bits(buf: &mut Vec<u8>, tb: &mut TypeBits, d: &Document) {
    buf.push(OBJECT);
    encode_fields(buf, tb, d, None);
}

/// The end byte of a whole key.
pub fn append_end(buf: &mut Vec<u8>) {
    buf.push(END);
}

/// As [`append_value`], with every string (also inside objects and arrays) keyed by its
/// sort key under `coll`; `None` is [`append_value`] itself.
pub fn append_value_collated(
    buf: &mut Vec<u8>,
    v: &Bson,
    descending: bool,
    coll: Option<&Collation>,
) {
    let start = buf.len();
    encode(buf, &mut TypeBits::new(), v, coll);
    if descending {
        buf[start..].iter_mut().for_each(|b| *b = !*b);
    }
}

/// A whole key: each value in turn, then the end byte `04`. Used for index keys and `_id`
/// record keys.
pub fn encode_key(values: &[(&Bson, bool)]) -> Vec<u8> {
    encode_key_with_type_bits(values).0
}

/// As [`encode_key`], also returning the key's type bits.
pub fn encode_key_with_type_bits(values: &[(&Bson, bool)]) -> (Vec<u8>, TypeBits) {
    let mut buf = Vec::new();
    let mut tb = TypeBits::new();
    for (v, desc) in values {
        append_value_with_type_bits(&mut buf, &mut tb, v, *desc);
    }
    buf.push(END);
    (buf, tb)
}

/// The type byte a value has as a field inside an object (all numbers `1E`, both bools `6E`).
fn generic_type(v: &Bson) -> u8 {
    match v {
        Bson::MinKey => MIN_KEY,
        Bson::Undefined => UNDEFINED,
        Bson::Null => NULL,
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => NAN,
        Bson::String(_) | Bson::Symbol(_) => STRING,
        Bson::Document(_) => OBJECT,
        Bson::Array(_) => ARRAY,
        Bson::Binary(_) => BIN_DATA,
        Bson::ObjectId(_) => OID,
        Bson::Boolean(_) => FALSE,
        Bson::DateTime(_) => DATE,
        Bson::Timestamp(_) => TIMESTAMP,
        Bson::RegularExpression(_) => REGEX,
        Bson::DbPointer(_) => DB_REF,
        Bson::JavaScriptCode(_) => CODE,
        Bson::JavaScriptCodeWithScope(_) => CODE_W_SCOPE,
        Bson::MaxKey => MAX_KEY,
    }
}

fn encode(buf: &mut Vec<u8>, tb: &mut TypeBits, v: &Bson, coll: Option<&Collation>) {
    match v {
        Bson::Int32(i) => {
            tb.push_all(&[0, 0]);
            encode_int(buf, i64::from(*i));
        }
        Bson::Int64(i) => {
            tb.push_all(&[0, 1]);
            encode_int(buf, *i);
        }
        Bson::Double(d) => {
            if *d == 0.0 && d.is_sign_negative() {
                tb.push_all(&[1, 1, 0, 0, 0]);
            } else {
                tb.push_all(&[1, 0]);
            }
            encode_double(buf, *d);
        }
        Bson::Decimal128(dec) => {
            let d = decimal_to_f64(dec);
            tb.push_all(&[1, 1]);
            if d == 0.0 {
                tb.push_all(&[1, 1, 1]);
            }
            for byte in dec.bytes() {
                (0..8).for_each(|i| tb.push(byte >> i & 1 == 1));
            }
            encode_double(buf, d);
        }
        Bson::String(s) | Bson::Symbol(s) => {
            tb.push(matches!(v, Bson::Symbol(_)));
            buf.push(STRING);
            match coll {
                None => encode_str(buf, s),
                Some(c) => encode_bytes(buf, &c.sort_key(s)),
            }
        }
        Bson::Document(d) => {
            buf.push(OBJECT);
            encode_fields(buf, tb, d, coll);
        }
        Bson::Array(a) => {
            buf.push(ARRAY);
            a.iter().for_each(|e| encode(buf, tb, e, coll));
            buf.push(0);
        }
        Bson::Binary(b) => {
            buf.push(BIN_DATA);
            if b.bytes.len() < 0xFF {
                buf.push(b.bytes.len() as u8);
            } else {
                buf.push(0xFF);
                buf.extend_from_slice(&(b.bytes.len() as u32).to_be_bytes());
            }
            buf.push(u8::from(b.subtype));
            buf.extend_from_slice(&b.bytes);
        }
        Bson::ObjectId(o) => {
            buf.push(OID);
            buf.extend_from_slice(&o.bytes());
        }
        Bson::Boolean(b) => buf.push(if *b { TRUE } else { FALSE }),
        Bson::DateTime(d) => {
            buf.push(DATE);
            buf.extend_from_slice(&((d.timestamp_millis() as u64) ^ (1 << 63)).to_be_bytes());
        }
        Bson::Timestamp(t) => {
            buf.push(TIMESTAMP);
            buf.extend_from_slice(&t.time.to_be_bytes());
            buf.extend_from_slice(&t.increment.to_be_bytes());
        }
        Bson::RegularExpression(r) => {
            buf.push(REGEX);
            for part in [&r.pattern, &r.options] {
                buf.extend_from_slice(part.as_bytes());
                buf.push(0);
            }
        }
        Bson::DbPointer(_) => {
            let (ns, oid) = db_pointer_parts(v);
            buf.push(DB_REF);
            buf.extend_from_slice(&(ns.len() as u32).to_be_bytes());
            buf.extend_from_slice(&ns);
            buf.extend_from_slice(&oid);
        }
        Bson::JavaScriptCode(c) => {
            buf.push(CODE);
            encode_str(buf, c);
        }
        Bson::JavaScriptCodeWithScope(c) => {
            buf.push(CODE_W_SCOPE);
            encode_str(buf, &c.code);
            encode_fields(buf, tb, &c.scope, coll);
        }
        other => buf.push(generic_type(other)),
    }
}

/// Object body: per field the generic type byte, the name, `00`, the value; then `00`.
fn encode_fields(buf: &mut Vec<u8>, tb: &mut TypeBits, d: &Document, coll: Option<&Collation>) {
    for (k, v) in d {
        buf.push(generic_type(v));
        buf.extend_from_slice(k.as_bytes());
        buf.push(0);
        encode(buf, tb, v, coll);
    }
    buf.push(0);
}

/// String body: the UTF-8 bytes with each `00` written as `00 FF`, then `00`.
fn encode_str(buf: &mut Vec<u8>, s: &str) {
    encode_bytes(buf, s.as_bytes());
}

/// Bytes with each `00` written as `00 FF`, then `00`: order-preserving and self-delimiting.
fn encode_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        buf.push(b);
        if b == 0 {
            buf.push(0xFF);
        }
    }
    buf.push(0);
}

/// Pushes a payload's big-endian bytes, complemented for negative values.
fn push_payload(buf: &mut Vec<u8>, bytes: &[u8], negative: bool) {
    buf.extend(bytes.iter().map(|b| if negative { !b } else { *b }));
}

fn encode_int(buf: &mut Vec<u8>, i: i64) {
    match i {
        0 => buf.push(ZERO),
        i64::MIN => encode_double(buf, -TWO_63),
        _ => encode_integral(buf, i.unsigned_abs(), i < 0),
    }
}

/// An integer magnitude `0 < m < 2^63`: `m << 1` in the fewest bytes n, type `2A+n` / `28-n`.
fn encode_integral(buf: &mut Vec<u8>, m: u64, negative: bool) {
    let v = m << 1;
    let n = 8 - (v.leading_zeros() / 8) as u8;
    buf.push(if negative {
        NEG_SMALL - n
    } else {
        POS_SMALL + n
    });
    push_payload(buf, &v.to_be_bytes()[8 - n as usize..], negative);
}

fn encode_double(buf: &mut Vec<u8>, d: f64) {
    if d.is_nan() {
        return buf.push(NAN);
    }
    if d == 0.0 {
        return buf.push(ZERO);
    }
    let negative = d < 0.0;
    let a = d.abs();
    if a >= TWO_63 {
        let payload = if a.is_infinite() {
            u64::MAX
        } else {
            (a.to_bits() << 1) & !(1 << 63)
        };
        buf.push(if negative { NEG_LARGE } else { POS_LARGE });
        push_payload(buf, &payload.to_be_bytes(), negative);
    } else if a < 1.0 {
        let payload = if a >= pow2(-255) {
            a.to_bits() << 2
        } else {
            ((a * pow2(256)).to_bits() << 1) + (1 << 62)
        };
        buf.push(if negative { NEG_SMALL } else { POS_SMALL });
        push_payload(buf, &payload.to_be_bytes(), negative);
    } else if a.fract() == 0.0 {
        encode_integral(buf, a as u64, negative);
    } else {
        // 1 <= a < 2^53 with a fraction: the top 8-F bytes hold 2I+1, the low F bytes the
        // fraction (whose lowest 2 bits, the decimal continuation marker, stay 0).
        let int = a.trunc() as u64;
        let f = (int << 1).leading_zeros() / 8;
        let frac = ((a - a.trunc()) * pow2(8 * f as i32)) as u64;
        let payload = ((2 * int + 1) << (8 * f)) | frac;
        buf.push(if negative {
            0x20 + f as u8
        } else {
            0x32 - f as u8
        });
        push_payload(buf, &payload.to_be_bytes(), negative);
    }
}

/// The namespace and OID of a DBPointer (its fields are private in `bson`, so read them back
/// from the value's BSON bytes).
fn db_pointer_parts(v: &Bson) -> (Vec<u8>, [u8; 12]) {
    let mut raw = Vec::new();
    let mut d = Document::new();
    d.insert("", v.clone());
    let _ = d.to_writer(&mut raw);
    // Layout: i32 doc length, 0x0C, "" name (00), i32 string length (with NUL), ns, 00, oid.
    let slen = raw
        .get(6..10)
        .map_or(1, |s| i32::from_le_bytes(s.try_into().expect("4")));
    let slen = usize::try_from(slen).unwrap_or(1).max(1);
    let ns = raw.get(10..9 + slen).unwrap_or_default().to_vec();
    let mut oid = [0; 12];
    if let Some(o) = raw.get(10 + slen..22 + slen) {
        oid.copy_from_slice(o);
    }
    (ns, oid)
}

fn make_db_pointer(ns: &[u8], oid: &[u8]) -> Result<Bson, String> {
    let mut raw = Vec::new();
    let total = 4 + 1 + 1 + 4 + ns.len() + 1 + 12 + 1;
    raw.extend_from_slice(&(total as i32).to_le_bytes());
    raw.extend_from_slice(&[0x0C, 0]);
    raw.extend_from_slice(&((ns.len() + 1) as i32).to_le_bytes());
    raw.extend_from_slice(ns);
    raw.push(0);
    raw.extend_from_slice(oid);
    raw.push(0);
    let d = Document::from_reader(raw.as_slice()).map_err(|e| format!("bad DBPointer: {e}"))?;
    d.get("")
        .cloned()
        .ok_or_else(|| "bad DBPointer".to_string())
}

/// Decodes an ascending key (as produced by [`encode_key`] with all fields ascending) back to
/// its values, restoring exact types from `type_bits` (serialised as by
/// [`TypeBits::to_bytes`]; `None` or empty means all zero: integers decode as int32, or int64
/// when too large). Errors on malformed input; never panics.
pub fn decode_key(bytes: &[u8], type_bits: Option<&[u8]>) -> Result<Vec<Bson>, String> {
    let mut tb = BitReader::parse(type_bits.unwrap_or_default())?;
    let mut r = Reader { bytes, pos: 0 };
    let mut out = Vec::new();
    loop {
        match r.byte()? {
            END => break,
            t => out.push(decode_value(&mut r, &mut tb, t, 0)?),
        }
    }
    if r.pos != bytes.len() {
        return Err("trailing bytes after the end of the key".into());
    }
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self.bytes.get(self.pos).ok_or("key is truncated")?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.bytes.len());
        let s = &self.bytes[self.pos..end.ok_or("key is truncated")?];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    /// A big-endian u64 from n <= 8 bytes, complemented when `negative`.
    fn uint(&mut self, n: usize, negative: bool) -> Result<u64, String> {
        let v = self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        let mask = if n == 0 { 0 } else { u64::MAX >> (64 - 8 * n) };
        Ok(if negative { !v & mask } else { v })
    }

    /// Bytes up to the next `00` (not included, consumed).
    fn cstring(&mut self) -> Result<String, String> {
        let len = self.bytes[self.pos..]
            .iter()
            .position(|b| *b == 0)
            .ok_or("unterminated")?;
        let s = self.take(len)?.to_vec();
        self.pos += 1;
        String::from_utf8(s).map_err(|_| "invalid UTF-8 in key".into())
    }

    /// A string body with `00 FF` escapes.
    fn string(&mut self) -> Result<String, String> {
        let mut s = Vec::new();
        loop {
            match self.byte()? {
                0 if self.bytes.get(self.pos) == Some(&0xFF) => {
                    self.pos += 1;
                    s.push(0);
                }
                0 => break,
                b => s.push(b),
            }
        }
        String::from_utf8(s).map_err(|_| "invalid UTF-8 in key".into())
    }
}

fn decode_fields(r: &mut Reader, tb: &mut BitReader, depth: usize) -> Result<Document, String> {
    let mut d = Document::new();
    while r.byte()? != 0 {
        let name = r.cstring()?;
        let t = r.byte()?;
        d.insert(name, decode_value(r, tb, t, depth + 1)?);
    }
    Ok(d)
}

fn decode_value(r: &mut Reader, tb: &mut BitReader, t: u8, depth: usize) -> Result<Bson, String> {
    if depth > MAX_DEPTH {
        return Err("key nested too deeply".into());
    }
    Ok(match t {
        MIN_KEY => Bson::MinKey,
        UNDEFINED => Bson::Undefined,
        NULL => Bson::Null,
        NAN..=POS_LARGE => decode_number(r, tb, t)?,
        STRING => {
            let s = r.string()?;
            if tb.bit() == 1 {
                Bson::Symbol(s)
            } else {
                Bson::String(s)
            }
        }
        OBJECT => Bson::Document(decode_fields(r, tb, depth)?),
        ARRAY => {
            let mut a = Vec::new();
            loop {
                match r.byte()? {
                    0 => break,
                    t => a.push(decode_value(r, tb, t, depth + 1)?),
                }
            }
            Bson::Array(a)
        }
        BIN_DATA => {
            let len = match r.byte()? {
                0xFF => u32::from_be_bytes(r.array()?) as usize,
                n => n as usize,
            };
            let subtype = BinarySubtype::from(r.byte()?);
            Bson::Binary(Binary {
                subtype,
                bytes: r.take(len)?.to_vec(),
            })
        }
        OID => Bson::ObjectId(bson::oid::ObjectId::from_bytes(r.array()?)),
        FALSE => Bson::Boolean(false),
        TRUE => Bson::Boolean(true),
        DATE => Bson::DateTime(bson::DateTime::from_millis(
            (u64::from_be_bytes(r.array()?) ^ (1 << 63)) as i64,
        )),
        TIMESTAMP => Bson::Timestamp(Timestamp {
            time: u32::from_be_bytes(r.array()?),
            increment: u32::from_be_bytes(r.array()?),
        }),
        REGEX => Bson::RegularExpression(Regex {
            pattern: r.cstring()?,
            options: r.cstring()?,
        }),
        DB_REF => {
            let len = u32::from_be_bytes(r.array()?) as usize;
            let ns = r.take(len)?.to_vec();
            make_db_pointer(&ns, r.take(12)?)?
        }
        CODE => Bson::JavaScriptCode(r.string()?),
        CODE_W_SCOPE => Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope {
            code: r.string()?,
            scope: decode_fields(r, tb, depth)?,
        }),
        MAX_KEY => Bson::MaxKey,
        other => {
            return Err(format!(
                "KeyString format error: unknown type byte {other:#04x}"
            ));
        }
    })
}

/// A decoded numeric value before its exact type is restored.
enum Num {
    Zero,
    Int(i64),
    Float(f64),
}

fn decode_number(r: &mut Reader, tb: &mut BitReader, t: u8) -> Result<Bson, String> {
    let tag = tb.bits(2);
    let negative = t < ZERO;
    let num = match t {
        NAN => Num::Float(f64::NAN),
        ZERO => Num::Zero,
        NEG_LARGE | POS_LARGE => {
            let p = r.uint(8, negative)?;
            let a = if p == u64::MAX {
                f64::INFINITY
            } else {
                f64::from_bits((p | 1 << 63) >> 1)
            };
            Num::Float(if negative { -a } else { a })
        }
        NEG_SMALL | POS_SMALL => {
            let p = r.uint(8, negative)?;
            let a = if p >= 0xC000_0000_0000_0000 {
                f64::from_bits(p >> 2)
            } else if p >= 1 << 62 {
                f64::from_bits((p - (1 << 62)) >> 1) * pow2(-256)
            } else {
                return Err("bad small-number payload".into());
            };
            Num::Float(if negative { -a } else { a })
        }
        _ => {
            let n = if negative {
                (NEG_SMALL - t) as usize
            } else {
                (t - POS_SMALL) as usize
            };
            let head = r.uint(n, negative)?;
            if head & 1 == 0 {
                let m = (head >> 1) as i64;
                Num::Int(if negative { -m } else { m })
            } else {
                let f = 8 - n;
                let p = (head << (8 * f as u32)) | r.uint(f, negative)?;
                if p & 3 != 0 {
                    return Err("decimal continuation in key is not supported".into());
                }
                let frac_bits = if f == 0 {
                    0
                } else {
                    p & (u64::MAX >> (64 - 8 * f))
                };
                let a = (head >> 1) as f64 + frac_bits as f64 * pow2(-8 * f as i32);
                Num::Float(if negative { -a } else { a })
            }
        }
    };
    Ok(match (tag, num) {
        (3, n) => {
            if matches!(n, Num::Zero) {
                match tb.bits(3) {
                    0 => return Ok(Bson::Double(-0.0)),
                    7 => {}
                    _ => return Err("bad zero type bits".into()),
                }
            }
            let mut bytes = [0u8; 16];
            for byte in &mut bytes {
                *byte = (0..8).fold(0, |acc, i| acc | tb.bit() << i);
            }
            Bson::Decimal128(bson::Decimal128::from_bytes(bytes))
        }
        (2, Num::Zero) => Bson::Double(0.0),
        (2, Num::Int(i)) => Bson::Double(i as f64),
        (_, Num::Float(f)) if tag == 2 || f != -TWO_63 => Bson::Double(f),
        (_, Num::Float(_)) => Bson::Int64(i64::MIN),
        (1, Num::Zero) => Bson::Int64(0),
        (_, Num::Zero) => Bson::Int32(0),
        (1, Num::Int(i)) => Bson::Int64(i),
        (_, Num::Int(i)) => i32::try_from(i).map_or(Bson::Int64(i), Bson::Int32),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::cmp_values;
    use bson::oid::ObjectId;
    use bson::{Decimal128, bson, doc};
    use std::cmp::Ordering;

    fn hex(b: &[u8]) -> String {
        let h = hex_upper(b);
        assert_eq!(h, b.iter().map(|b| format!("{b:02X}")).collect::<String>());
        h
    }

    fn enc(v: &Bson) -> String {
        let mut buf = Vec::new();
        append_value(&mut buf, v, false);
        hex(&buf)
    }

    fn dec(s: &str) -> Bson {
        Bson::Decimal128(s.parse::<Decimal128>().unwrap())
    }

    fn bin(subtype: u8, bytes: Vec<u8>) -> Bson {
        Bson::Binary(Binary {
            subtype: BinarySubtype::from(subtype),
            bytes,
        })
    }

    /// Exact equality (types, -0.0, NaN) via the BSON bytes.
    fn same(a: &Bson, b: &Bson) -> bool {
        let raw = |v: &Bson| {
            let mut out = Vec::new();
            doc! {"v": v.clone()}.to_writer(&mut out).unwrap();
            out
        };
        raw(a) == raw(b)
    }

    #[test]
    fn number_vectors_from_the_spec() {
        let cases: &[(Bson, &str)] = &[
            (bson!(1), "2B02"),
            (bson!(2), "2B04"),
            (bson!(42), "2B54"),
            (bson!(127), "2BFE"),
            (bson!(128), "2C0100"),
            (bson!(255), "2C01FE"),
            (bson!(-1), "27FD"),
            (bson!(-42), "27AB"),
            (bson!(i32::MAX), "2EFFFFFFFE"),
            (bson!(i32::MIN), "23FEFFFFFFFF"),
            (bson!(1_234_567_890_123_i64), "30023EE3F60996"),
            (bson!(i64::MAX), "32FFFFFFFFFFFFFFFE"),
            (bson!(i64::MIN), "1FF83FFFFFFFFFFFFF"),
            (bson!(1.5), "2B0380000000000000"),
            (bson!(-2.25), "27FABFFFFFFFFFFFFF"),
            (bson!(std::f64::consts::PI), "2B07243F6A8885A300"),
            (bson!(123_456.789), "2D03C481C9FBE76C90"),
            (bson!(0.5), "2AFF80000000000000"),
            (bson!(-0.5), "28007FFFFFFFFFFFFF"),
            (bson!(f64::INFINITY), "33FFFFFFFFFFFFFFFF"),
            (bson!(f64::NEG_INFINITY), "1F0000000000000000"),
            (bson!(1e20), "33082B5E3AF16B1880"),
            (bson!(0), "29"),
            (bson!(-0.0), "29"),
            (bson!(f64::NAN), "1E"),
            (bson!(2.0), "2B04"),
        ];
        for (v, want) in cases {
            assert_eq!(enc(v), *want, "{v:?}");
        }
    }

    #[test]
    fn other_type_vectors() {
        assert_eq!(enc(&bson!("a\0b")), "3C6100FF6200");
        assert_eq!(enc(&Bson::MinKey), "0A");
        assert_eq!(enc(&Bson::MaxKey), "F0");
        assert_eq!(enc(&Bson::Null), "14");
        assert_eq!(enc(&bson!(true)), "6F");
        assert_eq!(enc(&bson!({"_id": 1})), "461E5F6964002B0200");
        assert_eq!(enc(&bson!([1, "x"])), "502B023C780000");
        assert_eq!(
            enc(&Bson::Timestamp(Timestamp {
                time: 1_666_193_824,
                increment: 1
            })),
            "82635019A000000001"
        );
        assert_eq!(
            enc(&Bson::DateTime(bson::DateTime::from_millis(0))),
            "788000000000000000"
        );
        assert_eq!(
            enc(&bin(4, vec![0xAB; 16])),
            format!("5A1004{}", "AB".repeat(16))
        );
        let big = enc(&bin(0, vec![1; 300]));
        assert_eq!(&big[..14], "5AFF0000012C00");
        let mut desc = Vec::new();
        append_value(&mut desc, &bson!(1), true);
        assert_eq!(desc, [!0x2Bu8, !0x02u8]);
    }

    /// Values in ascending MongoDB order (ties allowed); the pairwise test checks everything.
    fn values() -> Vec<Bson> {
        let oid = |b: u8| Bson::ObjectId(ObjectId::from_bytes([b; 12]));
        let ts = |t, i| {
            Bson::Timestamp(Timestamp {
                time: t,
                increment: i,
            })
        };
        let re = |p: &str, o: &str| {
            Bson::RegularExpression(Regex {
                pattern: p.into(),
                options: o.into(),
            })
        };
        let cws = |c: &str, s: Document| {
            Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope {
                code: c.into(),
                scope: s,
            })
        };
        let date = |ms| Bson::DateTime(bson::DateTime::from_millis(ms));
        vec![
            Bson::MinKey,
            Bson::Null,
            bson!(f64::NAN),
            dec("NaN"),
            bson!(f64::NEG_INFINITY),
            dec("-1E+400"),
            bson!(f64::MIN),
            bson!(-1e300),
            bson!(-1.8446744073709552e19),
            bson!(i64::MIN),
            bson!(-TWO_63),
            bson!(i64::MIN + 1),
            bson!(-9.2e18),
            bson!(-9_007_199_254_740_993_i64),
            bson!(-9_007_199_254_740_992.0),
            bson!(-4_503_599_627_370_495.5),
            bson!(-1e15 - 0.5),
            bson!(-123_456.789),
            bson!(-1000),
            bson!(-256),
            bson!(-255.5),
            bson!(-255),
            bson!(-128),
            bson!(-127),
            bson!(-2.25),
            bson!(-2),
            dec("-2"),
            bson!(-1.5),
            dec("-1.5"),
            bson!(-1),
            bson!(-0.9999999999),
            bson!(-0.5),
            bson!(-pow2(-255)),
            bson!(-1e-300),
            bson!(-1e-310),
            bson!(-5e-324),
            bson!(0),
            bson!(-0.0),
            bson!(0.0),
            bson!(0_i64),
            dec("0"),
            dec("-0.00"),
            bson!(5e-324),
            bson!(1e-310),
            bson!(1e-300),
            bson!(1e-100),
            bson!(pow2(-256)),
            bson!(pow2(-255)),
            bson!(0.1),
            dec("0.1"),
            bson!(0.5),
            bson!(0.9999999999999999),
            bson!(1),
            bson!(1.0),
            bson!(1_i64),
            dec("1.0"),
            bson!(1.0000000000000002),
            bson!(1.5),
            bson!(2),
            bson!(2.5),
            bson!(42),
            bson!(127),
            bson!(127.5),
            bson!(128),
            bson!(255),
            bson!(255.5),
            bson!(256),
            bson!(123_456.789),
            bson!(i32::MAX),
            bson!(2_147_483_648_i64),
            bson!(1_234_567_890_123_i64),
            bson!(4_503_599_627_370_495.5),
            bson!(9_007_199_254_740_991_i64),
            bson!(9_007_199_254_740_992.0),
            bson!(9_007_199_254_740_993_i64),
            bson!(9_007_199_254_740_994.0),
            bson!(9.2e18),
            bson!(i64::MAX - 1),
            bson!(i64::MAX),
            bson!(TWO_63),
            bson!(1e20),
            bson!(1e300),
            bson!(f64::MAX),
            bson!(f64::INFINITY),
            dec("1E+400"),
            bson!(""),
            bson!("\0"),
            bson!("\0a"),
            bson!("a"),
            Bson::Symbol("a".into()),
            bson!("a\0"),
            bson!("a\0b"),
            bson!("a\u{1}"),
            bson!("ab"),
            bson!("b"),
            bson!("é"),
            bson!({}),
            bson!({"a": Bson::MinKey}),
            bson!({"a": null}),
            bson!({"": 1}),
            bson!({"a": 1}),
            bson!({"a": 1_i64, "b": 1}),
            bson!({"a": 2}),
            bson!({"ab": 1}),
            bson!({"b": 1}),
            bson!({"a": "x"}),
            bson!({"a": {"b": 1}}),
            bson!({"a": [1]}),
            bson!({"a": true}),
            bson!({"b": Bson::MaxKey}),
            bson!([]),
            bson!([null]),
            bson!([1]),
            bson!([1, 2]),
            bson!([1, "a"]),
            bson!([2]),
            bson!([{}]),
            bson!([[]]),
            bin(0, vec![]),
            bin(5, vec![]),
            bin(0, vec![0]),
            bin(0, vec![1]),
            bin(4, vec![0; 16]),
            bin(4, vec![0xFF; 16]),
            bin(0, vec![7; 254]),
            bin(0, vec![0; 255]),
            bin(0, vec![0; 256]),
            oid(0),
            oid(1),
            oid(0xFF),
            bson!(false),
            bson!(true),
            date(i64::MIN),
            date(-1),
            date(0),
            date(1),
            date(i64::MAX),
            ts(0, 0),
            ts(0, 1),
            ts(1, 0),
            ts(u32::MAX, u32::MAX),
            re("a", ""),
            re("a", "i"),
            re("ab", ""),
            re("b", ""),
            make_db_pointer(b"db.coll", &[3; 12]).unwrap(),
            Bson::JavaScriptCode(String::new()),
            Bson::JavaScriptCode("a".into()),
            Bson::JavaScriptCode("a\0".into()),
            Bson::JavaScriptCode("b".into()),
            cws("a", doc! {}),
            cws("a", doc! {"x": 1}),
            cws("b", doc! {}),
            Bson::MaxKey,
        ]
    }

    #[test]
    fn byte_order_matches_value_order() {
        let vals = values();
        let keys: Vec<Vec<u8>> = vals.iter().map(|v| encode_key(&[(v, false)])).collect();
        let desc: Vec<Vec<u8>> = vals.iter().map(|v| encode_key(&[(v, true)])).collect();
        for i in 0..vals.len() {
            for j in 0..vals.len() {
                let (a, b) = (&vals[i], &vals[j]);
                let want = cmp_values(a, b);
                assert!(
                    i > j || want != Ordering::Greater,
                    "list not sorted: {a:?} {b:?}"
                );
                assert_eq!(keys[i].cmp(&keys[j]), want, "{a:?} vs {b:?}");
                assert_eq!(desc[i].cmp(&desc[j]), want.reverse(), "desc {a:?} vs {b:?}");
                // Inside an object and an array, and as the first of two key fields.
                let (da, db) = (bson!({"k": a.clone()}), bson!({"k": b.clone()}));
                assert_eq!(
                    encode_key(&[(&da, false)]).cmp(&encode_key(&[(&db, false)])),
                    want
                );
                let (aa, ab) = (bson!([a.clone(), 1]), bson!([b.clone(), 0]));
                let want_arr = cmp_values(&aa, &ab);
                assert_eq!(
                    encode_key(&[(&aa, false)]).cmp(&encode_key(&[(&ab, false)])),
                    want_arr
                );
                let z = Bson::MaxKey;
                let two = |v| encode_key(&[(v, false), (&z, true)]);
                assert_eq!(two(a).cmp(&two(b)), want);
            }
        }
    }

    #[test]
    fn undefined_sorts_just_below_null() {
        let k = |v: &Bson| encode_key(&[(v, false)]);
        assert!(k(&Bson::MinKey) < k(&Bson::Undefined));
        assert!(k(&Bson::Undefined) < k(&Bson::Null));
    }

    #[test]
    fn equal_values_have_equal_bytes() {
        let groups = [
            vec![bson!(1), bson!(1_i64), bson!(1.0), dec("1"), dec("1.000")],
            vec![
                bson!(0),
                bson!(0_i64),
                bson!(0.0),
                bson!(-0.0),
                dec("0"),
                dec("-0"),
            ],
            vec![bson!(-7), bson!(-7_i64), bson!(-7.0), dec("-7")],
            vec![bson!(2.5), dec("2.5"), dec("2.50")],
            vec![bson!(i64::MIN), bson!(-TWO_63)],
            vec![bson!("s"), Bson::Symbol("s".into())],
            vec![bson!({"a": 1, "b": [2]}), bson!({"a": 1.0, "b": [2_i64]})],
        ];
        for g in groups {
            for v in &g {
                assert_eq!(
                    encode_key(&[(v, false)]),
                    encode_key(&[(&g[0], false)]),
                    "{v:?}"
                );
            }
        }
    }

    #[test]
    fn round_trips_with_type_bits() {
        let vals = values();
        for v in vals.iter().chain([Bson::Undefined].iter()) {
            for nested in [v.clone(), bson!({"x": [v.clone()], "y": v.clone()})] {
                let (key, tb) =
                    encode_key_with_type_bits(&[(&nested, false), (&bson!(5_i64), false)]);
                let got = decode_key(&key, Some(&tb.to_bytes())).unwrap();
                assert_eq!(got.len(), 2);
                assert!(same(&got[0], &nested), "{nested:?} -> {:?}", got[0]);
                assert!(same(&got[1], &bson!(5_i64)));
            }
        }
        // Many values: type bits over 127 bytes use the long form.
        let many: Vec<Bson> = (0..600).map(Bson::Int64).collect();
        let refs: Vec<(&Bson, bool)> = many.iter().map(|v| (v, false)).collect();
        let (key, tb) = encode_key_with_type_bits(&refs);
        assert_eq!(tb.to_bytes()[0], 0x80);
        assert_eq!(decode_key(&key, Some(&tb.to_bytes())).unwrap(), many);
    }

    #[test]
    fn decoding_without_type_bits_defaults() {
        let key = encode_key(&[
            (&bson!(5_i64), false),
            (&bson!(1.5), false),
            (&bson!(1e10), false),
        ]);
        assert_eq!(
            decode_key(&key, None).unwrap(),
            vec![bson!(5), bson!(1.5), bson!(10_000_000_000_i64)]
        );
    }

    #[test]
    fn type_bits_serialisation() {
        let mut tb = TypeBits::new();
        tb.push_all(&[0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(tb.to_bytes(), [0x40]);
        tb.push_all(&[1]);
        assert_eq!(tb.to_bytes(), [0x82, 0x40, 0x01]);
        let mut zero = TypeBits::new();
        zero.push_all(&[0; 20]);
        assert!(zero.is_all_zero() && zero.to_bytes().is_empty());
        let mut high = TypeBits::new();
        high.push_all(&[0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(high.to_bytes(), [0x81, 0x80]);
    }

    #[test]
    fn malformed_keys_error_without_panicking() {
        for bad in [
            &b""[..],
            b"\x2B",
            b"\x2B\x02",
            b"\x3C\x61",
            b"\x04\x04",
            b"\x07\x04",
            b"\x5A\xFF\xFF\xFF\xFF\xFF\x00\x04",
        ] {
            assert!(decode_key(bad, None).is_err(), "{bad:?}");
        }
        assert!(decode_key(b"\x04", Some(&[0x85, 1])).is_err());
        assert!(decode_key(b"\x04", Some(&[0x01, 1])).is_err());
        assert!(decode_key(&[0x46; 10_000], None).is_err());
        assert!(decode_key(&[0x50; 10_000], None).is_err());
        let mut seed = 0x2545_F491_4F6C_DD1D_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let sample = encode_key(&[(
            &bson!({"a": [1.5, "x", {"b": dec("3.25")}], "c": i64::MAX}),
            false,
        )]);
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 2 == 0 {
                bytes = sample.clone();
                let i = (next() as usize) % bytes.len();
                bytes[i] = next() as u8;
            }
            let tb: Vec<u8> = (0..next() % 4).map(|_| next() as u8).collect();
            let _ = decode_key(&bytes, Some(&tb));
        }
    }

    #[test]
    fn collated_keys_follow_the_collation() {
        use crate::collation::Collation;
        use crate::compare::cmp_values_with;
        let c = Collation::parse(&bson::doc! {"locale": "en", "strength": 2})
            .unwrap()
            .unwrap();
        let vals = [
            bson!("a"),
            bson!("A"),
            bson!("b"),
            bson!("B\u{0}x"),
            bson!("é"),
            bson!(""),
            bson!({"k": "Q"}),
            bson!({"k": "q"}),
            bson!(["Z", 1]),
            bson!(["z", 1]),
            bson!(3),
        ];
        for a in &vals {
            for b in &vals {
                for desc in [false, true] {
                    let mut ka = Vec::new();
                    let mut kb = Vec::new();
                    append_value_collated(&mut ka, a, desc, Some(&c));
                    append_value_collated(&mut kb, b, desc, Some(&c));
                    let want = cmp_values_with(a, b, Some(&c));
                    let want = if desc { want.reverse() } else { want };
                    assert_eq!(ka.cmp(&kb), want, "{a} vs {b} (desc {desc})");
                }
            }
        }
        let mut plain = Vec::new();
        append_value_collated(&mut plain, &bson!({"k": ["x"]}), false, None);
        assert_eq!(
            plain,
            encode_key(&[(&bson!({"k": ["x"]}), false)])[..plain.len()]
        );
    }
}
