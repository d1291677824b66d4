//! Change-stream resume tokens: `{_data: <uppercase hex KeyString>, _typeBits?: BinData 0}`.
//!
//! Implemented from `shared/resume-tokens.md` (not from MongoDB's source). `_data` is the
//! KeyString ([`doc::keystring`], V1, ascending) of the unnamed values clusterTime, version,
//! tokenType (v1+), txnOpIndex, fromInvalidate (v1+), uuid (v2: BinData 4 or null; v0/v1: only
//! if known), eventIdentifier, fragmentNum, so comparing `_data` strings orders tokens in
//! stream order; `_typeBits` is present only when some type bit is set and never affects
//! equality or order.
//!
//! Decisions: Eddy writes version 2 only, but parses versions 0, 1 and 2 (v0/v1 hold the bare
//! documentKey in the eventIdentifier slot). Malformed tokens fail with the codes MongoDB uses
//! for the same check (named at each check); problems MongoDB has no dedicated code for here
//! (a non-Timestamp clusterTime, bad type bits, a bad fragmentNum) give 260
//! InvalidResumeToken. Fields other than `_data` and `_typeBits` are ignored, as MongoDB does.

use bson::spec::BinarySubtype;
use bson::{Binary, Bson, Document, Timestamp, Uuid};
use errors::{ErrorCode, MongoError};

/// Whether a token marks a point in the stream (high-water mark) or an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// A postBatchResumeToken between events (encoded as 0); sorts before events at its time.
    HighWaterMark,
    /// An event's `_id` (encoded as 128).
    Event,
}

impl TokenType {
    fn code(self) -> i32 {
        match self {
            TokenType::HighWaterMark => 0,
            TokenType::Event => 128,
        }
    }
}

/// The decoded contents of a resume token.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumeTokenData {
    /// The event's (or high-water mark's) cluster time.
    pub cluster_time: Timestamp,
    /// Token format version: 0, 1 or 2 (Eddy writes 2).
    pub version: i32,
    /// High-water mark or event (always `Event` for v0).
    pub token_type: TokenType,
    /// Position of the op inside its transaction (0 outside transactions).
    pub txn_op_index: i32,
    /// True on the invalidate event caused by the event this token otherwise describes.
    pub from_invalidate: bool,
    /// The collection UUID, if the event has one.
    pub uuid: Option<Uuid>,
    /// v2: `{operationType, documentKey}` or for DDL `{operationType[, operationDescription]}`;
    /// v0/v1: the bare documentKey.
    pub event_identifier: Option<Document>,
    /// 0-based fragment number for fragments of a split event (v2 only).
    pub fragment_num: Option<i32>,
}

fn invalid(message: impl Into<String>) -> MongoError {
    MongoError::new(ErrorCode::InvalidResumeToken, message)
}

fn loc(code: i32, message: impl Into<String>) -> MongoError {
    MongoError::with_code(code, message)
}

impl ResumeTokenData {
    /// A version 2 high-water-mark token at `ts`.
    pub fn high_water_mark(ts: Timestamp) -> Self {
        ResumeTokenData {
            cluster_time: ts,
            version: 2,
            token_type: TokenType::HighWaterMark,
            txn_op_index: 0,
            from_invalidate: false,
            uuid: None,
            event_identifier: None,
            fragment_num: None,
        }
    }

    /// A version 2 event token.
    pub fn event(
        ts: Timestamp,
        txn_op_index: i32,
        uuid: Option<Uuid>,
        event_identifier: Document,
    ) -> Self {
        ResumeTokenData {
            token_type: TokenType::Event,
            txn_op_index,
            uuid,
            event_identifier: Some(event_identifier),
            ..Self::high_water_mark(ts)
        }
    }

    /// The KeyString bytes (`_data` before hex) and serialised type bits (empty when zero).
    /// Byte order of the first element is stream order. The values, in order: clusterTime,
    /// version, tokenType (v1+), txnOpIndex, fromInvalidate (v1+), uuid (v2: or null),
    /// eventIdentifier, fragmentNum; the event identifier is encoded where it stands (a
    /// copy of it for every event was a fifth of catching up on history).
    pub fn key_string(&self) -> (Vec<u8>, Vec<u8>) {
        use doc::keystring::{append_document_with_type_bits, append_value_with_type_bits};
        let mut buf = Vec::with_capacity(96);
        let mut tb = doc::keystring::TypeBits::new();
        let mut put =
            |buf: &mut Vec<u8>, v: &Bson| append_value_with_type_bits(buf, &mut tb, v, false);
        put(&mut buf, &Bson::Timestamp(self.cluster_time));
        put(&mut buf, &Bson::Int32(self.version));
        if self.version >= 1 {
            put(&mut buf, &Bson::Int32(self.token_type.code()));
        }
        put(&mut buf, &Bson::Int32(self.txn_op_index));
        if self.version >= 1 {
            put(&mut buf, &Bson::Boolean(self.from_invalidate));
        }
        match self.uuid {
            Some(u) => put(
                &mut buf,
                &Bson::Binary(Binary {
                    subtype: BinarySubtype::Uuid,
                    bytes: u.bytes().to_vec(),
                }),
            ),
            None if self.version >= 2 => put(&mut buf, &Bson::Null),
            None => {}
        }
        if let Some(ident) = &self.event_identifier {
            append_document_with_type_bits(&mut buf, &mut tb, ident);
        }
        if let Some(f) = self.fragment_num {
            append_value_with_type_bits(&mut buf, &mut tb, &Bson::Int32(f), false);
        }
        doc::keystring::append_end(&mut buf);
        (buf, tb.to_bytes())
    }

    /// `{_data: "<UPPERCASE HEX>"}` plus `_typeBits` (BinData 0) only when non-zero.
    pub fn to_document(&self) -> Document {
        let (key, tb) = self.key_string();
        let hex = doc::keystring::hex_upper(&key);
        let mut d = Document::new();
        d.insert("_data", hex);
        if !tb.is_empty() {
            d.insert(
                "_typeBits",
                Binary {
                    subtype: BinarySubtype::Generic,
                    bytes: tb,
                },
            );
        }
        d
    }

    /// [`ResumeTokenData::to_document`], and the same document encoded.
    pub fn to_document_and_bytes(&self) -> (Document, bson::RawDocumentBuf) {
        let (key, tb) = self.key_string();
        let hex = doc::keystring::hex_upper(&key);
        let mut raw = bson::RawDocumentBuf::new();
        raw.append("_data", hex.as_str());
        let mut d = Document::new();
        d.insert("_data", hex);
        if !tb.is_empty() {
            let b = Binary {
                subtype: BinarySubtype::Generic,
                bytes: tb,
            };
            raw.append("_typeBits", b.clone());
            d.insert("_typeBits", b);
        }
        (d, raw)
    }

    /// Parses a token document (from `resumeAfter`/`startAfter`). Accepts versions 0–2 and
    /// hex in either case. Errors use MongoDB's codes where it has one for the check.
    pub fn from_document(token: &Document) -> Result<Self, MongoError> {
        let Some(Bson::String(hex)) = token.get("_data") else {
            // 40647: `_data` missing or not a string (e.g. the 3.6 BinData form).
            return Err(loc(
                40647,
                "Bad resume token: _data of missing or of wrong type",
            ));
        };
        let type_bits: &[u8] = match token.get("_typeBits") {
            None => &[],
            Some(Bson::Binary(b)) if b.subtype == BinarySubtype::Generic => &b.bytes,
            // 40648: `_typeBits` must be BinData subtype 0.
            Some(_) => return Err(loc(40648, "Bad resume token: _typeBits of wrong type")),
        };
        let bytes = decode_hex(hex).ok_or_else(|| {
            MongoError::failed_to_parse("resume token string was not a valid hex string")
        })?;
        if bytes.is_empty() {
            return Err(loc(40649, "invalid empty resume token"));
        }
        let values = doc::keystring::decode_key(&bytes, Some(type_bits)).map_err(|e| {
            if e.starts_with("type bits") {
                invalid(format!("Bad resume token: {e}"))
            } else {
                // 50811: KeyString format error.
                loc(50811, format!("KeyString format error: {e}"))
            }
        })?;
        Self::from_values(values)
    }

    fn from_values(values: Vec<Bson>) -> Result<Self, MongoError> {
        let mut it = values.into_iter().peekable();
        let int = |v: Option<Bson>, missing: (i32, &str), wrong: (i32, &str)| match v {
            None => Err(loc(missing.0, missing.1)),
            Some(Bson::Int32(i)) => Ok(i),
            Some(_) => Err(loc(wrong.0, wrong.1)),
        };
        let cluster_time = match it.next() {
            None => return Err(loc(40649, "invalid empty resume token")),
            Some(Bson::Timestamp(ts)) => ts,
            Some(_) => {
                return Err(invalid(
                    "Invalid resume token: clusterTime is not a timestamp",
                ));
            }
        };
        let version = int(
            it.next(),
            (50796, "Resume Token does not contain version"),
            (50854, "Invalid resume token: wrong type for version"),
        )?;
        if !(0..=2).contains(&version) {
            return Err(loc(
                50795,
                "Invalid Resume Token: only supports version 0, 1 and 2",
            ));
        }
        let token_type = if version >= 1 {
            match int(
                it.next(),
                (51055, "Resume Token does not contain tokenType"),
                (51056, "Resume Token tokenType is not an int."),
            )? {
                0 => TokenType::HighWaterMark,
                128 => TokenType::Event,
                t => return Err(loc(51057, format!("Token type {t} not recognized"))),
            }
        } else {
            TokenType::Event
        };
        let txn_op_index = int(
            it.next(),
            (50793, "Resume Token does not contain txnOpIndex"),
            (50855, "Resume Token txnOpIndex is not an integer"),
        )?;
        if txn_op_index < 0 {
            return Err(loc(
                50794,
                "Invalid Resume Token: txnOpIndex should be non-negative",
            ));
        }
        let from_invalidate = if version >= 1 {
            match it.next() {
                None => return Err(loc(50872, "Resume Token does not contain fromInvalidate")),
                Some(Bson::Boolean(b)) => b,
                Some(_) => return Err(loc(50870, "Resume Token fromInvalidate is not a boolean.")),
            }
        } else {
            false
        };
        let uuid = match it.next() {
            // 6189500: from v2 the uuid slot (possibly null) is required.
            None if version >= 2 => return Err(loc(6189500, "Expected UUID or null")),
            None | Some(Bson::Null) => None,
            Some(Bson::Binary(b)) if b.subtype == BinarySubtype::Uuid && b.bytes.len() == 16 => {
                Some(Uuid::from_bytes(b.bytes.try_into().expect("16 bytes")))
            }
            Some(_) => {
                return Err(MongoError::new(
                    ErrorCode::InvalidUUID,
                    "Invalid resume token UUID",
                ));
            }
        };
        let event_identifier = match it.next() {
            None => None,
            Some(Bson::Document(d)) => Some(d),
            Some(_) => {
                return Err(loc(
                    6189503,
                    "Resume Token eventIdentifier is not an object",
                ));
            }
        };
        let fragment_num = match it.next() {
            None => None,
            Some(Bson::Int32(n)) if version >= 2 && n >= 0 && event_identifier.is_some() => Some(n),
            Some(_) => return Err(invalid("Invalid resume token: bad fragmentNum")),
        };
        if it.next().is_some() {
            return Err(loc(40646, "invalid oversized resume token"));
        }
        let data = ResumeTokenData {
            cluster_time,
            version,
            token_type,
            txn_op_index,
            from_invalidate,
            uuid,
            event_identifier,
            fragment_num,
        };
        if token_type == TokenType::HighWaterMark
            && (data.txn_op_index != 0
                || data.from_invalidate
                || data.uuid.is_some()
                || data.event_identifier.is_some())
        {
            return Err(loc(6189504, "Invalid high water mark token"));
        }
        if token_type == TokenType::Event && version >= 2 && data.event_identifier.is_none() {
            return Err(loc(
                6189501,
                "Expected an eventIdentifier for an event resume token",
            ));
        }
        Ok(data)
    }
}

/// Hex (either case) to bytes; `None` if odd-length or not hex.
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::oid::ObjectId;
    use bson::{Bson, doc};

    fn ts(t: u32, i: u32) -> Timestamp {
        Timestamp {
            time: t,
            increment: i,
        }
    }

    fn uuid(s: &str) -> Option<Uuid> {
        Some(Uuid::parse_str(s).unwrap())
    }

    fn oid(s: &str) -> Bson {
        Bson::ObjectId(ObjectId::parse_str(s).unwrap())
    }

    fn hex(b: &[u8]) -> String {
        doc::keystring::hex_upper(b)
    }

    fn crud(op: &str, key: Document) -> Document {
        doc! {"operationType": op, "documentKey": key}
    }

    /// (id, data, `_data`, `_typeBits` hex) for every vector in the spec.
    fn vectors() -> Vec<(&'static str, ResumeTokenData, &'static str, &'static str)> {
        let u = uuid("5f1d7c3a-9b2e-4c8d-a1f0-3e4b5c6d7e8f");
        let o = || oid("6553f100aabbccddeeff0011");
        let t = |d: u32, i| ts(1_700_000_000 + d, i);
        let ev = |d, i, e| ResumeTokenData::event(t(d, i), 0, u, e);
        let mut r2 = ResumeTokenData::event(
            ts(1_594_897_417, 4),
            0,
            uuid("4912d5bb-6655-45b4-8dda-d38fcd774270"),
            doc! {"_id": 2.0},
        );
        r2.version = 1;
        let frag = |n| ResumeTokenData {
            fragment_num: Some(n),
            ..ev(3, 1, crud("update", doc! {"_id": o()}))
        };
        let g20 = ev(6, 1, doc! {"operationType": "drop"});
        let g21 = ResumeTokenData {
            from_invalidate: true,
            ..g20.clone()
        };
        let desc = |op: &str, d: Document| doc! {"operationType": op, "operationDescription": d};
        vec![
            (
                "S1",
                ResumeTokenData::event(
                    ts(1_666_193_824, 1),
                    0,
                    uuid("ab1154ac-acd8-49a4-8c61-756d70d3b21f"),
                    crud("insert", doc! {"_id": oid("635019a078be67426d7cf4d2")}),
                ),
                "82635019A0000000012B042C0100296E5A1004AB1154ACACD849A48C61756D70D3B21F463C6F7065726174696F6E54797065003C696E736572740046646F63756D656E744B65790046645F69640064635019A078BE67426D7CF4D2000004",
                "",
            ),
            (
                "S2",
                ResumeTokenData::high_water_mark(ts(1_666_277_036, 2)),
                "8263515EAC000000022B0429296E1404",
                "",
            ),
            (
                "S3",
                ResumeTokenData::high_water_mark(ts(1_666_275_705, 2)),
                "8263515979000000022B0429296E1404",
                "",
            ),
            (
                "R1",
                ResumeTokenData::event(
                    ts(1_741_186_978, 25),
                    0,
                    uuid("d3284e04-d891-4467-a216-0201812e4c4c"),
                    crud("insert", doc! {"_id": oid("67c867a2fb1cbcd579f4e4de")}),
                ),
                "8267C867A2000000192B042C0100296E5A1004D3284E04D8914467A2160201812E4C4C463C6F7065726174696F6E54797065003C696E736572740046646F63756D656E744B65790046645F6964006467C867A2FB1CBCD579F4E4DE000004",
                "",
            ),
            (
                "R2",
                r2,
                "825F103409000000042B022C0100296E5A10044912D5BB665545B48DDAD38FCD774270461E5F6964002B040004",
                "40",
            ),
            (
                "G1",
                ResumeTokenData::high_water_mark(t(0, 1)),
                "826553F100000000012B0429296E1404",
                "",
            ),
            (
                "G2",
                ev(0, 2, crud("insert", doc! {"_id": o()})),
                "826553F100000000022B042C0100296E5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C696E736572740046646F63756D656E744B65790046645F696400646553F100AABBCCDDEEFF0011000004",
                "",
            ),
            (
                "G3",
                ev(0, 3, crud("insert", doc! {"_id": 42})),
                "826553F100000000032B042C0100296E5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C696E736572740046646F63756D656E744B657900461E5F6964002B54000004",
                "",
            ),
            (
                "G4",
                ev(0, 4, crud("insert", doc! {"_id": 42_i64})),
                "826553F100000000042B042C0100296E5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C696E736572740046646F63756D656E744B657900461E5F6964002B54000004",
                "820001",
            ),
            (
                "G5",
                ev(0, 5, crud("insert", doc! {"_id": 1_234_567_890_123_i64})),
                "826553F100000000052B042C0100296E5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C696E736572740046646F63756D656E744B657900461E5F69640030023EE3F60996000004",
                "820001",
            ),
            (
                "G6",
                ev(0, 6, crud("insert", doc! {"_id": 1.5})),
                "826553F100000000062B042C0100296E5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C696E736572740046646F63756D656E744B657900461E5F6964002B0380000000000000000004",
                "828000",
            ),
            (
                "G7",
                ev(0, 7, crud("insert", doc! {"_id": -2.25})),
                "826553F100000000072B042C0100296E5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C696E736572740046646F63756D656E744B657900461E5F69640027FABFFFFFFFFFFFFF000004",
                "828000",
            ),
            (
                "G8",
                ev(0, 8, crud("insert", doc! {"_id": "user:alice"})),
                "826553F100000000082B042C0100296E5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C696E736572740046646F63756D656E744B657900463C5F6964003C757365723A616C69636500000004",
                "",
            ),
            (
                "G9",
                ev(0, 9, crud("insert", doc! {"region": "eu", "_id": o()})),
                "826553F100000000092B042C0100296E5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C696E736572740046646F63756D656E744B657900463C726567696F6E003C657500645F696400646553F100AABBCCDDEEFF0011000004",
                "",
            ),
            (
                "G10",
                ev(1, 1, crud("update", doc! {"_id": o()})),
                "826553F101000000012B042C0100296E5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C7570646174650046646F63756D656E744B65790046645F696400646553F100AABBCCDDEEFF0011000004",
                "",
            ),
            (
                "G11",
                ev(1, 2, crud("replace", doc! {"_id": o()})),
                "826553F101000000022B042C0100296E5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C7265706C6163650046646F63756D656E744B65790046645F696400646553F100AABBCCDDEEFF0011000004",
                "",
            ),
            (
                "G12",
                ev(1, 3, crud("delete", doc! {"_id": o()})),
                "826553F101000000032B042C0100296E5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C64656C6574650046646F63756D656E744B65790046645F696400646553F100AABBCCDDEEFF0011000004",
                "",
            ),
            (
                "G13",
                ResumeTokenData::event(t(2, 1), 3, u, crud("insert", doc! {"_id": 7})),
                "826553F102000000012B042C01002B066E5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C696E736572740046646F63756D656E744B657900461E5F6964002B0E000004",
                "",
            ),
            (
                "G14",
                ResumeTokenData::event(t(2, 1), 200, u, crud("insert", doc! {"_id": 8})),
                "826553F102000000012B042C01002C01906E5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C696E736572740046646F63756D656E744B657900461E5F6964002B10000004",
                "",
            ),
            (
                "G15",
                frag(0),
                "826553F103000000012B042C0100296E5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C7570646174650046646F63756D656E744B65790046645F696400646553F100AABBCCDDEEFF001100002904",
                "",
            ),
            (
                "G16",
                frag(1),
                "826553F103000000012B042C0100296E5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C7570646174650046646F63756D656E744B65790046645F696400646553F100AABBCCDDEEFF001100002B0204",
                "",
            ),
            (
                "G17",
                ev(
                    4,
                    1,
                    desc(
                        "create",
                        doc! {"idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}},
                    ),
                ),
                "826553F104000000012B042C0100296E5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C63726561746500466F7065726174696F6E4465736372697074696F6E0046466964496E64657800461E76002B04466B657900461E5F6964002B02003C6E616D65003C5F69645F0000000004",
                "",
            ),
            (
                "G18",
                ev(
                    4,
                    2,
                    desc(
                        "createIndexes",
                        doc! {"indexes": [{"v": 2, "key": {"a": 1}, "name": "a_1"}]},
                    ),
                ),
                "826553F104000000022B042C0100296E5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C637265617465496E646578657300466F7065726174696F6E4465736372697074696F6E004650696E64657865730050461E76002B04466B657900461E61002B02003C6E616D65003C615F31000000000004",
                "",
            ),
            (
                "G19",
                ev(
                    5,
                    1,
                    desc("rename", doc! {"to": {"db": "test", "coll": "names2"}}),
                ),
                "826553F105000000012B042C0100296E5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C72656E616D6500466F7065726174696F6E4465736372697074696F6E004646746F00463C6462003C74657374003C636F6C6C003C6E616D6573320000000004",
                "",
            ),
            (
                "G20",
                g20,
                "826553F106000000012B042C0100296E5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C64726F70000004",
                "",
            ),
            (
                "G21",
                g21,
                "826553F106000000012B042C0100296F5A10045F1D7C3A9B2E4C8DA1F03E4B5C6D7E8F463C6F7065726174696F6E54797065003C64726F70000004",
                "",
            ),
            (
                "G22",
                ResumeTokenData::event(t(7, 1), 0, None, doc! {"operationType": "dropDatabase"}),
                "826553F107000000012B042C0100296E14463C6F7065726174696F6E54797065003C64726F704461746162617365000004",
                "",
            ),
            (
                "G23",
                ResumeTokenData::high_water_mark(t(8, 1)),
                "826553F108000000012B0429296E1404",
                "",
            ),
        ]
    }

    #[test]
    fn spec_vectors_encode_and_decode_exactly() {
        for (id, data, want, tb) in vectors() {
            let d = data.to_document();
            assert_eq!(d.get_str("_data").unwrap(), want, "{id}");
            match d.get("_typeBits") {
                None => assert_eq!(tb, "", "{id}"),
                Some(Bson::Binary(b)) => {
                    assert_eq!(b.subtype, BinarySubtype::Generic);
                    assert_eq!(hex(&b.bytes), tb, "{id}");
                }
                Some(other) => panic!("{id}: {other:?}"),
            }
            assert_eq!(d.len(), if tb.is_empty() { 1 } else { 2 });
            assert_eq!(ResumeTokenData::from_document(&d).unwrap(), data, "{id}");
            // Lowercase hex is accepted too.
            let mut lower = d.clone();
            lower.insert("_data", want.to_lowercase());
            assert_eq!(
                ResumeTokenData::from_document(&lower).unwrap(),
                data,
                "{id}"
            );
        }
    }

    #[test]
    fn type_bits_restore_exact_types() {
        let v = vectors();
        let g4 = ResumeTokenData::from_document(&v[8].1.to_document()).unwrap();
        let key = g4
            .event_identifier
            .unwrap()
            .get_document("documentKey")
            .unwrap()
            .clone();
        assert_eq!(key.get("_id"), Some(&Bson::Int64(42)));
        // Without _typeBits the same _data reads back as int32.
        let bare = doc! {"_data": v[8].2};
        let g = ResumeTokenData::from_document(&bare).unwrap();
        let key = g
            .event_identifier
            .unwrap()
            .get_document("documentKey")
            .unwrap()
            .clone();
        assert_eq!(key.get("_id"), Some(&Bson::Int32(42)));
    }

    #[test]
    fn string_order_is_stream_order() {
        let v = vectors();
        let g: Vec<String> = v[5..]
            .iter()
            .map(|(_, d, _, _)| d.to_document().get_str("_data").unwrap().into())
            .collect();
        let mut sorted = g.clone();
        sorted.sort();
        assert_eq!(sorted, g, "G1..G23 sort in stream order");

        let data = |d: &ResumeTokenData| d.to_document().get_str("_data").unwrap().to_string();
        let u = uuid("5f1d7c3a-9b2e-4c8d-a1f0-3e4b5c6d7e8f");
        let e = |t, i, op: i32| {
            ResumeTokenData::event(ts(t, i), op, u, crud("insert", doc! {"_id": 1}))
        };
        let hwm = |t, i| ResumeTokenData::high_water_mark(ts(t, i));
        let ordered = [
            hwm(5, 0),
            e(5, 0, 0),
            hwm(5, 1),
            e(5, 1, 0),
            e(5, 1, 1),
            e(5, 1, 127),
            e(5, 1, 128),
            e(5, 1, 100_000),
            ResumeTokenData {
                from_invalidate: true,
                ..e(5, 1, 100_000)
            },
            hwm(5, 2),
            e(5, u32::MAX, 0),
            hwm(6, 0),
            e(6, 0, 0),
            ResumeTokenData {
                fragment_num: Some(0),
                ..e(6, 0, 0)
            },
            ResumeTokenData {
                fragment_num: Some(1),
                ..e(6, 0, 0)
            },
            ResumeTokenData {
                fragment_num: Some(300),
                ..e(6, 0, 0)
            },
            e(6, 0, 1),
            hwm(u32::MAX, u32::MAX),
        ];
        for w in ordered.windows(2) {
            assert!(data(&w[0]) < data(&w[1]), "{:?} < {:?}", w[0], w[1]);
        }
        // A v1 token sorts before a v2 token at the same time.
        let mut v1 = hwm(5, 0);
        v1.version = 1;
        assert!(data(&v1) < data(&hwm(5, 0)));
    }

    #[test]
    fn round_trips() {
        let u = uuid("ab1154ac-acd8-49a4-8c61-756d70d3b21f");
        let mut cases = vec![
            ResumeTokenData::event(
                ts(1, 1),
                5,
                u,
                crud("update", doc! {"sk": -0.0, "_id": {"a": [1_i64, 2.5, "x"]}}),
            ),
            ResumeTokenData::event(
                ts(u32::MAX, 0),
                i32::MAX,
                None,
                doc! {"operationType": "dropDatabase"},
            ),
            ResumeTokenData {
                fragment_num: Some(i32::MAX),
                ..ResumeTokenData::event(ts(2, 2), 0, u, doc! {"operationType": "drop"})
            },
        ];
        let mut v0 = ResumeTokenData::event(ts(3, 3), 1, u, doc! {"_id": 1.5});
        v0.version = 0;
        cases.push(v0);
        let mut v1 = ResumeTokenData::high_water_mark(ts(4, 4));
        v1.version = 1;
        cases.push(v1);
        for c in cases {
            let d = c.to_document();
            assert_eq!(ResumeTokenData::from_document(&d).unwrap(), c);
            assert_eq!(ResumeTokenData::from_document(&d).unwrap().to_document(), d);
        }
    }

    /// A token encoding exactly `values`.
    fn raw_token(values: &[Bson]) -> Document {
        let refs: Vec<(&Bson, bool)> = values.iter().map(|v| (v, false)).collect();
        let (key, tb) = doc::keystring::encode_key_with_type_bits(&refs);
        let mut d = doc! {"_data": hex(&key)};
        if !tb.is_all_zero() {
            d.insert(
                "_typeBits",
                Binary {
                    subtype: BinarySubtype::Generic,
                    bytes: tb.to_bytes(),
                },
            );
        }
        d
    }

    fn code(d: &Document) -> i32 {
        ResumeTokenData::from_document(d).unwrap_err().code
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let s1 = vectors()[0].2;
        let t = Bson::Timestamp(ts(1, 1));
        let u = Bson::Binary(Binary {
            subtype: BinarySubtype::Uuid,
            bytes: vec![1; 16],
        });
        let ei = Bson::Document(doc! {"operationType": "drop"});
        let (i, b, n) = (Bson::Int32, Bson::Boolean, Bson::Null);
        let cases: Vec<(Document, i32)> = vec![
            (doc! {}, 40647),
            (doc! {"_data": 1}, 40647),
            (
                doc! {"_data": Binary { subtype: BinarySubtype::Generic, bytes: vec![0x82] }},
                40647,
            ),
            (doc! {"_data": s1, "_typeBits": "x"}, 40648),
            (
                doc! {"_data": s1, "_typeBits": Binary { subtype: BinarySubtype::Uuid, bytes: vec![1] }},
                40648,
            ),
            (
                doc! {"_data": s1, "_typeBits": Binary { subtype: BinarySubtype::Generic, bytes: vec![0x85] }},
                260,
            ),
            (doc! {"_data": &s1[1..]}, 9),
            (doc! {"_data": "8G"}, 9),
            (doc! {"_data": "82 63"}, 9),
            (doc! {"_data": ""}, 40649),
            (doc! {"_data": &s1[..s1.len() - 2]}, 50811),
            (doc! {"_data": format!("{s1}00")}, 50811),
            (doc! {"_data": "07"}, 50811),
            (raw_token(&[]), 40649),
            (raw_token(&[i(2)]), 260),
            (raw_token(std::slice::from_ref(&t)), 50796),
            (raw_token(&[t.clone(), Bson::Int64(2)]), 50854),
            (raw_token(&[t.clone(), i(3)]), 50795),
            (raw_token(&[t.clone(), i(2)]), 51055),
            (raw_token(&[t.clone(), i(2), "x".into()]), 51056),
            (raw_token(&[t.clone(), i(2), i(1)]), 51057),
            (raw_token(&[t.clone(), i(2), i(0)]), 50793),
            (
                raw_token(&[t.clone(), i(2), i(0), Bson::Double(0.5)]),
                50855,
            ),
            (raw_token(&[t.clone(), i(2), i(128), i(-1)]), 50794),
            (raw_token(&[t.clone(), i(2), i(0), i(0)]), 50872),
            (raw_token(&[t.clone(), i(2), i(0), i(0), i(0)]), 50870),
            (raw_token(&[t.clone(), i(2), i(0), i(0), b(false)]), 6189500),
            (
                raw_token(&[t.clone(), i(2), i(0), i(0), b(false), "u".into()]),
                207,
            ),
            (
                raw_token(&[t.clone(), i(2), i(0), i(0), b(false), u.clone()]),
                6189504,
            ),
            (
                raw_token(&[t.clone(), i(2), i(0), i(1), b(false), n.clone()]),
                6189504,
            ),
            (
                raw_token(&[t.clone(), i(2), i(0), i(0), b(true), n.clone()]),
                6189504,
            ),
            (
                raw_token(&[t.clone(), i(2), i(0), i(0), b(false), n.clone(), ei.clone()]),
                6189504,
            ),
            (
                raw_token(&[t.clone(), i(2), i(128), i(0), b(false), u.clone()]),
                6189501,
            ),
            (
                raw_token(&[t.clone(), i(2), i(128), i(0), b(false), u.clone(), i(1)]),
                6189503,
            ),
            (
                raw_token(&[
                    t.clone(),
                    i(2),
                    i(128),
                    i(0),
                    b(false),
                    u.clone(),
                    ei.clone(),
                    i(-1),
                ]),
                260,
            ),
            (
                raw_token(&[
                    t.clone(),
                    i(1),
                    i(128),
                    i(0),
                    b(false),
                    u.clone(),
                    ei.clone(),
                    i(0),
                ]),
                260,
            ),
            (
                raw_token(&[
                    t.clone(),
                    i(2),
                    i(128),
                    i(0),
                    b(false),
                    u.clone(),
                    ei.clone(),
                    i(0),
                    i(0),
                ]),
                40646,
            ),
        ];
        for (d, want) in cases {
            assert_eq!(code(&d), want, "{d:?}");
        }
        let e = ResumeTokenData::from_document(&doc! {"_data": ""}).unwrap_err();
        assert_eq!(e.code_name, "Location40649");
        assert_eq!(code(&raw_token(&[t, i(2), i(1)])), 51057);
        assert_eq!(MongoError::new(ErrorCode::InvalidResumeToken, "").code, 260);
    }

    #[test]
    fn fuzz_from_document_never_panics() {
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let valid: Vec<Document> = vectors().iter().map(|v| v.1.to_document()).collect();
        let mut accepted = 0;
        for round in 0..30_000 {
            let mut bytes: Vec<u8> = if round % 2 == 0 {
                (0..next() % 64).map(|_| next() as u8).collect()
            } else {
                let base = &valid[(next() as usize) % valid.len()];
                let mut b = decode_hex(base.get_str("_data").unwrap()).unwrap();
                for _ in 0..1 + next() % 3 {
                    let i = (next() as usize) % b.len();
                    b[i] = next() as u8;
                }
                b
            };
            if round % 7 == 0 {
                bytes.truncate((next() as usize) % (bytes.len() + 1));
            }
            let mut d = doc! {"_data": hex(&bytes)};
            if round % 3 == 0 {
                let tb: Vec<u8> = (0..next() % 5).map(|_| next() as u8).collect();
                d.insert(
                    "_typeBits",
                    Binary {
                        subtype: BinarySubtype::Generic,
                        bytes: tb,
                    },
                );
            }
            if let Ok(t) = ResumeTokenData::from_document(&d) {
                accepted += 1;
                // Anything accepted re-encodes to a token that parses back to the same data
                // (compared re-encoded, as NaN != NaN).
                let again = ResumeTokenData::from_document(&t.to_document()).unwrap();
                assert_eq!(again.to_document(), t.to_document());
            }
        }
        assert!(accepted > 0);
    }
}
