//! Eddy embedded: a data directory opened in-process, with no server and no socket.
//!
//! ```no_run
//! # async fn demo() -> Result<(), eddy::Error> {
//! use bson::doc;
//! let db = eddy::Eddy::open("./eddy-data").await?;
//! let orders = db.collection("orders");
//! let mut stream = orders.watch(vec![doc! {"$match": {"operationType": "insert"}}], Default::default()).await?;
//! orders.insert_one(doc! {"_id": 1, "total": 42}).await?;
//! if let Some(event) = stream.next().await? {
//!     println!("{event}, resume with {:?}", stream.resume_token());
//! }
//! # Ok(()) }
//! ```
//!
//! It is the same engine as the `eddy` server: the calls below become the very commands a
//! driver sends (`insert`, `find`, `aggregate` with `$changeStream`, `getMore`, ...) and run
//! through the server's command layer against the same storage. So the events and their
//! resume tokens are the server's, byte for byte: a process can stop using the library,
//! start `eddy --dbpath` on the same directory, and resume its stream with a driver from
//! the last token (and the other way round). One process at a time opens a directory.
//!
//! Every call is `async` and needs a Tokio runtime (multi-threaded: long operations move
//! off the runtime's threads with `block_in_place`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bson::{Bson, Document, Timestamp, doc};
use commands::{ConnInfo, ServerConfig, ServerCtx};
use tokio::sync::Mutex;

/// An error, as the server would have replied it: `code`, `code_name`, `message`.
pub type Error = errors::MongoError;

/// A result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// An open data directory.
pub struct Eddy {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Arc<ServerCtx>,
    conn: Mutex<ConnInfo>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ctx.shutdown.send_replace(true);
        self.ctx.store.close();
    }
}

impl Inner {
    /// Runs a command on `db` and returns its whole reply, or its error.
    async fn run(&self, db: &str, cmd: Document) -> Result<Document> {
        let (doc, events) = self.run_split(db, cmd).await?;
        if events.is_empty() {
            return Ok(doc);
        }
        // Put a change stream's events where a driver finds them.
        let mut doc = doc;
        if let Ok(c) = doc.get_document_mut("cursor") {
            let key = if c.contains_key("nextBatch") {
                "nextBatch"
            } else {
                "firstBatch"
            };
            c.insert(
                key,
                events.into_iter().map(Bson::Document).collect::<Vec<_>>(),
            );
        }
        Ok(doc)
    }

    /// Runs a command on `db`: its reply, and apart from it a change stream's events
    /// (decoded once from the bytes the server would have sent).
    async fn run_split(&self, db: &str, mut cmd: Document) -> Result<(Document, Vec<Document>)> {
        cmd.insert("$db", db);
        let mut conn = self.conn.lock().await;
        let reply = commands::handle(&self.ctx, &mut conn, cmd).await;
        drop(conn);
        let doc = reply.doc;
        if doc.get_f64("ok") == Ok(1.0) {
            let mut events = Vec::new();
            if let Some((_, batch)) = reply.batch {
                events.reserve(batch.len());
                for e in batch {
                    events.push(Document::from_reader(e.bytes.as_slice()).map_err(|e| {
                        Error::with_code(8, format!("cannot decode a change event: {e}"))
                    })?);
                }
            }
            return Ok((doc, events));
        }
        let code = doc.get_i32("code").unwrap_or(8);
        let mut e = Error::with_code(code, doc.get_str("errmsg").unwrap_or("command failed"));
        if let Ok(name) = doc.get_str("codeName") {
            e.code_name = name.to_string();
        }
        Err(e)
    }
}

impl Eddy {
    /// Opens (creating it if needed) the data directory at `path`, recovering it as the
    /// server would after a crash.
    ///
    /// # Errors
    /// The directory is in use by another process, unreadable, or damaged.
    pub async fn open(path: impl AsRef<Path>) -> Result<Eddy> {
        let path = path.as_ref();
        let opts = storage::StoreOptions {
            oplog_size_bytes: 1024 * 1024 * 1024,
            ..storage::StoreOptions::default()
        };
        let store = storage::Store::open(path, opts)
            .map_err(|e| Error::with_code(8, format!("cannot open {}: {e}", path.display())))?;
        let config = ServerConfig {
            advertised: "embedded".into(),
            repl_set: "rs0".into(),
            argv: vec!["eddy-embedded".into()],
            parsed: doc! {"storage": {"dbPath": path.display().to_string()}},
            port: 0,
            oplog_size_bytes: 1024 * 1024 * 1024,
            auth: false,
            key: None,
            max_conns: 1,
        };
        let ctx = ServerCtx::new(store, config, Document::new(), None);
        let conn = ctx.connect("embedded".into());
        Ok(Eddy {
            inner: Arc::new(Inner {
                ctx,
                conn: Mutex::new(conn),
            }),
        })
    }

    /// A database.
    pub fn database(&self, name: &str) -> Database {
        Database {
            inner: self.inner.clone(),
            name: name.to_string(),
        }
    }

    /// A collection of the `test` database (as drivers default to it).
    pub fn collection(&self, name: &str) -> Collection {
        self.database("test").collection(name)
    }

    /// Runs any command on `db`, as `db.runCommand` would.
    ///
    /// # Errors
    /// The command's error.
    pub async fn run_command(&self, db: &str, cmd: Document) -> Result<Document> {
        self.inner.run(db, cmd).await
    }
}

/// A database of an open directory.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
    name: String,
}

impl Database {
    /// A collection of this database.
    pub fn collection(&self, name: &str) -> Collection {
        Collection {
            inner: self.inner.clone(),
            db: self.name.clone(),
            name: name.to_string(),
        }
    }

    /// Runs a command on this database.
    ///
    /// # Errors
    /// The command's error.
    pub async fn run_command(&self, cmd: Document) -> Result<Document> {
        self.inner.run(&self.name, cmd).await
    }

    /// A change stream on every collection of the database.
    ///
    /// # Errors
    /// As the `aggregate` that opens it (a bad pipeline, a token no longer in history).
    pub async fn watch(
        &self,
        pipeline: Vec<Document>,
        options: WatchOptions,
    ) -> Result<ChangeStream> {
        ChangeStream::open(
            self.inner.clone(),
            &self.name,
            Bson::Int32(1),
            pipeline,
            options,
        )
        .await
    }
}

/// What an update did.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateResult {
    pub matched: i64,
    pub modified: i64,
    pub upserted_id: Option<Bson>,
}

/// A collection.
#[derive(Clone)]
pub struct Collection {
    inner: Arc<Inner>,
    db: String,
    name: String,
}

fn count(reply: &Document, key: &str) -> i64 {
    commands::util::get_i64(reply, key).unwrap_or(0)
}

/// `document` with an `_id` first, a new ObjectId when it had none (as drivers add one).
fn with_id(document: Document) -> Document {
    if document.contains_key("_id") {
        return document;
    }
    let mut with = doc! {"_id": bson::oid::ObjectId::new()};
    with.extend(document);
    with
}

/// A write's `writeErrors`, as the error of the first.
fn write_result(reply: Document) -> Result<Document> {
    if let Ok(errs) = reply.get_array("writeErrors") {
        if let Some(Bson::Document(e)) = errs.first() {
            let code = e.get_i32("code").unwrap_or(8);
            return Err(Error::with_code(
                code,
                e.get_str("errmsg").unwrap_or("write failed"),
            ));
        }
    }
    if let Ok(e) = reply.get_document("writeConcernError") {
        let code = e.get_i32("code").unwrap_or(8);
        return Err(Error::with_code(
            code,
            e.get_str("errmsg").unwrap_or("write concern failed"),
        ));
    }
    Ok(reply)
}

impl Collection {
    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, cmd: Document) -> Result<Document> {
        self.inner.run(&self.db, cmd).await
    }

    /// Inserts a document (an `_id` is added when it has none) and returns its `_id`.
    ///
    /// # Errors
    /// DuplicateKey, validation, or a document the server refuses.
    pub async fn insert_one(&self, document: Document) -> Result<Bson> {
        let document = with_id(document);
        let id = document.get("_id").cloned().unwrap_or(Bson::Null);
        write_result(
            self.run(doc! {"insert": &self.name, "documents": [document]})
                .await?,
        )?;
        Ok(id)
    }

    /// Inserts documents in order in one command; returns how many were inserted.
    ///
    /// # Errors
    /// The first write error (the documents before it are inserted).
    pub async fn insert_many(&self, documents: Vec<Document>) -> Result<i64> {
        let docs: Vec<Bson> = documents
            .into_iter()
            .map(|d| Bson::Document(with_id(d)))
            .collect();
        let r = write_result(
            self.run(doc! {"insert": &self.name, "documents": docs})
                .await?,
        )?;
        Ok(count(&r, "n"))
    }

    /// The documents matching `filter`, all of them (with `options` as `find` takes them:
    /// `sort`, `projection`, `limit`, `skip`, `hint`, `collation`...).
    ///
    /// # Errors
    /// A bad filter or option.
    pub async fn find(&self, filter: Document, options: Option<Document>) -> Result<Vec<Document>> {
        let mut cmd = doc! {"find": &self.name, "filter": filter};
        if let Some(o) = options {
            cmd.extend(o);
        }
        self.drain(cmd).await
    }

    /// Runs a command that opens a cursor and reads the cursor to its end.
    async fn drain(&self, cmd: Document) -> Result<Vec<Document>> {
        let mut reply = self.run(cmd).await?;
        let mut out = Vec::new();
        let mut key = "firstBatch";
        loop {
            let cursor = reply.get_document("cursor").cloned().unwrap_or_default();
            for d in cursor.get_array(key).cloned().unwrap_or_default() {
                if let Bson::Document(d) = d {
                    out.push(d);
                }
            }
            let id = cursor.get_i64("id").unwrap_or(0);
            if id == 0 {
                return Ok(out);
            }
            reply = self
                .run(doc! {"getMore": id, "collection": &self.name})
                .await?;
            key = "nextBatch";
        }
    }

    /// The first document matching `filter`.
    ///
    /// # Errors
    /// A bad filter.
    pub async fn find_one(&self, filter: Document) -> Result<Option<Document>> {
        Ok(self
            .find(filter, Some(doc! {"limit": 1, "singleBatch": true}))
            .await?
            .into_iter()
            .next())
    }

    async fn update(
        &self,
        filter: Document,
        u: Bson,
        multi: bool,
        upsert: bool,
    ) -> Result<UpdateResult> {
        let r = write_result(
            self.run(doc! {"update": &self.name, "updates": [{"q": filter, "u": u, "multi": multi, "upsert": upsert}]})
                .await?,
        )?;
        let upserted_id = r
            .get_array("upserted")
            .ok()
            .and_then(|a| a.first())
            .and_then(|u| u.as_document())
            .and_then(|u| u.get("_id").cloned());
        let n = count(&r, "n");
        Ok(UpdateResult {
            matched: if upserted_id.is_some() { n - 1 } else { n },
            modified: count(&r, "nModified"),
            upserted_id,
        })
    }

    /// Updates the first document matching `filter` with update operators (`$set`, ...).
    ///
    /// # Errors
    /// A bad filter or update.
    pub async fn update_one(&self, filter: Document, update: Document) -> Result<UpdateResult> {
        self.update(filter, Bson::Document(update), false, false)
            .await
    }

    /// Updates every document matching `filter`.
    ///
    /// # Errors
    /// A bad filter or update.
    pub async fn update_many(&self, filter: Document, update: Document) -> Result<UpdateResult> {
        self.update(filter, Bson::Document(update), true, false)
            .await
    }

    /// Replaces the first document matching `filter` (inserting it with `upsert`).
    ///
    /// # Errors
    /// A bad filter, or a replacement with update operators.
    pub async fn replace_one(
        &self,
        filter: Document,
        replacement: Document,
        upsert: bool,
    ) -> Result<UpdateResult> {
        self.update(filter, Bson::Document(replacement), false, upsert)
            .await
    }

    async fn delete(&self, filter: Document, limit: i32) -> Result<i64> {
        let r = write_result(
            self.run(doc! {"delete": &self.name, "deletes": [{"q": filter, "limit": limit}]})
                .await?,
        )?;
        Ok(count(&r, "n"))
    }

    /// Deletes the first document matching `filter`; returns how many were deleted.
    ///
    /// # Errors
    /// A bad filter.
    pub async fn delete_one(&self, filter: Document) -> Result<i64> {
        self.delete(filter, 1).await
    }

    /// Deletes every document matching `filter`.
    ///
    /// # Errors
    /// A bad filter.
    pub async fn delete_many(&self, filter: Document) -> Result<i64> {
        self.delete(filter, 0).await
    }

    /// How many documents match `filter`.
    ///
    /// # Errors
    /// A bad filter.
    pub async fn count_documents(&self, filter: Document) -> Result<i64> {
        let r = self
            .run(doc! {"aggregate": &self.name, "pipeline": [{"$match": filter}, {"$group": {"_id": 1, "n": {"$sum": 1}}}], "cursor": {}})
            .await?;
        Ok(r.get_document("cursor")
            .ok()
            .and_then(|c| c.get_array("firstBatch").ok())
            .and_then(|b| b.first())
            .and_then(|d| d.as_document())
            .map_or(0, |d| count(d, "n")))
    }

    /// Runs an aggregation pipeline and returns all its results.
    ///
    /// # Errors
    /// A bad pipeline.
    pub async fn aggregate(&self, pipeline: Vec<Document>) -> Result<Vec<Document>> {
        self.drain(doc! {"aggregate": &self.name, "pipeline": pipeline, "cursor": {}})
            .await
    }

    /// Builds an index on `keys` (`{field: 1}`, `{a: 1, b: -1}`, `{t: "text"}`...), with
    /// `options` such as `{unique: true}`; returns its name.
    ///
    /// # Errors
    /// A bad key pattern or option, or existing documents that break `unique`.
    pub async fn create_index(&self, keys: Document, options: Option<Document>) -> Result<String> {
        let name: String = keys
            .iter()
            .map(|(k, v)| match v {
                Bson::String(s) => format!("{k}_{s}"),
                other => format!("{k}_{}", other.as_f64().map_or(1, |x| x as i64)),
            })
            .collect::<Vec<_>>()
            .join("_");
        let mut spec = doc! {"key": keys, "name": &name};
        if let Some(o) = options {
            spec.extend(o);
        }
        let name = spec.get_str("name").unwrap_or(&name).to_string();
        self.run(doc! {"createIndexes": &self.name, "indexes": [spec]})
            .await?;
        Ok(name)
    }

    /// Drops the collection.
    ///
    /// # Errors
    /// On storage failure.
    pub async fn drop(&self) -> Result<()> {
        match self.run(doc! {"drop": &self.name}).await {
            Ok(_) => Ok(()),
            Err(e) if e.code == 26 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A change stream on this collection: `pipeline` after the `$changeStream` stage.
    ///
    /// # Errors
    /// As the `aggregate` that opens it (a bad pipeline, a token no longer in history).
    pub async fn watch(
        &self,
        pipeline: Vec<Document>,
        options: WatchOptions,
    ) -> Result<ChangeStream> {
        ChangeStream::open(
            self.inner.clone(),
            &self.db,
            Bson::String(self.name.clone()),
            pipeline,
            options,
        )
        .await
    }
}

/// How a change stream starts and what its events hold (the `$changeStream` options).
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// `default`, `updateLookup`, `whenAvailable` or `required`.
    pub full_document: Option<String>,
    /// `off`, `whenAvailable` or `required`.
    pub full_document_before_change: Option<String>,
    pub resume_after: Option<Document>,
    pub start_after: Option<Document>,
    pub start_at_operation_time: Option<Timestamp>,
    pub show_expanded_events: bool,
    /// How long [`ChangeStream::next`]'s `getMore` waits on the server side before it
    /// asks again (1 s).
    pub max_await: Option<Duration>,
}

/// A change stream. Its events are the server's, and so are its resume tokens.
pub struct ChangeStream {
    inner: Arc<Inner>,
    db: String,
    coll: String,
    id: i64,
    buffered: std::collections::VecDeque<Document>,
    token: Option<Document>,
    max_await: Duration,
}

impl ChangeStream {
    async fn open(
        inner: Arc<Inner>,
        db: &str,
        target: Bson,
        pipeline: Vec<Document>,
        o: WatchOptions,
    ) -> Result<ChangeStream> {
        let mut spec = Document::new();
        if let Some(f) = &o.full_document {
            spec.insert("fullDocument", f);
        }
        if let Some(f) = &o.full_document_before_change {
            spec.insert("fullDocumentBeforeChange", f);
        }
        if let Some(t) = &o.resume_after {
            spec.insert("resumeAfter", t.clone());
        }
        if let Some(t) = &o.start_after {
            spec.insert("startAfter", t.clone());
        }
        if let Some(t) = o.start_at_operation_time {
            spec.insert("startAtOperationTime", t);
        }
        if o.show_expanded_events {
            spec.insert("showExpandedEvents", true);
        }
        let mut stages = vec![Bson::Document(doc! {"$changeStream": spec})];
        stages.extend(pipeline.into_iter().map(Bson::Document));
        let (reply, events) = inner
            .run_split(
                db,
                doc! {"aggregate": target, "pipeline": stages, "cursor": {}},
            )
            .await?;
        let cursor = reply.get_document("cursor").cloned().unwrap_or_default();
        let ns = cursor.get_str("ns").unwrap_or("").to_string();
        let mut s = ChangeStream {
            inner,
            db: db.to_string(),
            coll: ns
                .split_once('.')
                .map_or(ns.clone(), |(_, c)| c.to_string()),
            id: cursor.get_i64("id").unwrap_or(0),
            buffered: Default::default(),
            token: None,
            max_await: o.max_await.unwrap_or(Duration::from_secs(1)),
        };
        s.take(&cursor, events);
        Ok(s)
    }

    fn take(&mut self, cursor: &Document, events: Vec<Document>) {
        self.buffered.extend(events);
        if self.buffered.is_empty() {
            if let Ok(t) = cursor.get_document("postBatchResumeToken") {
                self.token = Some(t.clone());
            }
        }
        self.id = cursor.get_i64("id").unwrap_or(0);
    }

    /// The next event, waiting for one; `None` once the stream is over (after an
    /// invalidate).
    ///
    /// # Errors
    /// As the server's `getMore` (history lost, the stream's pipeline failing).
    pub async fn next(&mut self) -> Result<Option<Document>> {
        loop {
            if let Some(ev) = self.try_next().await? {
                return Ok(Some(ev));
            }
            if self.id == 0 {
                return Ok(None);
            }
        }
    }

    /// The next event if one is there after at most one wait of `max_await`.
    ///
    /// # Errors
    /// As the server's `getMore`.
    pub async fn try_next(&mut self) -> Result<Option<Document>> {
        if self.buffered.is_empty() && self.id != 0 {
            let ms = i64::try_from(self.max_await.as_millis()).unwrap_or(i64::MAX);
            let (reply, events) = self
                .inner
                .run_split(
                    &self.db,
                    doc! {"getMore": self.id, "collection": &self.coll, "maxTimeMS": ms},
                )
                .await?;
            let cursor = reply.get_document("cursor").cloned().unwrap_or_default();
            self.take(&cursor, events);
        }
        let ev = self.buffered.pop_front();
        if let Some(e) = &ev {
            self.token = e.get_document("_id").ok().cloned();
        }
        Ok(ev)
    }

    /// The token to resume after: the last event returned, or the last empty batch's
    /// `postBatchResumeToken`.
    pub fn resume_token(&self) -> Option<&Document> {
        self.token.as_ref()
    }

    /// Closes the stream's cursor.
    pub async fn close(mut self) {
        if self.id != 0 {
            let _ = self
                .inner
                .run(
                    &self.db,
                    doc! {"killCursors": &self.coll, "cursors": [self.id]},
                )
                .await;
            self.id = 0;
        }
    }
}
