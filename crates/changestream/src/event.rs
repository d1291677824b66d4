//! Oplog entry → change events, for one stream's target and options.

use bson::{Bson, Document, Timestamp, doc, spec::BinarySubtype};
use errors::Result;
use query::update::UpdateDelta;
use storage::{Namespace, OpKind, OplogEntry};

use crate::hub::Decoded;
use crate::resume_token::ResumeTokenData;
use crate::spec::{FullDocument, FullDocumentBeforeChange, StreamSpec, Target};

/// Where an event sits in the stream: `(clusterTime, txnOpIndex, fromInvalidate)`.
/// Tokens of later events sort after earlier ones, and so do these keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventPos {
    pub ts: (u32, u32),
    pub txn_op_index: i32,
    pub from_invalidate: bool,
    /// The fragment of a split event (`None` for a whole event, which sorts first).
    pub fragment: Option<i32>,
}

impl EventPos {
    /// The position of a token.
    pub fn of_token(t: &ResumeTokenData) -> EventPos {
        EventPos {
            ts: (t.cluster_time.time, t.cluster_time.increment),
            txn_op_index: t.txn_op_index,
            from_invalidate: t.from_invalidate,
            fragment: t.fragment_num,
        }
    }
}

/// What events need from the database beyond the oplog entry itself.
pub trait Lookup {
    /// The current document with this key (for `fullDocument: updateLookup`).
    ///
    /// # Errors
    /// On storage failure.
    fn current(&self, ns: &Namespace, document_key: &Document) -> Result<Option<Document>>;
    /// The pre-image stored for the write at `ts`.
    ///
    /// # Errors
    /// On storage failure.
    /// The pre-image of the write at `ts` (`txn_op_index` for a write in a transaction).
    fn preimage(&self, ts: Timestamp, txn_op_index: Option<u32>) -> Result<Option<Document>>;
}

/// One change event before the user's pipeline runs.
#[derive(Debug, Clone)]
pub struct Event {
    pub pos: EventPos,
    pub doc: Document,
    /// Whether this event ends the stream (an `invalidate`).
    pub invalidate: bool,
}

fn uuid_bson(u: bson::Uuid) -> Bson {
    Bson::Binary(bson::Binary {
        subtype: BinarySubtype::Uuid,
        bytes: u.bytes().to_vec(),
    })
}

fn ns_doc(ns: &Namespace) -> Document {
    doc! {"db": &ns.db, "coll": &ns.coll}
}

fn internal_db(db: &str) -> bool {
    matches!(db, "admin" | "local" | "config")
}

/// Whether the stream's target covers a collection namespace.
fn covers(spec: &StreamSpec, ns: &Namespace) -> bool {
    if ns.is_system() {
        return false;
    }
    match &spec.target {
        Target::Collection(t) => t == ns,
        Target::Database(db) => &ns.db == db,
        Target::Cluster => !internal_db(&ns.db),
    }
}

fn txn_index(entry: &OplogEntry) -> Option<u32> {
    entry.in_txn.then_some(entry.txn_op_index as u32)
}

/// The events an oplog entry produces for a stream, in order.
///
/// # Errors
/// On a lookup failure, or an entry that cannot be decoded.
pub fn events_for(
    entry: &OplogEntry,
    spec: &StreamSpec,
    lookup: &dyn Lookup,
) -> Result<Vec<Event>> {
    if entry.op == OpKind::Command && entry.o.contains_key("applyOps") {
        let mut out = Vec::new();
        let ops = entry
            .o
            .get_array("applyOps")
            .map_err(|_| errors::MongoError::internal("bad applyOps"))?;
        for op in ops {
            if let Bson::Document(d) = op {
                let inner = OplogEntry::from_document(d)?;
                out.extend(events_for(&inner, spec, lookup)?);
            }
        }
        return Ok(out);
    }
    let Some((op_type, ns, extra)) = classify(entry) else {
        return Ok(Vec::new());
    };
    if is_expanded_only(op_type) && !spec.show_expanded_events {
        return Ok(Vec::new());
    }
    let (seen, invalidates) = visibility(op_type, &ns, extra.to.as_ref(), spec);
    if !seen {
        return Ok(Vec::new());
    }
    let (doc, token) = build(entry, op_type, &ns, &extra, Shape::of(spec), lookup)?;
    Ok(finish(
        (entry.ts, entry.wall, entry.txn_op_index),
        doc,
        token,
        invalidates,
    ))
}

/// The part of an entry's event that is the same for every stream with default options
/// (no `fullDocument` lookups or images, no expanded events): built once per entry, as a
/// document or as bytes, and the other form made from it on first use.
#[derive(Debug)]
pub struct Shared {
    op_type: &'static str,
    ns: Namespace,
    to: Option<Namespace>,
    token: ResumeTokenData,
    doc: std::sync::OnceLock<Document>,
    /// The event's bytes, shared by every stream that sends it unchanged.
    encoded: std::sync::OnceLock<std::sync::Arc<Encoded>>,
}

impl Shared {
    /// The event document.
    pub fn doc(&self) -> &Document {
        self.doc.get_or_init(|| {
            let enc = self.encoded.get().expect("a shared event has one form");
            // Built from a valid entry's documents: converting it back cannot fail.
            doc::raw::bytes_to_document(&enc.bytes, usize::MAX).unwrap_or_default()
        })
    }

    /// The event encoded, once for every stream that sends it unchanged.
    pub fn encoded(&self) -> &std::sync::Arc<Encoded> {
        self.encoded.get_or_init(|| {
            let doc = self.doc.get().expect("a shared event has one form");
            std::sync::Arc::new(Encoded::new(doc))
        })
    }

    /// The event's operation type.
    pub fn op_type(&self) -> &'static str {
        self.op_type
    }
}

/// An event as a reply sends it: its BSON bytes and its `_id` (the resume token, which the
/// batch's `postBatchResumeToken` repeats).
#[derive(Debug)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    /// The event's `_id`, read from `bytes` when first asked for (a batch needs only its
    /// last event's, for the `postBatchResumeToken`).
    token: std::sync::OnceLock<Document>,
    /// Whether the event has an `_id` (a resume token).
    pub has_token: bool,
    /// The bytes the token takes again as a reply's `postBatchResumeToken` field (0 without
    /// a token), measured once rather than for every batch the event goes in.
    pub token_bytes: usize,
    /// The event as relaxed and as canonical Extended JSON, made when first asked for: the
    /// HTTP listener's Server-Sent Events clients that share this event share its JSON.
    json: [std::sync::OnceLock<std::sync::Arc<str>>; 2],
}

impl Encoded {
    /// Encodes an event.
    pub fn new(ev: &Document) -> Encoded {
        let mut bytes = Vec::with_capacity(doc::encoded_len(ev));
        // Encoding a document that was built in memory fails only on a key with a NUL,
        // which no event has.
        let _ = doc::encode::encode_into(ev, &mut bytes);
        let token = match ev.get("_id") {
            Some(Bson::Document(t)) => t.clone(),
            _ => Document::new(),
        };
        let token_bytes = pbrt_bytes(doc::encoded_len(&token), !token.is_empty());
        Encoded {
            bytes,
            has_token: !token.is_empty(),
            token: std::sync::OnceLock::from(token),
            token_bytes,
            json: Default::default(),
        }
    }

    /// An event already encoded whose `_id` (a resume token) is `token_len` bytes long.
    pub fn with_token_len(bytes: Vec<u8>, token_len: usize) -> Encoded {
        Encoded {
            bytes,
            token: std::sync::OnceLock::new(),
            has_token: true,
            token_bytes: pbrt_bytes(token_len, true),
            json: Default::default(),
        }
    }

    /// The event as Extended JSON text (canonical or relaxed), encoded once.
    pub fn json(&self, canonical: bool) -> std::sync::Arc<str> {
        self.json[usize::from(canonical)]
            .get_or_init(|| {
                let d = Document::from_reader(self.bytes.as_slice()).unwrap_or_default();
                let v = if canonical {
                    Bson::Document(d).into_canonical_extjson()
                } else {
                    Bson::Document(d).into_relaxed_extjson()
                };
                v.to_string().into()
            })
            .clone()
    }

    /// The event's `_id` (empty when it has none).
    pub fn token(&self) -> &Document {
        self.token.get_or_init(|| {
            bson::RawDocument::from_bytes(&self.bytes)
                .ok()
                .and_then(|d| d.get_document("_id").ok())
                .and_then(|t| doc::raw::to_document(t, 8).ok())
                .unwrap_or_default()
        })
    }
}

/// The bytes a token of `len` bytes takes as a `postBatchResumeToken` field.
fn pbrt_bytes(len: usize, present: bool) -> usize {
    if present {
        len + "postBatchResumeToken".len() + 2
    } else {
        0
    }
}

/// An event's document: the shared one for default-option streams, or the stream's own.
pub enum EventDoc<'a> {
    Shared(&'a Shared),
    Own(Document),
}

/// One change event before the user's pipeline runs, possibly shared with other streams.
pub struct SharedEvent<'a> {
    pub pos: EventPos,
    pub doc: EventDoc<'a>,
    /// Whether this event ends the stream (an `invalidate`).
    pub invalidate: bool,
}

impl<'a> SharedEvent<'a> {
    fn own(e: Event) -> SharedEvent<'a> {
        SharedEvent {
            pos: e.pos,
            doc: EventDoc::Own(e.doc),
            invalidate: e.invalidate,
        }
    }
}

/// Per-entry cache of [`Shared`].
pub type SharedCache = std::sync::OnceLock<std::result::Result<Option<Shared>, errors::MongoError>>;

/// Like [`events_for`], but for streams with default options the event is the one built
/// (and, once, encoded) for the first stream that saw this entry, so fan-out costs a
/// visibility check and, for a stream that sends it unchanged, a reference.
///
/// `pre` is the pipeline's leading `$match`, checked against the shared event in place,
/// so a stream pays nothing for the events it drops.
///
/// # Errors
/// As [`events_for`].
pub fn events_for_shared<'a>(
    d: &'a Decoded,
    spec: &StreamSpec,
    lookup: &dyn Lookup,
    pre: Option<&query::filter::Filter>,
) -> Result<Vec<SharedEvent<'a>>> {
    let h = &d.head;
    if !spec.default_shape() || h.op == OpKind::Command && d.entry()?.o.contains_key("applyOps") {
        return Ok(events_for(d.entry()?, spec, lookup)?
            .into_iter()
            .map(SharedEvent::own)
            .collect());
    }
    let Some(sh) = shared_event(d)? else {
        return Ok(Vec::new());
    };
    let (seen, invalidates) = visibility(sh.op_type, &sh.ns, sh.to.as_ref(), spec);
    if !seen {
        return Ok(Vec::new());
    }
    let pos = (h.ts, h.wall, h.txn_op_index);
    let mut events: Vec<SharedEvent<'a>> = if invalidates {
        finish(pos, Document::new(), sh.token.clone(), true)
            .into_iter()
            .map(SharedEvent::own)
            .collect()
    } else {
        // The common case, for every stream an entry reaches: no token copied.
        vec![SharedEvent {
            pos: EventPos {
                ts: (h.ts.time, h.ts.increment),
                txn_op_index: h.txn_op_index,
                from_invalidate: false,
                fragment: None,
            },
            doc: EventDoc::Shared(sh),
            invalidate: false,
        }]
    };
    if pre.is_some_and(|f| !f.matches(sh.doc())) {
        events.remove(0);
    } else {
        events[0].doc = EventDoc::Shared(sh);
    }
    Ok(events)
}

/// The event an entry makes for default-option streams, built once per entry (`None` for
/// an entry no such stream sees: a no-op, or an expanded-only DDL event). Inserts, updates,
/// replacements and deletes are built from the entry's bytes (see [`raw_shared`]).
///
/// # Errors
/// An entry that cannot be decoded.
pub fn shared_event(d: &Decoded) -> Result<Option<&Shared>> {
    let shared = d.shared.get_or_init(|| match d.head.op {
        OpKind::Insert | OpKind::Update | OpKind::Delete => raw_shared(d),
        OpKind::Noop => Ok(None),
        OpKind::Command => {
            let entry = d.entry()?;
            let Some((op_type, ns, extra)) = classify(entry) else {
                return Ok(None);
            };
            if is_expanded_only(op_type) {
                return Ok(None);
            }
            let (doc, token) = build(entry, op_type, &ns, &extra, Shape::DEFAULT, &NoLookup)?;
            Ok(Some(Shared {
                op_type,
                ns,
                to: extra.to,
                token,
                doc: std::sync::OnceLock::from(doc),
                encoded: std::sync::OnceLock::new(),
            }))
        }
    });
    match shared {
        Ok(sh) => Ok(sh.as_ref()),
        Err(e) => Err(e.clone()),
    }
}

/// The default-shape event of an insert, update, replacement or delete, built from the
/// entry's bytes: the documents in it (`fullDocument`, `documentKey`, `updateDescription`,
/// `lsid`) are copied as they are, never converted. The same event as [`build`] makes with
/// [`Shape::DEFAULT`], byte for byte (see the tests); converting the entry and encoding the
/// event document took most of a change event's cost.
fn raw_shared(d: &Decoded) -> Result<Option<Shared>> {
    use doc::raw::{Writer, element, elements};
    let h = &d.head;
    let b = d.raw();
    let Some(ns) = Namespace::parse(&h.ns) else {
        return Ok(None);
    };
    let bad = || errors::MongoError::internal("corrupt oplog entry");
    let o = &b[h.o.clone()];
    let o2 = h.o2.as_ref().map(|r| &b[r.clone()]);
    let id_of = |doc| id_element(doc).ok_or_else(bad);
    enum Key<'a> {
        Id(u8, &'a [u8]),
        Doc(&'a [u8]),
    }
    let (op_type, key) = match h.op {
        OpKind::Insert => (
            "insert",
            match o2 {
                Some(k) => Some(Key::Doc(k)),
                None => id_of(o)?.map(|(t, v)| Key::Id(t, v)),
            },
        ),
        OpKind::Update if h.is_replacement(b) => ("replace", o2.map(Key::Doc)),
        OpKind::Update => ("update", o2.map(Key::Doc)),
        OpKind::Delete => ("delete", id_of(o)?.map(|(t, v)| Key::Id(t, v))),
        OpKind::Command | OpKind::Noop => return Ok(None),
    };
    // The documentKey as bytes (for the event) and as a document (for the token).
    let key_bytes = key.map(|k| match k {
        Key::Doc(bytes) => bytes.to_vec(),
        Key::Id(t, v) => {
            let mut w = Writer::with_capacity(v.len() + 16);
            w.raw(b"_id", t, v);
            w.finish()
        }
    });
    let mut ident = doc! {"operationType": op_type};
    if let Some(k) = &key_bytes {
        ident.insert(
            "documentKey",
            doc::raw::bytes_to_document(k, usize::MAX).map_err(|_| bad())?,
        );
    }
    let token = ResumeTokenData::event(h.ts, h.txn_op_index, h.ui, ident);
    let (ks, tb) = token.key_string();
    let room = o.len() + key_bytes.as_ref().map_or(0, Vec::len) + 2 * ks.len() + 256;
    let mut w = Writer::with_capacity(room);
    w.begin("_id");
    w.str_with("_data", |buf| doc::keystring::hex_upper_into(buf, &ks));
    if !tb.is_empty() {
        w.binary("_typeBits", 0, &tb);
    }
    w.end();
    // `_id` is the first element: type byte, "_id", NUL, then the document.
    let token_len = {
        let (_, _, v, _) = element(w.peek(), 4).ok_or_else(bad)?;
        v.len()
    };
    w.str("operationType", op_type);
    w.timestamp("clusterTime", h.ts);
    w.datetime("wallTime", h.wall);
    if matches!(op_type, "insert" | "replace") {
        w.raw(b"fullDocument", 0x03, o);
    }
    w.begin("ns");
    w.str("db", &ns.db);
    w.str("coll", &ns.coll);
    w.end();
    if let Some(k) = &key_bytes {
        w.raw(b"documentKey", 0x03, k);
    }
    if op_type == "update" {
        // The entry's diff is the update description with `disambiguatedPaths`, which
        // only expanded events show.
        let diff = elements(o)
            .ok_or_else(bad)?
            .into_iter()
            .find(|(k, t, _)| *k == b"diff" && *t == 0x03)
            .map(|(_, _, v)| v)
            .ok_or_else(|| errors::MongoError::internal("update entry without diff"))?;
        w.begin("updateDescription");
        for (k, t, v) in elements(diff).ok_or_else(bad)? {
            if k != b"disambiguatedPaths" {
                w.raw(k, t, v);
            }
        }
        w.end();
    }
    if h.in_txn {
        if let Some(l) = &h.lsid {
            w.raw(b"lsid", 0x03, &b[l.clone()]);
        }
        if let Some(t) = h.txn_number {
            w.i64("txnNumber", t);
        }
    }
    let encoded = Encoded::with_token_len(w.finish(), token_len);
    Ok(Some(Shared {
        op_type,
        ns,
        to: None,
        token,
        doc: std::sync::OnceLock::new(),
        encoded: std::sync::OnceLock::from(std::sync::Arc::new(encoded)),
    }))
}

/// A document's `_id` element (type and value), when it has one; `None` if malformed.
fn id_element(doc: &[u8]) -> Option<Option<(u8, &[u8])>> {
    Some(
        doc::raw::elements(doc)?
            .into_iter()
            .find(|(k, ..)| *k == b"_id")
            .map(|(_, t, v)| (t, v)),
    )
}

/// Default-shape events read nothing from the database.
struct NoLookup;

impl Lookup for NoLookup {
    fn current(&self, _: &Namespace, _: &Document) -> Result<Option<Document>> {
        Ok(None)
    }
    fn preimage(&self, _: Timestamp, _: Option<u32>) -> Result<Option<Document>> {
        Ok(None)
    }
}

/// The options that shape an event document.
#[derive(Clone, Copy)]
struct Shape {
    full_document: FullDocument,
    before_change: FullDocumentBeforeChange,
    expanded: bool,
}

impl Shape {
    const DEFAULT: Shape = Shape {
        full_document: FullDocument::Default,
        before_change: FullDocumentBeforeChange::Off,
        expanded: false,
    };

    fn of(spec: &StreamSpec) -> Shape {
        Shape {
            full_document: spec.full_document,
            before_change: spec.full_document_before_change,
            expanded: spec.show_expanded_events,
        }
    }
}

fn is_expanded_only(op_type: &str) -> bool {
    matches!(
        op_type,
        "create" | "createIndexes" | "dropIndexes" | "modify"
    )
}

/// Whether a stream sees an event, and whether the event invalidates it.
fn visibility(
    op_type: &str,
    ns: &Namespace,
    to: Option<&Namespace>,
    spec: &StreamSpec,
) -> (bool, bool) {
    match op_type {
        "dropDatabase" => match &spec.target {
            Target::Database(db) => (db == &ns.db, true),
            Target::Cluster => (!internal_db(&ns.db), false),
            Target::Collection(_) => (false, false),
        },
        "rename" => {
            let hits = covers(spec, ns) || to.is_some_and(|t| covers(spec, t));
            (hits, matches!(spec.target, Target::Collection(_)))
        }
        "drop" => (
            covers(spec, ns),
            matches!(spec.target, Target::Collection(_)),
        ),
        _ => (covers(spec, ns), false),
    }
}

/// The event document and its token, as the stream's options shape it.
fn build(
    entry: &OplogEntry,
    op_type: &'static str,
    ns: &Namespace,
    extra: &Extra,
    shape: Shape,
    lookup: &dyn Lookup,
) -> Result<(Document, ResumeTokenData)> {
    let ns = ns.clone();
    let mut ev = Document::new();
    let document_key = extra.document_key.clone();
    let mut ident = doc! {"operationType": op_type};
    if let Some(k) = &document_key {
        ident.insert("documentKey", k.clone());
    } else if let Some(d) = &extra.operation_description {
        ident.insert("operationDescription", d.clone());
    }
    let uuid = if op_type == "dropDatabase" {
        None
    } else {
        entry.ui
    };
    let token = ResumeTokenData::event(entry.ts, entry.txn_op_index, uuid, ident);
    ev.insert("_id", token.to_document());
    ev.insert("operationType", op_type);
    ev.insert("clusterTime", entry.ts);
    if shape.expanded {
        if let Some(u) = uuid {
            ev.insert("collectionUUID", uuid_bson(u));
        }
    }
    ev.insert("wallTime", entry.wall);
    // fullDocument
    match op_type {
        "insert" | "replace" => {
            ev.insert("fullDocument", entry.o.clone());
        }
        "update" => match shape.full_document {
            FullDocument::Default => {}
            FullDocument::UpdateLookup => {
                let cur = match &document_key {
                    Some(k) => lookup.current(&ns, k)?,
                    None => None,
                };
                ev.insert("fullDocument", cur.map_or(Bson::Null, Bson::Document));
            }
            FullDocument::WhenAvailable | FullDocument::Required => {
                let post = post_image(entry, lookup)?;
                if post.is_none() && shape.full_document == FullDocument::Required {
                    return Err(no_image("post", entry, &ns));
                }
                ev.insert("fullDocument", post.map_or(Bson::Null, Bson::Document));
            }
        },
        _ => {}
    }
    if matches!(op_type, "update" | "replace" | "delete") {
        match shape.before_change {
            FullDocumentBeforeChange::Off => {}
            mode => {
                let pre = lookup.preimage(entry.ts, txn_index(entry))?;
                if pre.is_none() && mode == FullDocumentBeforeChange::Required {
                    return Err(no_image("pre", entry, &ns));
                }
                ev.insert(
                    "fullDocumentBeforeChange",
                    pre.map_or(Bson::Null, Bson::Document),
                );
            }
        }
    }
    if op_type == "dropDatabase" {
        ev.insert("ns", doc! {"db": &ns.db});
    } else {
        ev.insert("ns", ns_doc(&ns));
    }
    if let Some(to) = &extra.to {
        ev.insert("to", ns_doc(to));
    }
    if let Some(k) = document_key {
        ev.insert("documentKey", k);
    }
    if shape.expanded {
        if let Some(d) = &extra.operation_description {
            ev.insert("operationDescription", d.clone());
        }
    }
    if op_type == "update" {
        let delta = entry
            .o
            .get_document("diff")
            .map_err(|_| errors::MongoError::internal("update entry without diff"))
            .and_then(UpdateDelta::from_document)?;
        ev.insert(
            "updateDescription",
            delta.to_update_description(shape.expanded),
        );
    }
    if let Some(sb) = extra.state_before_change.clone() {
        ev.insert("stateBeforeChange", sb);
    }
    if entry.in_txn {
        if let Some(l) = &entry.lsid {
            ev.insert("lsid", l.clone());
        }
        if let Some(t) = entry.txn_number {
            ev.insert("txnNumber", t);
        }
    }
    Ok((ev, token))
}

/// The event, followed by an `invalidate` when it ends the stream.
fn finish(
    (ts, wall, txn_op_index): (Timestamp, bson::DateTime, i32),
    doc: Document,
    token: ResumeTokenData,
    invalidates: bool,
) -> Vec<Event> {
    let pos = EventPos {
        ts: (ts.time, ts.increment),
        txn_op_index,
        from_invalidate: false,
        fragment: None,
    };
    let mut out = vec![Event {
        pos,
        doc,
        invalidate: false,
    }];
    if invalidates {
        let mut t = token;
        t.from_invalidate = true;
        out.push(Event {
            pos: EventPos {
                from_invalidate: true,
                ..pos
            },
            doc: doc! {
                "_id": t.to_document(),
                "operationType": "invalidate",
                "clusterTime": ts,
                "wallTime": wall,
            },
            invalidate: true,
        });
    }
    out
}

fn no_image(which: &str, entry: &OplogEntry, ns: &Namespace) -> errors::MongoError {
    let what = if which == "pre" {
        "pre-image"
    } else {
        "post-image"
    };
    errors::MongoError::new(
        errors::ErrorCode::NoMatchingDocument,
        format!(
            "Change stream was configured to require a {what} for all update, delete and replace events, but the {what} was not found for event: {{ts: {}, ns: {}}}",
            entry.ts,
            ns.full()
        ),
    )
}

/// The document after an update: the pre-image with the delta applied.
fn post_image(entry: &OplogEntry, lookup: &dyn Lookup) -> Result<Option<Document>> {
    let Some(pre) = lookup.preimage(entry.ts, txn_index(entry))? else {
        return Ok(None);
    };
    let delta = entry
        .o
        .get_document("diff")
        .map_err(|_| errors::MongoError::internal("update entry without diff"))
        .and_then(UpdateDelta::from_document)?;
    Ok(Some(apply_delta(pre, &delta)))
}

/// Applies a recorded delta to a document (used for post-images).
pub fn apply_delta(mut doc: Document, delta: &UpdateDelta) -> Document {
    for (field, size) in &delta.truncated_arrays {
        if let Some(Bson::Array(a)) = doc::path::get_path(&doc, field).cloned() {
            let mut a = a;
            a.truncate(usize::try_from(*size).unwrap_or(0));
            let _ = doc::set_path(&mut doc, field, Bson::Array(a));
        }
    }
    for f in &delta.removed_fields {
        doc::remove_path(&mut doc, f);
    }
    for (k, v) in &delta.updated_fields {
        let _ = doc::set_path(&mut doc, k, v.clone());
    }
    doc
}

#[derive(Default)]
struct Extra {
    document_key: Option<Document>,
    operation_description: Option<Document>,
    to: Option<Namespace>,
    state_before_change: Option<Document>,
}

/// The event type, namespace and extra fields an entry stands for.
fn classify(e: &OplogEntry) -> Option<(&'static str, Namespace, Extra)> {
    let ns = Namespace::parse(&e.ns);
    let key_of = |d: &Document| d.get("_id").map(|id| doc! {"_id": id.clone()});
    match e.op {
        OpKind::Insert => {
            let k = e.o2.clone().or_else(|| key_of(&e.o));
            Some((
                "insert",
                ns?,
                Extra {
                    document_key: k,
                    ..Extra::default()
                },
            ))
        }
        OpKind::Update => {
            let t = if e.is_replacement() {
                "replace"
            } else {
                "update"
            };
            Some((
                t,
                ns?,
                Extra {
                    document_key: e.o2.clone(),
                    ..Extra::default()
                },
            ))
        }
        OpKind::Delete => Some((
            "delete",
            ns?,
            Extra {
                document_key: key_of(&e.o),
                ..Extra::default()
            },
        )),
        OpKind::Noop => None,
        OpKind::Command => {
            let db = ns?.db;
            let (name, _) = e.o.iter().next()?;
            let coll = |k: &str| e.o.get_str(k).ok().map(|c| Namespace::new(db.clone(), c));
            let rest = |skip: &[&str]| {
                let mut d = Document::new();
                for (k, v) in &e.o {
                    if !skip.contains(&k.as_str()) {
                        d.insert(k.clone(), v.clone());
                    }
                }
                d
            };
            match name.as_str() {
                "drop" => Some(("drop", coll("drop")?, Extra::default())),
                "dropDatabase" => Some((
                    "dropDatabase",
                    Namespace::new(db.clone(), ""),
                    Extra::default(),
                )),
                "renameCollection" => {
                    let from = Namespace::parse(e.o.get_str("renameCollection").ok()?)?;
                    let to = Namespace::parse(e.o.get_str("to").ok()?)?;
                    let mut desc = doc! {"to": ns_doc(&to)};
                    if let Some(dt) =
                        e.o.get("dropTarget")
                            .filter(|v| matches!(v, Bson::Binary(_)))
                    {
                        desc.insert("dropTarget", dt.clone());
                    }
                    Some((
                        "rename",
                        from,
                        Extra {
                            to: Some(to),
                            operation_description: Some(desc),
                            ..Extra::default()
                        },
                    ))
                }
                "create" => {
                    let mut desc = rest(&["create"]);
                    if !desc.contains_key("viewOn") {
                        let idx = desc.remove("idIndex");
                        desc.insert(
                            "idIndex",
                            idx.unwrap_or_else(|| {
                                Bson::Document(doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"})
                            }),
                        );
                    }
                    Some((
                        "create",
                        coll("create")?,
                        Extra {
                            operation_description: Some(desc),
                            ..Extra::default()
                        },
                    ))
                }
                "createIndexes" => {
                    let spec = rest(&["createIndexes"]);
                    Some((
                        "createIndexes",
                        coll("createIndexes")?,
                        Extra {
                            operation_description: Some(doc! {"indexes": [spec]}),
                            ..Extra::default()
                        },
                    ))
                }
                "dropIndexes" => {
                    let spec = e.o2.clone().unwrap_or_default();
                    Some((
                        "dropIndexes",
                        coll("dropIndexes")?,
                        Extra {
                            operation_description: Some(doc! {"indexes": [spec]}),
                            ..Extra::default()
                        },
                    ))
                }
                "collMod" => Some((
                    "modify",
                    coll("collMod")?,
                    Extra {
                        operation_description: Some(rest(&["collMod"])),
                        state_before_change: e.o2.clone(),
                        ..Extra::default()
                    },
                )),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::DateTime;
    use query::update::UpdateDelta;

    fn entry(op: OpKind, o: Document, o2: Option<Document>) -> OplogEntry {
        let mut e = OplogEntry::new(op, "db.coll", Some(bson::Uuid::new()), o);
        e.o2 = o2;
        e.ts = Timestamp {
            time: 1_700_000_000,
            increment: 7,
        };
        e.wall = DateTime::from_millis(1_700_000_000_123);
        e
    }

    fn delta() -> Document {
        let mut d = UpdateDelta::default();
        d.updated_fields.insert("a.b", 5);
        d.updated_fields.insert("s", "x");
        d.removed_fields.push("gone".into());
        d.truncated_arrays.push(("arr".into(), 2));
        doc! {"$v": 2, "diff": d.to_document()}
    }

    /// The event built from an entry's bytes is the document path's event, byte for byte.
    #[test]
    fn raw_events_equal_document_events() {
        let full = doc! {"_id": 1, "x": {"y": [1, 2]}, "s": "text"};
        let mut in_txn = entry(OpKind::Insert, full.clone(), Some(doc! {"_id": 1}));
        in_txn.in_txn = true;
        in_txn.txn_op_index = 3;
        in_txn.lsid = Some(doc! {"id": bson::Uuid::new()});
        in_txn.txn_number = Some(9);
        let entries = [
            entry(OpKind::Insert, full.clone(), None),
            entry(OpKind::Insert, full.clone(), Some(doc! {"_id": 1, "sk": 2})),
            entry(OpKind::Insert, doc! {"no_id": true}, None),
            entry(OpKind::Update, delta(), Some(doc! {"_id": "k"})),
            entry(OpKind::Update, full.clone(), Some(doc! {"_id": 1})),
            entry(
                OpKind::Delete,
                doc! {"_id": bson::oid::ObjectId::new()},
                None,
            ),
            in_txn,
        ];
        for e in entries {
            let (op_type, ns, extra) = classify(&e).unwrap();
            let (want, token) = build(&e, op_type, &ns, &extra, Shape::DEFAULT, &NoLookup).unwrap();
            let d = Decoded::new(e.to_bytes().into()).unwrap();
            let sh = shared_event(&d).unwrap().unwrap();
            assert_eq!(sh.op_type(), op_type);
            assert_eq!(sh.token, token);
            let enc = sh.encoded();
            assert_eq!(enc.bytes, bson::to_vec(&want).unwrap(), "{op_type}: {want}");
            assert_eq!(sh.doc(), &want);
            assert_eq!(enc.token(), &token.to_document());
            assert_eq!(enc.token_bytes, doc::encoded_len(&token.to_document()) + 22);
        }
        let noop = entry(OpKind::Noop, doc! {"msg": "x"}, None);
        let d = Decoded::new(noop.to_bytes().into()).unwrap();
        assert!(shared_event(&d).unwrap().is_none());
    }
}
