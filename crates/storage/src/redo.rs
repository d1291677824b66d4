//! Redo records: the physical changes a commit batch made to the tables, in the order it
//! made them, so that recovery can make them again on top of the last checkpoint.
//!
//! Format: a sequence of operations, each one byte `table << 4 | op`, then
//! - `PUT`: key, value;
//! - `DEL`: key;
//! - `DEL_RANGE`: lower bound, upper bound (each a kind byte, 0 unbounded, 1 included,
//!   2 excluded, then a key unless unbounded);
//!
//! where a key or value is a LEB128 length and the bytes. Keys of `u64` tables are 8 bytes
//! big-endian, of `(u64, u32)` tables 12.
//!
//! Key decision: physical, not logical. Replaying the oplog entries would need the query
//! language (update deltas, index keys) inside storage; replaying the table changes needs
//! nothing but the tables, and gives back exactly the state the batch made.

use std::ops::Bound;

/// Which table an operation changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TableId {
    Catalog = 1,
    /// Format 2's documents table: only in logs written by format 2, replayed before they
    /// are migrated.
    Docs = 2,
    Indexes = 3,
    Meta = 4,
    Sessions = 5,
    Preimages = 6,
    TxnPreimages = 7,
    Records = 8,
    Ids = 9,
}

impl TableId {
    pub(crate) fn from_u8(v: u8) -> Option<TableId> {
        Some(match v {
            1 => TableId::Catalog,
            2 => TableId::Docs,
            3 => TableId::Indexes,
            4 => TableId::Meta,
            5 => TableId::Sessions,
            6 => TableId::Preimages,
            7 => TableId::TxnPreimages,
            8 => TableId::Records,
            9 => TableId::Ids,
            _ => return None,
        })
    }
}

const PUT: u8 = 0;
const DEL: u8 = 1;
const DEL_RANGE: u8 = 2;

/// One decoded operation, borrowing from the record.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Put(TableId, &'a [u8], &'a [u8]),
    Del(TableId, &'a [u8]),
    DelRange(TableId, Bound<&'a [u8]>, Bound<&'a [u8]>),
}

/// A batch's redo section being written.
#[derive(Default)]
pub struct Redo {
    buf: Vec<u8>,
}

impl Redo {
    /// The encoded operations.
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Forgets everything recorded.
    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn put(&mut self, t: TableId, key: &[u8], value: &[u8]) {
        self.buf.push((t as u8) << 4 | PUT);
        put_bytes(&mut self.buf, key);
        put_bytes(&mut self.buf, value);
    }

    pub fn del(&mut self, t: TableId, key: &[u8]) {
        self.buf.push((t as u8) << 4 | DEL);
        put_bytes(&mut self.buf, key);
    }

    pub fn del_range(&mut self, t: TableId, lo: Bound<&[u8]>, hi: Bound<&[u8]>) {
        self.buf.push((t as u8) << 4 | DEL_RANGE);
        put_bound(&mut self.buf, lo);
        put_bound(&mut self.buf, hi);
    }
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_bound(out: &mut Vec<u8>, b: Bound<&[u8]>) {
    match b {
        Bound::Unbounded => out.push(0),
        Bound::Included(k) => {
            out.push(1);
            put_bytes(out, k);
        }
        Bound::Excluded(k) => {
            out.push(2);
            put_bytes(out, k);
        }
    }
}

/// Decodes a redo section operation by operation.
pub fn ops(b: &[u8]) -> OpIter<'_> {
    OpIter { rest: b }
}

/// Iterator over a redo section; yields `Err` once if it is malformed.
pub struct OpIter<'a> {
    rest: &'a [u8],
}

impl<'a> OpIter<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.rest.split_first()?;
            self.rest = rest;
            n |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok()?;
        if self.rest.len() < n {
            return None;
        }
        let (b, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(b)
    }

    fn bound(&mut self) -> Option<Bound<&'a [u8]>> {
        let (&k, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(match k {
            0 => Bound::Unbounded,
            1 => Bound::Included(self.bytes()?),
            2 => Bound::Excluded(self.bytes()?),
            _ => return None,
        })
    }

    fn op(&mut self) -> Option<Op<'a>> {
        let (&tag, rest) = self.rest.split_first()?;
        self.rest = rest;
        let t = TableId::from_u8(tag >> 4)?;
        Some(match tag & 0x0F {
            PUT => {
                let k = self.bytes()?;
                Op::Put(t, k, self.bytes()?)
            }
            DEL => Op::Del(t, self.bytes()?),
            DEL_RANGE => {
                let lo = self.bound()?;
                Op::DelRange(t, lo, self.bound()?)
            }
            _ => return None,
        })
    }
}

impl<'a> Iterator for OpIter<'a> {
    type Item = Result<Op<'a>, &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match self.op() {
            Some(op) => Some(Ok(op)),
            None => {
                self.rest = &[];
                Some(Err("malformed redo operation"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut r = Redo::default();
        let big = vec![7u8; 300];
        let mut ends = Vec::new();
        r.put(TableId::Docs, b"k1", &big);
        ends.push(r.bytes().len());
        r.del(TableId::Catalog, b"d.c");
        ends.push(r.bytes().len());
        r.del_range(
            TableId::Preimages,
            Bound::Unbounded,
            Bound::Included(b"12345678"),
        );
        ends.push(r.bytes().len());
        r.del_range(
            TableId::Indexes,
            Bound::Included(b"a"),
            Bound::Excluded(b"b"),
        );
        let got: Vec<_> = ops(r.bytes()).map(|o| o.unwrap()).collect();
        assert_eq!(
            got,
            vec![
                Op::Put(TableId::Docs, b"k1", &big),
                Op::Del(TableId::Catalog, b"d.c"),
                Op::DelRange(
                    TableId::Preimages,
                    Bound::Unbounded,
                    Bound::Included(b"12345678")
                ),
                Op::DelRange(
                    TableId::Indexes,
                    Bound::Included(b"a"),
                    Bound::Excluded(b"b")
                ),
            ]
        );
        // A cut record is reported, never misread.
        let b = r.bytes();
        for cut in 1..b.len() {
            let items: Vec<_> = ops(&b[..cut]).collect();
            let complete = ends.contains(&cut);
            assert_eq!(items.iter().any(Result::is_err), !complete, "cut at {cut}");
        }
    }
}
