//! Pending layers: the table changes of batches that are durable in the log and applied to
//! the pipeline's open redb write transaction, but not yet committed in redb.
//!
//! Committing a redb transaction costs more than the writes in it (measured: 174k of the
//! 450k instructions of a single-document insert), so the pipeline keeps one write
//! transaction open across batches and commits it every few batches or milliseconds.
//! Readers must still see every acknowledged write at once: each batch publishes its point
//! changes as an immutable [`Layer`] on top of the previous ones, and a snapshot is a redb
//! read transaction plus the chain of layers published since redb's last commit. A batch
//! that deletes a range (dropping a collection or an index, truncating pre-images) is
//! committed in redb at once instead, so layers never need range tombstones.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use crate::redo::TableId;

/// Tables, indexed by `TableId as usize - 1`.
const N_TABLES: usize = 9;

fn slot(t: TableId) -> usize {
    t as usize - 1
}

/// Point changes of one table: `None` deletes.
pub(crate) type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// One batch's changes, and the older layers under it.
#[derive(Debug, Default)]
pub(crate) struct Layer {
    tables: [Changes; N_TABLES],
    prev: Option<Arc<Layer>>,
    /// Layers in the chain, this one included.
    depth: usize,
    /// The clusterTime key of the batch's last entry.
    ts: u64,
}

/// The changes of the batch being run, before it is published.
#[derive(Debug, Default)]
pub(crate) struct Building {
    tables: [Changes; N_TABLES],
    /// Bytes of keys and values recorded.
    pub bytes: usize,
}

impl Building {
    pub(crate) fn put(&mut self, t: TableId, k: &[u8], v: &[u8]) {
        self.bytes += k.len() + v.len();
        self.tables[slot(t)].insert(k.to_vec(), Some(v.to_vec()));
    }

    pub(crate) fn del(&mut self, t: TableId, k: &[u8]) {
        self.bytes += k.len();
        self.tables[slot(t)].insert(k.to_vec(), None);
    }

    /// The layer of these changes on top of `prev`.
    pub(crate) fn publish(&mut self, prev: Option<Arc<Layer>>, ts: u64) -> Arc<Layer> {
        self.bytes = 0;
        let depth = prev.as_ref().map_or(0, |p| p.depth) + 1;
        Arc::new(Layer {
            tables: std::mem::take(&mut self.tables),
            prev,
            depth,
            ts,
        })
    }
}

impl Layer {
    /// The newest layer of the chain whose batch is at or before clusterTime key `ts`.
    pub(crate) fn at_or_before(self: &Arc<Self>, ts: u64) -> Option<Arc<Layer>> {
        let mut l = Some(self.clone());
        while let Some(x) = l {
            if x.ts <= ts {
                return Some(x);
            }
            l = x.prev.clone();
        }
        None
    }

    /// Layers in the chain.
    #[cfg(test)]
    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// The newest change to `key` in the chain: `Some(None)` if deleted, `None` if no
    /// layer changed it.
    pub(crate) fn get<'a>(self: &'a Arc<Self>, t: TableId, key: &[u8]) -> Option<Option<&'a [u8]>> {
        let mut l: &Arc<Layer> = self;
        loop {
            if let Some(v) = l.tables[slot(t)].get(key) {
                return Some(v.as_deref());
            }
            l = l.prev.as_ref()?;
        }
    }

    /// Every change the chain holds for keys in the range, newest winning, in key order.
    pub(crate) fn range(
        self: &Arc<Self>,
        t: TableId,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
    ) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        if bounds_empty(lo, hi) {
            return Vec::new();
        }
        let mut chain = Vec::with_capacity(self.depth);
        let mut l = Some(self);
        while let Some(x) = l {
            chain.push(x);
            l = x.prev.as_ref();
        }
        let mut out: BTreeMap<&[u8], &Option<Vec<u8>>> = BTreeMap::new();
        // Oldest first, so that newer layers overwrite.
        for x in chain.iter().rev() {
            for (k, v) in x.tables[slot(t)].range::<[u8], _>((lo, hi)) {
                out.insert(k.as_slice(), v);
            }
        }
        out.into_iter()
            .map(|(k, v)| (k.to_vec(), v.clone()))
            .collect()
    }

    /// Whether any layer changes a key in the range.
    pub(crate) fn touches(
        self: &Arc<Self>,
        t: TableId,
        lo: Bound<&[u8]>,
        hi: Bound<&[u8]>,
    ) -> bool {
        if bounds_empty(lo, hi) {
            return false;
        }
        let mut l = Some(self);
        while let Some(x) = l {
            if x.tables[slot(t)]
                .range::<[u8], _>((lo, hi))
                .next()
                .is_some()
            {
                return true;
            }
            l = x.prev.as_ref();
        }
        false
    }
}

/// Whether the range is empty (or inverted), which `BTreeMap::range` would panic on.
fn bounds_empty(lo: Bound<&[u8]>, hi: Bound<&[u8]>) -> bool {
    match (lo, hi) {
        (Bound::Included(a), Bound::Included(b)) => a > b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b))
        | (Bound::Excluded(a), Bound::Included(b)) => a >= b,
        _ => false,
    }
}

type Row = (Vec<u8>, Vec<u8>);

/// Merges sorted base rows with sorted pending changes (pending wins, `None` deletes),
/// lazily from both ends.
pub struct Merge<I> {
    base: I,
    /// Rows taken from either end of `base` but not yet returned.
    front: Option<Row>,
    back: Option<Row>,
    extra: std::collections::VecDeque<(Vec<u8>, Option<Vec<u8>>)>,
}

impl<I> Merge<I>
where
    I: DoubleEndedIterator<Item = errors::Result<Row>>,
{
    pub(crate) fn new(base: I, extra: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Merge<I> {
        Merge {
            base,
            front: None,
            back: None,
            extra: extra.into(),
        }
    }

    fn fill_front(&mut self) -> errors::Result<()> {
        if self.front.is_none() {
            match self.base.next() {
                Some(r) => self.front = Some(r?),
                // The base is used up: what the back holds is next.
                None => self.front = self.back.take(),
            }
        }
        Ok(())
    }

    fn fill_back(&mut self) -> errors::Result<()> {
        if self.back.is_none() {
            match self.base.next_back() {
                Some(r) => self.back = Some(r?),
                None => self.back = self.front.take(),
            }
        }
        Ok(())
    }
}

impl<I> Iterator for Merge<I>
where
    I: DoubleEndedIterator<Item = errors::Result<Row>>,
{
    type Item = errors::Result<Row>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Err(e) = self.fill_front() {
                return Some(Err(e));
            }
            let order = match (&self.front, self.extra.front()) {
                (None, None) => return None,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(b), Some(e)) => b.0.cmp(&e.0),
            };
            if order == std::cmp::Ordering::Less {
                return self.front.take().map(Ok);
            }
            if order == std::cmp::Ordering::Equal {
                // The pending change replaces the base row.
                self.front = None;
            }
            let (k, v) = self.extra.pop_front()?;
            if let Some(v) = v {
                return Some(Ok((k, v)));
            }
        }
    }
}

impl<I> DoubleEndedIterator for Merge<I>
where
    I: DoubleEndedIterator<Item = errors::Result<Row>>,
{
    fn next_back(&mut self) -> Option<Self::Item> {
        loop {
            if let Err(e) = self.fill_back() {
                return Some(Err(e));
            }
            let order = match (&self.back, self.extra.back()) {
                (None, None) => return None,
                (Some(_), None) => std::cmp::Ordering::Greater,
                (None, Some(_)) => std::cmp::Ordering::Less,
                (Some(b), Some(e)) => b.0.cmp(&e.0),
            };
            if order == std::cmp::Ordering::Greater {
                return self.back.take().map(Ok);
            }
            if order == std::cmp::Ordering::Equal {
                self.back = None;
            }
            let (k, v) = self.extra.pop_back()?;
            if let Some(v) = v {
                return Some(Ok((k, v)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(v: &[(&str, &str)]) -> Vec<errors::Result<(Vec<u8>, Vec<u8>)>> {
        v.iter()
            .map(|(k, v)| Ok((k.as_bytes().to_vec(), v.as_bytes().to_vec())))
            .collect()
    }

    fn pend(v: &[(&str, Option<&str>)]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        v.iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|s| s.as_bytes().to_vec())))
            .collect()
    }

    fn keys(it: impl Iterator<Item = errors::Result<(Vec<u8>, Vec<u8>)>>) -> Vec<String> {
        it.map(|r| {
            let (k, v) = r.unwrap();
            format!(
                "{}={}",
                String::from_utf8(k).unwrap(),
                String::from_utf8(v).unwrap()
            )
        })
        .collect()
    }

    #[test]
    fn merge_both_ends() {
        let base = rows(&[("a", "1"), ("c", "3"), ("e", "5"), ("g", "7")]);
        let extra = pend(&[
            ("b", Some("2")),
            ("c", None),
            ("e", Some("55")),
            ("h", Some("8")),
        ]);
        let want = vec!["a=1", "b=2", "e=55", "g=7", "h=8"];
        assert_eq!(
            keys(Merge::new(base.clone().into_iter(), extra.clone())),
            want
        );
        let mut back = keys(Merge::new(base.clone().into_iter(), extra.clone()).rev());
        back.reverse();
        assert_eq!(back, want);
        // Mixed from both ends meets in the middle without loss or repeat.
        for split in 0..=want.len() {
            let mut m = Merge::new(base.clone().into_iter(), extra.clone());
            let mut front: Vec<String> = Vec::new();
            for _ in 0..split {
                if let Some(r) = m.next() {
                    front.extend(keys(std::iter::once(r)));
                }
            }
            let mut rest = keys(m.rev());
            rest.reverse();
            front.extend(rest);
            assert_eq!(front, want, "split {split}");
        }
    }

    #[test]
    fn layers_newest_wins() {
        let mut b = Building::default();
        b.put(TableId::Docs, b"k1", b"old");
        b.put(TableId::Docs, b"k2", b"two");
        let l1 = b.publish(None, 1);
        b.put(TableId::Docs, b"k1", b"new");
        b.del(TableId::Docs, b"k2");
        b.put(TableId::Catalog, b"d.c", b"meta");
        let l2 = b.publish(Some(l1.clone()), 2);
        assert_eq!(l2.depth(), 2);
        assert_eq!(l2.get(TableId::Docs, b"k1"), Some(Some(&b"new"[..])));
        assert_eq!(l2.get(TableId::Docs, b"k2"), Some(None));
        assert_eq!(l2.get(TableId::Docs, b"k3"), None);
        assert_eq!(l1.get(TableId::Docs, b"k1"), Some(Some(&b"old"[..])));
        let r = l2.range(TableId::Docs, Bound::Unbounded, Bound::Unbounded);
        assert_eq!(r, pend(&[("k1", Some("new")), ("k2", None)]));
        assert!(l2.touches(
            TableId::Catalog,
            Bound::Included(b"d."),
            Bound::Excluded(b"d/")
        ));
        assert!(!l2.touches(
            TableId::Catalog,
            Bound::Included(b"e."),
            Bound::Excluded(b"e/")
        ));
        assert!(
            l2.range(TableId::Docs, Bound::Included(b"z"), Bound::Excluded(b"a"))
                .is_empty()
        );
    }
}
