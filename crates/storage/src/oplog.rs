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
        }
    }

    /// Sets `o2`.
    #[must_use]
    pub fn with_o2(mut self, o2: Document) -> Self {
        self.o2 = Some(o2);
        self
    }

    /// Whether an update entry is a whole-document replacement.
    pub fn is_replacement(&self) -> bool {
        self.op == OpKind::Update && !self.o.contains_key("$v")
    }

    /// The entry in MongoDB's oplog format.
    pub fn to_document(&self) -> Document {
        let mut d = doc! { "op": self.op.code(), "ns": &self.ns };
        if let Some(ui) = self.ui {
            d.insert("ui", ui);
        }
        d.insert("o", self.o.clone());
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
        use bson::{RawBson, RawDocumentBuf};
        let raw = |d: &Document| RawDocumentBuf::from_document(d).expect("document serializes");
        let mut r = RawDocumentBuf::new();
        r.append("op", self.op.code());
        r.append("ns", self.ns.as_str());
        if let Some(ui) = self.ui {
            r.append("ui", RawBson::Binary(bson::Binary::from_uuid(ui)));
        }
        r.append("o", raw(&self.o));
        if let Some(o2) = &self.o2 {
            r.append("o2", raw(o2));
        }
        if let Some(l) = &self.lsid {
            r.append("lsid", raw(l));
        }
        if let Some(t) = self.txn_number {
            r.append("txnNumber", t);
        }
        if let Some(s) = self.stmt_id {
            r.append("stmtId", s);
        }
        if self.in_txn {
            r.append("inTxn", true);
            r.append("txnOpIndex", self.txn_op_index);
        }
        r.append("ts", self.ts);
        r.append("t", 1i64);
        r.append("v", 2i64);
        r.append("wall", self.wall);
        r.into_bytes()
    }

    /// Decodes an entry from the oplog table.
    pub fn from_bytes(b: &[u8]) -> Result<OplogEntry> {
        // One pass over the raw form: only `o`, `o2` and `lsid` become documents.
        // (Decoding the whole entry into a document and copying those out of it cost five
        // times as much; so did looking each field up, as each lookup scans from the start.)
        use bson::RawBsonRef as R;
        let bad = || MongoError::internal("corrupt oplog entry");
        let raw = bson::RawDocument::from_bytes(b)
            .map_err(|e| MongoError::internal(format!("oplog: {e}")))?;
        let doc = |d: &bson::RawDocument| Document::try_from(d).map_err(|_| bad());
        let mut e = OplogEntry::new(OpKind::Noop, String::new(), None, Document::new());
        let (mut has_ts, mut has_wall, mut has_op, mut has_ns, mut has_o) =
            (false, false, false, false, false);
        for item in raw {
            let (k, v) = item.map_err(|_| bad())?;
            match (k, v) {
                ("ts", R::Timestamp(t)) => (e.ts, has_ts) = (t, true),
                ("wall", R::DateTime(t)) => (e.wall, has_wall) = (t, true),
                ("op", R::String(s)) => {
                    e.op = OpKind::from_code(s).ok_or_else(bad)?;
                    has_op = true;
                }
                ("ns", R::String(s)) => (e.ns, has_ns) = (s.to_string(), true),
                ("ui", R::Binary(bin)) => {
                    e.ui = Some(bson::Uuid::from_bytes(
                        bin.bytes.try_into().map_err(|_| bad())?,
                    ));
                }
                ("o", R::Document(d)) => (e.o, has_o) = (doc(d)?, true),
                ("o2", R::Document(d)) => e.o2 = Some(doc(d)?),
                ("lsid", R::Document(d)) => e.lsid = Some(doc(d)?),
                ("txnNumber", R::Int64(n)) => e.txn_number = Some(n),
                ("stmtId", R::Int32(n)) => e.stmt_id = Some(n),
                ("inTxn", R::Boolean(t)) => e.in_txn = t,
                ("txnOpIndex", R::Int32(n)) => e.txn_op_index = n,
                _ => {}
            }
        }
        if !(has_ts && has_wall && has_op && has_ns && has_o) {
            return Err(bad());
        }
        Ok(e)
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
        })
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
