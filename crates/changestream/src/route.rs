//! Push routing: each committed entry goes to the streams whose pipeline can admit it,
//! found through an index of their leading `$match`, into per-stream bounded inboxes.
//!
//! A stream is attached to the router once it has read everything the hub has tailed.
//! From then on the hub, as it tails each entry, finds the candidate streams in time
//! proportional to their number (not to the number of streams): by namespace, by
//! `operationType`, and by the value of one equality or `$in` predicate on an event field.
//! A candidate's inbox takes the entry and wakes its waiting `getMore`; the stream then runs
//! its whole pipeline on what arrives, so the index only has to be a superset. Idle streams
//! cost nothing per event.
//!
//! Inboxes are bounded (per stream, and in total across the server). A stream whose inbox
//! would overflow is detached: it drops what it held and reads history from where it stands,
//! in bounded chunks like any laggard, and attaches again when it has caught up.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bson::{Bson, Document};
use doc::collation::Collation;
use query::filter::Predicate;
use storage::{OpKind, oplog::ts_key};
use tokio::sync::Notify;

use crate::hub::Decoded;
use crate::spec::{StreamSpec, Target};

/// Entries one stream's inbox holds before the stream falls back to reading history.
pub const INBOX_ENTRIES: usize = 8192;
/// Bytes (of encoded entries) one stream's inbox holds before it falls back.
pub const INBOX_BYTES: usize = 16 * 1024 * 1024;
/// Bytes all inboxes hold together, counting an entry once per inbox that holds it. The
/// entries are shared with the hub's window, so this over-counts; it bounds what inboxes
/// can keep alive after the window has let go.
pub const INBOXES_BYTES: usize = 256 * 1024 * 1024;

/// Operation types an event-type mask can name; everything else (DDL, `invalidate`) is
/// delivered to every stream of the namespace whatever its mask.
const OP_TYPES: [&str; 4] = ["insert", "update", "replace", "delete"];

fn op_bit(op_type: &str) -> Option<u8> {
    OP_TYPES
        .iter()
        .position(|t| *t == op_type)
        .map(|i| 1u8 << i)
}

const ALL_OPS: u8 = 0b1111;

/// One stream's inbox: the entries routed to it, and the stream's wake-up.
#[derive(Default)]
pub struct Inbox {
    state: Mutex<InboxState>,
    notify: Notify,
}

#[derive(Default)]
struct InboxState {
    entries: VecDeque<Arc<Decoded>>,
    bytes: usize,
    attached: bool,
    /// Set when the inbox overflowed and was detached: the oplog key of the oldest entry
    /// it dropped. The stream resumes reading history there.
    dropped_from: Option<u64>,
}

/// What a stream learns from its inbox.
pub enum Taken {
    /// The stream is attached, and this is its next candidate entry (`None`: none waits).
    Entry(Option<Arc<Decoded>>),
    /// The inbox overflowed and was detached: read history from this key on.
    Detached(u64),
    /// The stream is not attached.
    Pull,
}

impl Inbox {
    /// Waits until an entry arrives (or the inbox is detached).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }

    /// Takes the next entry off the front.
    pub fn pop(&self, total: &AtomicUsize) -> Taken {
        let mut s = self.state.lock().unwrap();
        if let Some(k) = s.dropped_from.take() {
            return Taken::Detached(k);
        }
        if !s.attached {
            return Taken::Pull;
        }
        let d = s.entries.pop_front();
        if let Some(d) = &d {
            s.bytes -= d.bytes;
            total.fetch_sub(d.bytes, Ordering::Relaxed);
        }
        Taken::Entry(d)
    }

    /// Whether the stream is attached.
    pub fn attached(&self) -> bool {
        self.state.lock().unwrap().attached
    }

    /// Entries and bytes waiting, and whether the stream is attached.
    pub fn fill(&self) -> (usize, usize, bool) {
        let s = self.state.lock().unwrap();
        (s.entries.len(), s.bytes, s.attached)
    }

    /// The oplog key of the first entry waiting, if any.
    pub fn first_key(&self) -> Option<u64> {
        let s = self.state.lock().unwrap();
        s.entries.front().map(|d| ts_key(d.ts()))
    }

    /// Adds an entry; `false` (and nothing added) when it would overflow.
    fn push(&self, d: &Arc<Decoded>, total: &AtomicUsize) -> bool {
        let mut s = self.state.lock().unwrap();
        if !s.attached {
            return true;
        }
        // An empty inbox takes one entry whatever its size, so that an entry larger than the
        // bounds does not detach every stream it goes to.
        let over_budget = s.bytes + d.bytes > INBOX_BYTES
            || total.load(Ordering::Relaxed) + d.bytes > INBOXES_BYTES;
        if s.entries.len() >= INBOX_ENTRIES || (over_budget && !s.entries.is_empty()) {
            return false;
        }
        s.bytes += d.bytes;
        total.fetch_add(d.bytes, Ordering::Relaxed);
        s.entries.push_back(d.clone());
        drop(s);
        self.notify.notify_one();
        true
    }

    /// Detaches the inbox: drops what it holds and tells the stream where to read from.
    fn detach(&self, from: u64, total: &AtomicUsize) {
        let mut s = self.state.lock().unwrap();
        s.attached = false;
        let k = s.entries.front().map_or(from, |d| ts_key(d.ts()));
        s.dropped_from = Some(s.dropped_from.map_or(k, |d| d.min(k)));
        total.fetch_sub(s.bytes, Ordering::Relaxed);
        s.entries.clear();
        s.bytes = 0;
        drop(s);
        self.notify.notify_one();
    }
}

/// Where a stream is indexed: its namespace, the operation types it admits, and at most
/// one keyed predicate.
#[derive(Debug, Clone)]
pub struct Route {
    target: TargetKey,
    ops: u8,
    key: Option<KeyPred>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum TargetKey {
    Coll(String),
    Db(String),
    Cluster,
}

#[derive(Debug, Clone)]
struct KeyPred {
    path: String,
    collation: Option<Arc<Collation>>,
    /// The values' keystrings (under the collation).
    keys: Vec<Vec<u8>>,
}

impl Route {
    /// How a stream is indexed, from its spec.
    pub fn of(spec: &StreamSpec) -> Route {
        let target = match &spec.target {
            Target::Collection(ns) => TargetKey::Coll(ns.full()),
            Target::Database(db) => TargetKey::Db(db.clone()),
            Target::Cluster => TargetKey::Cluster,
        };
        let mut route = Route {
            target,
            ops: ALL_OPS,
            key: None,
        };
        let Some(pipeline) = &spec.pipeline else {
            return route;
        };
        let Some(filter) = pipeline.leading_match() else {
            return route;
        };
        let collation = pipeline.collation_arc();
        let default_shape = spec.default_shape();
        for (path, pred) in filter.predicates() {
            let values = match pred {
                Predicate::Eq(v) => vec![v],
                Predicate::In(vs) => vs,
                Predicate::Range { .. } => continue,
            };
            if path == "operationType" {
                // Each conjunct narrows the mask; a non-string value admits nothing.
                let mut mask = 0;
                for v in &values {
                    if let Bson::String(s) = v {
                        mask |= op_bit(s).unwrap_or(0);
                    }
                }
                route.ops &= mask;
                continue;
            }
            if route.key.is_some() || !keyable_path(&path, default_shape) {
                continue;
            }
            // Null matches a missing field, and undefined is not comparable by key.
            if values
                .iter()
                .any(|v| matches!(v, Bson::Null | Bson::Undefined))
            {
                continue;
            }
            let keys = values
                .iter()
                .map(|v| value_key(v, collation.as_deref()))
                .collect();
            route.key = Some(KeyPred {
                path,
                collation: collation.clone(),
                keys,
            });
        }
        route
    }
}

/// Whether a predicate's path reads the same value in the event this stream sees as in
/// the default-option event the router looks at.
fn keyable_path(path: &str, default_shape: bool) -> bool {
    let first = path.split('.').next().unwrap_or("");
    if default_shape {
        return !first.is_empty();
    }
    // Other options add or change `fullDocument`, `fullDocumentBeforeChange` and (expanded
    // events) `collectionUUID` and the DDL fields; these stay as they are.
    matches!(first, "documentKey" | "ns" | "updateDescription")
}

fn value_key(v: &Bson, collation: Option<&Collation>) -> Vec<u8> {
    let mut buf = Vec::new();
    doc::keystring::append_value_collated(&mut buf, v, false, collation);
    buf
}

/// The streams indexed on one target.
#[derive(Default)]
struct TargetIndex {
    /// Streams with no keyed predicate, with their operation masks.
    unkeyed: HashMap<u64, u8>,
    /// Keyed streams, grouped by (path, collation).
    groups: Vec<KeyGroup>,
}

struct KeyGroup {
    path: String,
    collation: Option<Arc<Collation>>,
    by_key: HashMap<Vec<u8>, HashMap<u64, u8>>,
    members: usize,
}

impl TargetIndex {
    fn is_empty(&self) -> bool {
        self.unkeyed.is_empty() && self.groups.is_empty()
    }

    /// The group of streams keyed like `k`.
    fn group_of(&self, k: &KeyPred) -> Option<usize> {
        self.groups
            .iter()
            .position(|g| g.path == k.path && g.collation == k.collation)
    }

    fn insert(&mut self, id: u64, route: &Route) {
        let Some(k) = &route.key else {
            self.unkeyed.insert(id, route.ops);
            return;
        };
        let g = match self.group_of(k) {
            Some(i) => &mut self.groups[i],
            None => {
                self.groups.push(KeyGroup {
                    path: k.path.clone(),
                    collation: k.collation.clone(),
                    by_key: HashMap::new(),
                    members: 0,
                });
                self.groups.last_mut().expect("just pushed")
            }
        };
        g.members += 1;
        for key in &k.keys {
            g.by_key
                .entry(key.clone())
                .or_default()
                .insert(id, route.ops);
        }
    }

    fn remove(&mut self, id: u64, route: &Route) {
        let Some(k) = &route.key else {
            self.unkeyed.remove(&id);
            return;
        };
        let Some(i) = self.group_of(k) else {
            return;
        };
        let g = &mut self.groups[i];
        for key in &k.keys {
            if let Some(set) = g.by_key.get_mut(key) {
                set.remove(&id);
                if set.is_empty() {
                    g.by_key.remove(key);
                }
            }
        }
        g.members -= 1;
        if g.members == 0 {
            self.groups.swap_remove(i);
        }
    }

    /// Adds the streams that can admit an event (`op` its operation type bit, `doc` the
    /// default-option event) to `out`.
    fn candidates(&self, op: u8, sh: &crate::event::Shared, out: &mut Vec<u64>) {
        out.extend(
            self.unkeyed
                .iter()
                .filter(|(_, m)| **m & op != 0)
                .map(|(id, _)| *id),
        );
        for g in &self.groups {
            // The event's document is built only for streams keyed on its fields.
            for key in event_keys(sh.doc(), &g.path, g.collation.as_deref()) {
                if let Some(set) = g.by_key.get(&key) {
                    out.extend(set.iter().filter(|(_, m)| **m & op != 0).map(|(id, _)| *id));
                }
            }
        }
    }

    fn all(&self, out: &mut Vec<u64>) {
        out.extend(self.unkeyed.keys());
        for g in &self.groups {
            for set in g.by_key.values() {
                out.extend(set.keys());
            }
        }
    }
}

/// The keys an event's value at `path` can equal: each value the path reaches, and the
/// elements of any array among them (`{a: 5}` matches `a: [5, 6]`).
fn event_keys(doc: &Document, path: &str, collation: Option<&Collation>) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for v in doc::path::lookup_all(doc, path).into_iter().flatten() {
        if let Bson::Array(items) = &v {
            for e in items {
                out.push(value_key(e, collation));
            }
        }
        out.push(value_key(&v, collation));
    }
    out
}

/// The index of attached streams.
#[derive(Default)]
pub struct Router {
    next_id: u64,
    subs: HashMap<u64, (Weak<Inbox>, Route)>,
    targets: HashMap<TargetKey, TargetIndex>,
}

impl Router {
    /// Whether any stream is attached.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// A new id for a stream.
    pub fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Attaches a stream's inbox, pre-filled with `backlog` (entries tailed after the
    /// stream's position, which the router has already passed).
    pub fn attach(
        &mut self,
        id: u64,
        inbox: &Arc<Inbox>,
        route: &Route,
        backlog: &[Arc<Decoded>],
        total: &AtomicUsize,
    ) {
        {
            let mut s = inbox.state.lock().unwrap();
            s.attached = true;
            s.dropped_from = None;
            for d in backlog {
                s.bytes += d.bytes;
                total.fetch_add(d.bytes, Ordering::Relaxed);
                s.entries.push_back(d.clone());
            }
        }
        self.targets
            .entry(route.target.clone())
            .or_default()
            .insert(id, route);
        self.subs.insert(id, (Arc::downgrade(inbox), route.clone()));
    }

    /// Removes a stream from the index (its inbox keeps its state).
    pub fn remove(&mut self, id: u64) {
        let Some((_, route)) = self.subs.remove(&id) else {
            return;
        };
        if let Some(t) = self.targets.get_mut(&route.target) {
            t.remove(id, &route);
            if t.is_empty() {
                self.targets.remove(&route.target);
            }
        }
    }

    /// Delivers one tailed entry to its candidate streams; a stream whose inbox is full is
    /// detached.
    pub fn route(&mut self, d: &Arc<Decoded>, total: &AtomicUsize) {
        if self.subs.is_empty() {
            return;
        }
        // A vector, deduplicated once (a stream keyed on an array field can be found under
        // several of the event's keys): a set cost more per candidate than delivering.
        let mut ids = Vec::new();
        if let Err(e) = self.candidates(d, &mut ids) {
            // Every stream meets the entry, and reports the error itself.
            tracing::warn!(error = %e, "change stream router could not read an entry");
            ids.clear();
            for t in self.targets.values() {
                t.all(&mut ids);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let mut full = Vec::new();
        for id in ids {
            let Some((inbox, _)) = self.subs.get(&id) else {
                continue;
            };
            let Some(inbox) = inbox.upgrade() else {
                full.push(id);
                continue;
            };
            if !inbox.push(d, total) {
                inbox.detach(ts_key(d.ts()), total);
                full.push(id);
            }
        }
        for id in full {
            self.remove(id);
        }
    }

    fn candidates(&self, d: &Decoded, out: &mut Vec<u64>) -> errors::Result<()> {
        match d.head.op {
            OpKind::Noop => Ok(()),
            // DDL (and applyOps) entries are rare: every stream reads them.
            OpKind::Command => {
                for t in self.targets.values() {
                    t.all(out);
                }
                Ok(())
            }
            OpKind::Insert | OpKind::Update | OpKind::Delete => {
                let Some((db, _)) = d.head.ns.split_once('.') else {
                    return Ok(());
                };
                let Some(sh) = shared(d)? else {
                    return Ok(());
                };
                let op = op_bit(sh.op_type()).unwrap_or(ALL_OPS);
                let keys = [
                    TargetKey::Coll(d.head.ns.clone()),
                    TargetKey::Db(db.to_string()),
                    TargetKey::Cluster,
                ];
                for k in &keys {
                    if let Some(t) = self.targets.get(k) {
                        t.candidates(op, sh, out);
                    }
                }
                Ok(())
            }
        }
    }
}

fn shared(d: &Decoded) -> errors::Result<Option<&crate::event::Shared>> {
    crate::event::shared_event(d)
}

/// A stream's place in the router: its id, route and inbox. Dropping it detaches the
/// stream.
pub struct Subscription {
    pub(crate) id: u64,
    pub(crate) route: Route,
    pub(crate) inbox: Arc<Inbox>,
    pub(crate) router: Arc<Mutex<Router>>,
}

impl Subscription {
    /// The stream's inbox.
    pub fn inbox(&self) -> &Arc<Inbox> {
        &self.inbox
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.router.lock().unwrap().remove(self.id);
    }
}
