//! Oplog entries: MongoDB's `local.oplog.rs` shape, keyed by clusterTime.
//!
//! The oplog table maps `ts` as a `u64` (`seconds << 32 | increment`, so numeric order is
//! time order) to the entry's BSON. Entries carry what change streams need: the namespace,
//! collection UUID, the document or the update's field-level delta, the documentKey and
//! any session fields.

use bson::{Bson, DateTime, Document, Timestamp, doc};
use errors::{MongoError, Result};

/// The kind of an oplog entry (`op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Insert,
    Update,
    Delete,
    Command,
    Noop,
}

impl OpKind {
    /// The one-letter `op` code.
    pub fn code(self) -> &'static str {
        match self {
            OpKind::Insert => "i",
            OpKind::Update => "u",
            OpKind::Delete => "d",
            OpKind::Command => "c",
            OpKind::Noop => "n",
        }
    }

    fn from_code(s: &str) -> Option<OpKind> {
        Some(match s {
            "i" => OpKind::Insert,
            "u" => OpKind::Update,
            "d" => OpKind::Delete,
            "c" => OpKind::Command,
            "n" => OpKind::Noop,
            _ => return None,
        })
    }
}

/// One oplog entry.
#[derive(Debug, Clone, PartialEq)]
pub struct OplogEntry {
    pub ts: Timestamp,
    pub wall: DateTime,
    pub op: OpKind,
    /// `db.coll`, or `db.$cmd` for commands, or `""` for a no-op.
    pub ns: String,
    pub ui: Option<bson::Uuid>,
    /// Insert: the document. Update: `{$v: 2, diff: <delta>}`, or the whole new document
    /// for a replacement. Delete: the documentKey. Command: the command.
    pub o: Document,
    /// Update/insert: the documentKey. Some commands: extra information.
    pub o2: Option<Document>,
    /// Session fields, when the write came with them.
    pub lsid: Option<Document>,
    pub txn_number: Option<i64>,
    pub stmt_id: Option<i32>,
    /// Whether the write was part of a multi-document transaction.
    pub in_txn: bool,
    /// Position of this operation inside its transaction (0 outside one).
    pub txn_op_index: i32,
    /// `o` encoded, when the writer has its bytes already (an inserted document's): then
    /// [`OplogEntry::to_bytes`] copies them rather than encoding `o` again, and `o` may be
    /// left empty ([`OplogEntry::o_document`] reads it).
    pub o_bytes: Option<Vec<u8>>,
}

impl OplogEntry {
    /// A new entry; `ts` and `wall` are assigned by the commit pipeline.
    pub fn new(op: OpKind, ns: impl Into<String>, ui: Option<bson::Uuid>, o: Document) -> Self {
        OplogEntry {
            ts: Timestamp {
                time: 0,
                increment: 0,
            },
            wall: DateTime::from_millis(0),
            op,
            ns: ns.into(),
            ui,
            o,
            o2: None,
            lsid: None,
            txn_number: None,
            stmt_id: None,
            in_txn: false,
            txn_op_index: 0,
            o_bytes: None,
        }
    }

    /// Sets `o2`.
    #[must_use]
    pub fn with_o2(mut self, o2: Document) -> Self {
        self.o2 = Some(o2);
        self
    }

    /// Sets `o_bytes`: `o` as the caller encoded it already.
    #[must_use]
    pub fn with_o_bytes(mut self, bytes: Vec<u8>) -> Self {
        self.o_bytes = Some(bytes);
        self
    }

    /// Whether an update entry is a whole-document replacement.
    pub fn is_replacement(&self) -> bool {
        self.op == OpKind::Update && !self.o.contains_key("$v")
    }

    /// `o`: the document itself, or decoded from `o_bytes` when the writer gave only those
    /// (an insert's entry leaves `o` empty then).
    pub fn o_document(&self) -> Document {
        match &self.o_bytes {
            Some(b) if self.o.is_empty() => {
                doc::raw::bytes_to_document(b, crate::STORED_MAX_DEPTH).unwrap_or_default()
            }
            _ => self.o.clone(),
        }
    }

    /// The entry in MongoDB's oplog format.
    pub fn to_document(&self) -> Document {
        let mut d = doc! { "op": self.op.code(), "ns": &self.ns };
        if let Some(ui) = self.ui {
            d.insert("ui", ui);
        }
        d.insert("o", self.o_document());
        if let Some(o2) = &self.o2 {
            d.insert("o2", o2.clone());
        }
        if let Some(l) = &self.lsid {
            d.insert("lsid", l.clone());
        }
        if let Some(t) = self.txn_number {
            d.insert("txnNumber", t);
        }
        if let Some(s) = self.stmt_id {
            d.insert("stmtId", s);
        }
        if self.in_txn {
            d.insert("inTxn", true);
            d.insert("txnOpIndex", self.txn_op_index);
        }
        d.insert("ts", self.ts);
        d.insert("t", 1i64);
        d.insert("v", 2i64);
        d.insert("wall", self.wall);
        d
    }

    /// Encodes in the shape of [`OplogEntry::to_document`], writing the BSON directly (the
    /// document form would copy `o`, the inserted document, once more).
    pub fn to_bytes(&self) -> Vec<u8> {
        let enc = |d: &Document| doc::encode::encode(d).expect("an oplog document encodes");
        let o = match &self.o_bytes {
            Some(b) => std::borrow::Cow::Borrowed(b.as_slice()),
            None => std::borrow::Cow::Owned(enc(&self.o)),
        };
        let mut w = doc::raw::Writer::with_capacity(o.len() + 160);
        w.str("op", self.op.code());
        w.str("ns", &self.ns);
        if let Some(ui) = self.ui {
            w.binary("ui", 4, &ui.bytes());
        }
        w.raw(b"o", 0x03, &o);
        if let Some(o2) = &self.o2 {
            w.raw(b"o2", 0x03, &enc(o2));
        }
        if let Some(l) = &self.lsid {
            w.raw(b"lsid", 0x03, &enc(l));
        }
        if let Some(t) = self.txn_number {
            w.i64("txnNumber", t);
        }
        if let Some(s) = self.stmt_id {
            w.i32("stmtId", s);
        }
        if self.in_txn {
            w.bool("inTxn", true);
            w.i32("txnOpIndex", self.txn_op_index);
        }
        w.timestamp("ts", self.ts);
        w.i64("t", 1);
        w.i64("v", 2);
        w.datetime("wall", self.wall);
        w.finish()
    }

    /// Decodes an encoded entry.
    pub fn from_bytes(b: &[u8]) -> Result<OplogEntry> {
        OplogEntry::from_head(&EntryHead::parse(b)?, b)
    }

    /// Decodes an entry whose head was read already: only `o`, `o2` and `lsid` are
    /// converted.
    pub fn from_head(h: &EntryHead, b: &[u8]) -> Result<OplogEntry> {
        let doc = |r: &std::ops::Range<usize>| {
            doc::raw::bytes_to_document(&b[r.clone()], crate::STORED_MAX_DEPTH)
                .map_err(|_| corrupt())
        };
        Ok(OplogEntry {
            ts: h.ts,
            wall: h.wall,
            op: h.op,
            ns: h.ns.clone(),
            ui: h.ui,
            o: doc(&h.o)?,
            o2: h.o2.as_ref().map(doc).transpose()?,
            lsid: h.lsid.as_ref().map(doc).transpose()?,
            txn_number: h.txn_number,
            stmt_id: h.stmt_id,
            in_txn: h.in_txn,
            txn_op_index: h.txn_op_index,
            o_bytes: None,
        })
    }

    /// Decodes an entry from its document form.
    pub fn from_document(d: &Document) -> Result<OplogEntry> {
        let bad = || MongoError::internal("corrupt oplog entry");
        let ui = match d.get("ui") {
            Some(Bson::Binary(b)) => Some(bson::Uuid::from_bytes(
                b.bytes.as_slice().try_into().map_err(|_| bad())?,
            )),
            _ => None,
        };
        Ok(OplogEntry {
            ts: d.get_timestamp("ts").map_err(|_| bad())?,
            wall: *d.get_datetime("wall").map_err(|_| bad())?,
            op: OpKind::from_code(d.get_str("op").map_err(|_| bad())?).ok_or_else(bad)?,
            ns: d.get_str("ns").map_err(|_| bad())?.to_string(),
            ui,
            o: d.get_document("o").map_err(|_| bad())?.clone(),
            o2: d.get_document("o2").ok().cloned(),
            lsid: d.get_document("lsid").ok().cloned(),
            txn_number: d.get_i64("txnNumber").ok(),
            stmt_id: d.get_i32("stmtId").ok(),
            in_txn: d.get_bool("inTxn").unwrap_or(false),
            txn_op_index: d.get_i32("txnOpIndex").unwrap_or(0),
            o_bytes: None,
        })
    }
}

/// What an encoded entry says, read in one pass without converting its documents:
/// `o`, `o2` and `lsid` are byte ranges of the entry, so that a reader can copy them as
/// they are (a change event's `fullDocument`, say) or convert only the one it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryHead {
    pub ts: Timestamp,
    pub wall: DateTime,
    pub op: OpKind,
    pub ns: String,
    pub ui: Option<bson::Uuid>,
    pub o: std::ops::Range<usize>,
    pub o2: Option<std::ops::Range<usize>>,
    pub lsid: Option<std::ops::Range<usize>>,
    pub txn_number: Option<i64>,
    pub stmt_id: Option<i32>,
    pub in_txn: bool,
    pub txn_op_index: i32,
}

fn corrupt() -> MongoError {
    MongoError::internal("corrupt oplog entry")
}

/// A BSON string value's text (length, bytes, NUL).
fn string_value(v: &[u8]) -> Option<&str> {
    std::str::from_utf8(v.get(4..v.len().checked_sub(1)?)?).ok()
}

impl EntryHead {
    /// Reads an encoded entry's fields. Entries are read far more often than written
    /// (every change event, every stream catching up), and `bson`'s raw iterator cost a
    /// fifth of catching up on history: this walks the elements directly, and falls back
    /// to `bson` for anything it does not expect.
    ///
    /// # Errors
    /// Malformed BSON, or an entry without `ts`, `wall`, `op`, `ns` or `o`.
    pub fn parse(b: &[u8]) -> Result<EntryHead> {
        match EntryHead::walk(b) {
            Some(h) => Ok(h),
            None => EntryHead::parse_checked(b),
        }
    }

    fn walk(b: &[u8]) -> Option<EntryHead> {
        let declared = usize::try_from(i32::from_le_bytes(b.get(..4)?.try_into().ok()?)).ok()?;
        if declared != b.len() || b.last() != Some(&0) {
            return None;
        }
        let (mut ts, mut wall, mut op, mut ns, mut o) = (None, None, None, None, None);
        let (mut ui, mut o2, mut lsid, mut txn_number, mut stmt_id) =
            (None, None, None, None, None);
        let (mut in_txn, mut txn_op_index) = (false, 0);
        let mut at = 4;
        while at < b.len() - 1 {
            let (key, t, v, next) = doc::raw::element(b, at)?;
            let start = next - v.len();
            match (key, t) {
                (b"ts", 0x11) => {
                    let x = u64::from_le_bytes(v.try_into().ok()?);
                    ts = Some(Timestamp {
                        time: (x >> 32) as u32,
                        increment: x as u32,
                    });
                }
                (b"wall", 0x09) => {
                    wall = Some(DateTime::from_millis(i64::from_le_bytes(
                        v.try_into().ok()?,
                    )));
                }
                (b"op", 0x02) => op = Some(OpKind::from_code(string_value(v)?)?),
                (b"ns", 0x02) => ns = Some(string_value(v)?.to_string()),
                (b"ui", 0x05) if v.len() == 21 && v[4] == 4 => {
                    ui = Some(bson::Uuid::from_bytes(v[5..].try_into().ok()?));
                }
                (b"o", 0x03) => o = Some(start..next),
                (b"o2", 0x03) => o2 = Some(start..next),
                (b"lsid", 0x03) => lsid = Some(start..next),
                (b"txnNumber", 0x12) => txn_number = Some(i64::from_le_bytes(v.try_into().ok()?)),
                (b"stmtId", 0x10) => stmt_id = Some(i32::from_le_bytes(v.try_into().ok()?)),
                (b"inTxn", 0x08) if v[0] <= 1 => in_txn = v[0] == 1,
                (b"txnOpIndex", 0x10) => txn_op_index = i32::from_le_bytes(v.try_into().ok()?),
                // Another field, or a known one of another type: let `bson` judge.
                (
                    b"ts" | b"wall" | b"op" | b"ns" | b"ui" | b"o" | b"o2" | b"lsid" | b"inTxn",
                    _,
                ) => {
                    return None;
                }
                _ => {}
            }
            at = next;
        }
        if at != b.len() - 1 {
            return None;
        }
        Some(EntryHead {
            ts: ts?,
            wall: wall?,
            op: op?,
            ns: ns?,
            ui,
            o: o?,
            o2,
            lsid,
            txn_number,
            stmt_id,
            in_txn,
            txn_op_index,
        })
    }

    /// [`EntryHead::parse`] through `bson`'s checked iterator.
    fn parse_checked(b: &[u8]) -> Result<EntryHead> {
        use bson::RawBsonRef as R;
        let raw = bson::RawDocument::from_bytes(b)
            .map_err(|e| MongoError::internal(format!("oplog: {e}")))?;
        // A sub-document's place in `b` (its bytes are a slice of `b`).
        let range = |d: &bson::RawDocument| {
            let at = d.as_bytes().as_ptr() as usize - b.as_ptr() as usize;
            at..at + d.as_bytes().len()
        };
        let (mut ts, mut wall, mut op, mut ns, mut o) = (None, None, None, None, None);
        let mut h = EntryHead {
            ts: Timestamp {
                time: 0,
                increment: 0,
            },
            wall: DateTime::from_millis(0),
            op: OpKind::Noop,
            ns: String::new(),
            ui: None,
            o: 0..0,
            o2: None,
            lsid: None,
            txn_number: None,
            stmt_id: None,
            in_txn: false,
            txn_op_index: 0,
        };
        for item in raw {
            let (k, v) = item.map_err(|_| corrupt())?;
            match (k, v) {
                ("ts", R::Timestamp(t)) => ts = Some(t),
                ("wall", R::DateTime(t)) => wall = Some(t),
                ("op", R::String(s)) => op = Some(OpKind::from_code(s).ok_or_else(corrupt)?),
                ("ns", R::String(s)) => ns = Some(s.to_string()),
                ("ui", R::Binary(bin)) => {
                    h.ui = Some(bson::Uuid::from_bytes(
                        bin.bytes.try_into().map_err(|_| corrupt())?,
                    ));
                }
                ("o", R::Document(d)) => o = Some(range(d)),
                ("o2", R::Document(d)) => h.o2 = Some(range(d)),
                ("lsid", R::Document(d)) => h.lsid = Some(range(d)),
                ("txnNumber", R::Int64(n)) => h.txn_number = Some(n),
                ("stmtId", R::Int32(n)) => h.stmt_id = Some(n),
                ("inTxn", R::Boolean(t)) => h.in_txn = t,
                ("txnOpIndex", R::Int32(n)) => h.txn_op_index = n,
                _ => {}
            }
        }
        let (Some(t), Some(w), Some(op), Some(ns), Some(o)) = (ts, wall, op, ns, o) else {
            return Err(corrupt());
        };
        (h.ts, h.wall, h.op, h.ns, h.o) = (t, w, op, ns, o);
        Ok(h)
    }

    /// Whether an update entry is a whole-document replacement (its `o` is the new
    /// document rather than `{$v: 2, diff}`).
    pub fn is_replacement(&self, b: &[u8]) -> bool {
        self.op == OpKind::Update
            && bson::RawDocument::from_bytes(&b[self.o.clone()])
                .ok()
                .and_then(|o| o.get("$v").ok().flatten())
                .is_none()
    }
}

/// A timestamp as the oplog table's key.
pub fn ts_key(ts: Timestamp) -> u64 {
    (u64::from(ts.time) << 32) | u64::from(ts.increment)
}

/// The timestamp of an oplog table key.
pub fn key_ts(k: u64) -> Timestamp {
    Timestamp {
        time: (k >> 32) as u32,
        increment: k as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct walk reads what `bson`'s checked iterator reads, and never panics.
    #[test]
    fn head_walk_matches_the_checked_parse() {
        let mut e = OplogEntry::new(
            OpKind::Update,
            "db.coll.with.dots",
            Some(bson::Uuid::new()),
            doc! {"$v": 2, "diff": {"updatedFields": {"a": 1}}},
        )
        .with_o2(doc! {"_id": "k"});
        e.ts = Timestamp {
            time: 1_700_000_000,
            increment: 9,
        };
        e.wall = DateTime::from_millis(1_700_000_000_123);
        let plain = e.to_bytes();
        e.lsid = Some(doc! {"id": bson::Uuid::new()});
        e.txn_number = Some(5);
        e.stmt_id = Some(2);
        e.in_txn = true;
        e.txn_op_index = 3;
        let full = e.to_bytes();
        for b in [&plain, &full] {
            let walked = EntryHead::walk(b).expect("walks");
            assert_eq!(walked, EntryHead::parse_checked(b).unwrap());
            assert_eq!(OplogEntry::from_bytes(b).unwrap().to_bytes(), *b);
        }
        // Damage anywhere: the walk gives up or agrees, and parse never panics.
        for i in 0..full.len() {
            for x in [0x00, 0x7f, 0xff] {
                let mut d = full.clone();
                d[i] = x;
                if let Some(h) = EntryHead::walk(&d) {
                    if let Ok(c) = EntryHead::parse_checked(&d) {
                        assert_eq!(h, c, "byte {i} = {x:#x}");
                    }
                }
                let _ = EntryHead::parse(&d);
            }
        }
        for n in 0..full.len() {
            let _ = EntryHead::parse(&full[..n]);
        }
    }

    #[test]
    fn entry_round_trip() {
        let mut e = OplogEntry::new(
            OpKind::Insert,
            "d.c",
            Some(bson::Uuid::new()),
            doc! {"_id": 1},
        )
        .with_o2(doc! {"_id": 1});
        e.ts = Timestamp {
            time: 5,
            increment: 2,
        };
        e.wall = DateTime::from_millis(5000);
        e.txn_number = Some(3);
        assert_eq!(OplogEntry::from_bytes(&e.to_bytes()).unwrap(), e);
        assert_eq!(e.to_bytes(), bson::to_vec(&e.to_document()).unwrap());
        e.lsid = Some(doc! {"id": bson::Uuid::new()});
        e.stmt_id = Some(4);
        e.in_txn = true;
        e.txn_op_index = 2;
        assert_eq!(e.to_bytes(), bson::to_vec(&e.to_document()).unwrap());
        assert_eq!(OplogEntry::from_bytes(&e.to_bytes()).unwrap(), e);
        // `o` given encoded is written as is.
        let pre = e.clone().with_o_bytes(bson::to_vec(&e.o).unwrap());
        assert_eq!(pre.to_bytes(), e.to_bytes());
        assert_eq!(key_ts(ts_key(e.ts)), e.ts);
        assert!(
            ts_key(Timestamp {
                time: 5,
                increment: 9
            }) < ts_key(Timestamp {
                time: 6,
                increment: 0
            })
        );
    }
}
