// routing: push delivery of change events through the router's predicate index, compared
// with the same pipelines reading history; inbox overflow, fallback and return to push.

use bson::{Bson, Document, Timestamp, doc};
use futures_util::TryStreamExt;
use mongodb::Database;

use crate::cmd_error;

/// Opens a change stream with `aggregate` on `coll` (1 for a database stream) and returns
/// its cursor id and first batch.
async fn open(db: &Database, coll: Bson, cmd: Document) -> (i64, Vec<Document>) {
    let mut agg = doc! {"aggregate": coll};
    agg.extend(cmd);
    agg.insert("cursor", doc! {});
    let r = db.run_command(agg).await.unwrap();
    let c = r.get_document("cursor").unwrap();
    (
        c.get_i64("id").unwrap(),
        docs(c.get_array("firstBatch").unwrap()),
    )
}

fn docs(a: &[Bson]) -> Vec<Document> {
    a.iter().map(|b| b.as_document().unwrap().clone()).collect()
}

/// Reads a stream until a `getMore` comes back empty.
async fn drain(db: &Database, coll: &str, id: i64, mut got: Vec<Document>) -> Vec<Document> {
    loop {
        let r = db
            .run_command(doc! {"getMore": id, "collection": coll, "maxTimeMS": 300})
            .await
            .unwrap();
        let batch = docs(
            r.get_document("cursor")
                .unwrap()
                .get_array("nextBatch")
                .unwrap(),
        );
        if batch.is_empty() {
            return got;
        }
        got.extend(batch);
    }
}

/// The `$currentOp` status of a change stream's cursor.
async fn status(db: &Database, id: i64) -> Document {
    let admin = db.client().database("admin");
    let ops: Vec<Document> = admin
        .aggregate(vec![
            doc! {"$currentOp": {"idleCursors": true, "idleSessions": false}},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    ops.into_iter()
        .find_map(|d| {
            let c = d.get_document("cursor").ok()?;
            (c.get_i64("cursorId") == Ok(id))
                .then(|| c.get_document("changeStream").ok().cloned())?
        })
        .expect("the stream's cursor in $currentOp")
}

struct Case {
    name: &'static str,
    coll: Bson,
    spec: Document,
    pipeline: Vec<Document>,
    collation: Option<Document>,
}

fn case(name: &'static str, spec: Document, pipeline: Vec<Document>) -> Case {
    Case {
        name,
        coll: Bson::String("r".into()),
        spec,
        pipeline,
        collation: None,
    }
}

fn command(c: &Case, extra: Document) -> Document {
    let mut spec = c.spec.clone();
    spec.extend(extra);
    let mut pipeline = vec![Bson::Document(doc! {"$changeStream": spec})];
    pipeline.extend(c.pipeline.iter().cloned().map(Bson::Document));
    let mut cmd = doc! {"pipeline": pipeline};
    if let Some(coll) = &c.collation {
        cmd.insert("collation", coll.clone());
    }
    cmd
}

/// Every kind of pipeline the router indexes, and kinds it cannot: each stream, pushed
/// its events live, receives exactly what the same pipeline reads from history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_events_are_exactly_what_each_pipeline_admits() {
    let s = testkit::spawn().await;
    let db = s.client.database("rt");
    db.create_collection("r").await.unwrap();
    db.create_collection("other").await.unwrap();
    let m = |f: Document| vec![doc! {"$match": f}];
    let mut cases = vec![
        case("eq", doc! {}, m(doc! {"fullDocument.k": 3})),
        case(
            "in, mixed numeric types",
            doc! {},
            m(doc! {"fullDocument.k": {"$in": [1, 2.0]}}),
        ),
        case("eq double on int", doc! {}, m(doc! {"fullDocument.k": 5.0})),
        case("documentKey", doc! {}, m(doc! {"documentKey._id": 5})),
        case(
            "operationType",
            doc! {},
            m(doc! {"operationType": "delete"}),
        ),
        case(
            "operationType $in and documentKey $in",
            doc! {},
            m(
                doc! {"operationType": {"$in": ["update", "replace"]}, "documentKey._id": {"$in": [3, 7]}},
            ),
        ),
        case(
            "updatedFields",
            doc! {},
            m(doc! {"updateDescription.updatedFields.k": 40}),
        ),
        case("array element", doc! {}, m(doc! {"fullDocument.tags": "x"})),
        case(
            "$or (unindexed)",
            doc! {},
            m(doc! {"$or": [{"fullDocument.k": 1}, {"fullDocument.k": 9}]}),
        ),
        case(
            "range (unindexed)",
            doc! {},
            m(doc! {"fullDocument.k": {"$gt": 7}}),
        ),
        case(
            "null (unindexed)",
            doc! {},
            m(doc! {"fullDocument.k": null}),
        ),
        case(
            "$project first (unindexed)",
            doc! {},
            vec![
                doc! {"$project": {"fullDocument.k": 1, "operationType": 1, "documentKey": 1}},
                doc! {"$match": {"fullDocument.k": 2}},
            ],
        ),
        case(
            "two $match stages",
            doc! {},
            vec![
                doc! {"$match": {"fullDocument.k": 3}},
                doc! {"$match": {"fullDocument.name": "A"}},
            ],
        ),
        case(
            "updateLookup on a looked-up field",
            doc! {"fullDocument": "updateLookup"},
            m(doc! {"fullDocument.k": 40}),
        ),
        case(
            "pre-images and documentKey",
            doc! {"fullDocumentBeforeChange": "whenAvailable"},
            m(doc! {"documentKey._id": {"$in": [4, 6]}}),
        ),
        case("no pipeline", doc! {}, vec![]),
        Case {
            name: "database stream on ns.coll",
            coll: Bson::Int32(1),
            spec: doc! {},
            pipeline: m(doc! {"ns.coll": "other"}),
            collation: None,
        },
        Case {
            name: "case-insensitive collation",
            coll: Bson::String("r".into()),
            spec: doc! {},
            pipeline: m(doc! {"fullDocument.name": "a"}),
            collation: Some(doc! {"locale": "en", "strength": 2}),
        },
    ];
    let cluster = Case {
        name: "cluster stream",
        coll: Bson::Int32(1),
        spec: doc! {"allChangesForCluster": true},
        pipeline: m(doc! {"documentKey._id": 0}),
        collation: None,
    };
    db.run_command(doc! {"collMod": "r", "changeStreamPreAndPostImages": {"enabled": true}})
        .await
        .unwrap();
    let t0 = db
        .run_command(doc! {"ping": 1})
        .await
        .unwrap()
        .get_timestamp("operationTime")
        .unwrap();
    let admin = s.client.database("admin");
    let mut live = Vec::new();
    for c in &cases {
        live.push(open(&db, c.coll.clone(), command(c, doc! {})).await.0);
    }
    let cluster_live = open(&admin, cluster.coll.clone(), command(&cluster, doc! {}))
        .await
        .0;

    let r = db.collection::<Document>("r");
    let names = ["a", "A", "b"];
    r.insert_many((0..40).map(|i| {
        let mut d = doc! {"_id": i, "k": i % 10, "name": names[i as usize % 3]};
        if i % 3 == 0 {
            d.insert("tags", vec!["x", "y"]);
        } else {
            d.insert("tags", vec!["z"]);
        }
        if i == 39 {
            d.remove("k");
        }
        d
    }))
    .await
    .unwrap();
    r.update_many(doc! {"k": 4}, doc! {"$set": {"k": 40}})
        .await
        .unwrap();
    r.update_one(doc! {"_id": 7}, doc! {"$set": {"v": 1}})
        .await
        .unwrap();
    r.replace_one(doc! {"_id": 3}, doc! {"k": 3, "name": "a"})
        .await
        .unwrap();
    r.delete_many(doc! {"k": 1}).await.unwrap();
    db.collection::<Document>("other")
        .insert_one(doc! {"_id": 0, "k": 3})
        .await
        .unwrap();
    let mut session = s.client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    r.insert_one(doc! {"_id": 100, "k": 3, "name": "A"})
        .session(&mut session)
        .await
        .unwrap();
    r.update_one(doc! {"_id": 6}, doc! {"$set": {"k": 2}})
        .session(&mut session)
        .await
        .unwrap();
    session.commit_transaction().await.unwrap();

    // The live streams were attached before the writes: their events are in their inboxes.
    let st = status(&db, live[0]).await;
    assert_eq!(st.get_bool("pushed"), Ok(true), "{st}");
    assert!(st.get_i64("inboxEntries").unwrap() > 0, "{st}");

    let coll_name = |c: &Case| match &c.coll {
        Bson::String(s) => s.clone(),
        _ => "$cmd.aggregate".to_string(),
    };
    cases.push(cluster);
    live.push(cluster_live);
    for (c, id) in cases.iter().zip(live) {
        let on = if c.name == "cluster stream" {
            &admin
        } else {
            &db
        };
        let pushed = drain(on, &coll_name(c), id, Vec::new()).await;
        let (rid, first) = open(
            on,
            c.coll.clone(),
            command(c, doc! {"startAtOperationTime": Timestamp { time: t0.time, increment: t0.increment + 1 }}),
        )
        .await;
        let replayed = drain(on, &coll_name(c), rid, first).await;
        assert!(!pushed.is_empty(), "{}: no events", c.name);
        assert!(
            pushed == replayed,
            "{}: pushed {:?}, replayed {:?}",
            c.name,
            summary(&pushed),
            summary(&replayed)
        );
    }
}

/// Each event's operation type and document key, to show a mismatch.
fn summary(events: &[Document]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e.get_str("operationType").unwrap_or("?"),
                e.get("documentKey")
                    .map_or(String::new(), ToString::to_string)
            )
        })
        .collect()
}

/// The events' `documentKey._id`s, as integers.
fn ids(events: &[Document]) -> Vec<i64> {
    events
        .iter()
        .map(|e| {
            let k = e.get_document("documentKey").unwrap();
            match k.get("_id").unwrap() {
                Bson::Int32(i) => i64::from(*i),
                Bson::Int64(i) => *i,
                other => panic!("unexpected _id {other}"),
            }
        })
        .collect()
}

/// More documents than a stream's inbox holds, `_id` 0 up, inserted 1,000 at a time, each
/// with `pad`.
async fn overfill(c: &mongodb::Collection<Document>, pad: &str) -> i64 {
    let n = changestream::route::INBOX_ENTRIES as i64 + 2000;
    for chunk in (0..n).step_by(1000) {
        c.insert_many((chunk..(chunk + 1000).min(n)).map(|i| doc! {"_id": i, "pad": pad}))
            .await
            .unwrap();
    }
    n
}

/// A stream that does not read while more events arrive than its inbox holds falls back to
/// reading history, loses and repeats nothing, and is pushed again once caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_stream_reads_history_then_returns_to_push() {
    let s = testkit::spawn().await;
    let db = s.client.database("rt");
    db.create_collection("o").await.unwrap();
    let (id, _) = open(&db, "o".into(), doc! {"pipeline": [{"$changeStream": {}}]}).await;
    let st = status(&db, id).await;
    assert_eq!(st.get_bool("pushed"), Ok(true), "{st}");
    let c = db.collection::<Document>("o");
    let n = overfill(&c, "").await;
    let st = status(&db, id).await;
    assert_eq!(st.get_bool("pushed"), Ok(false), "{st}");
    assert_eq!(st.get_i64("lagEntries"), Ok(n), "{st}");
    let got = drain(&db, "o", id, Vec::new()).await;
    assert_eq!(ids(&got), (0..n).collect::<Vec<_>>());
    let st = status(&db, id).await;
    assert_eq!(st.get_bool("pushed"), Ok(true), "{st}");
    c.insert_one(doc! {"_id": -1}).await.unwrap();
    let got = drain(&db, "o", id, Vec::new()).await;
    assert_eq!(ids(&got), vec![-1]);
}

/// A stream that overflowed, and whose position truncation then passed, gets
/// ChangeStreamHistoryLost rather than a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowed_stream_past_truncation_loses_history() {
    let s = testkit::spawn_with(|c| c.oplog_size_mb = 1).await;
    let db = s.client.database("rt");
    db.create_collection("t").await.unwrap();
    let (id, _) = open(&db, "t".into(), doc! {"pipeline": [{"$changeStream": {}}]}).await;
    overfill(&db.collection::<Document>("t"), &"p".repeat(300)).await;
    let (code, _) = cmd_error(
        &db,
        doc! {"getMore": id, "collection": "t", "maxTimeMS": 1000},
    )
    .await;
    assert_eq!(code, 286);
}
