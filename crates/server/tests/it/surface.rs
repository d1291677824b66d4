// surface: capped collections with tailable cursors, TTL indexes, and index options that
// are honoured or refused (never accepted and ignored).

use std::time::Duration;

use bson::{Bson, DateTime, Document, doc};
use futures_util::StreamExt;
use mongodb::Database;
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType};

use crate::{cmd_error, cursor_batch, doc_num};

async fn run(db: &Database, cmd: Document) -> Document {
    db.run_command(cmd).await.unwrap()
}

fn ids(batch: &[Bson]) -> Vec<i64> {
    batch
        .iter()
        .map(|d| doc_num(d.as_document().unwrap(), "_id"))
        .collect()
}

async fn next_event(
    cs: &mut mongodb::change_stream::ChangeStream<ChangeStreamEvent<Document>>,
) -> (OperationType, Bson) {
    let e = tokio::time::timeout(Duration::from_secs(10), cs.next())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .unwrap();
    let id = e.document_key.unwrap().get("_id").unwrap().clone();
    (e.operation_type, id)
}

/// Source: https://www.mongodb.com/docs/v8.0/core/capped-collections/ ("if a capped
/// collection reaches its size or document limit, the oldest documents are removed to make
/// room"; "capped collections guarantee insertion order"; a size of 4096 or less gives a
/// cap of 4096 bytes, a larger one is raised to a multiple of 256) and
/// https://www.mongodb.com/docs/v8.0/reference/command/collStats/ (`capped`, `max`,
/// `maxSize`). The issue's own case: `capped: true, size: 4096, max: 3`, then 5 inserts.
#[tokio::test]
async fn capped_collections_keep_their_bounds() {
    let s = testkit::spawn().await;
    let db = s.client.database("capped");
    run(
        &db,
        doc! {"create": "c", "capped": true, "size": 4096, "max": 3},
    )
    .await;
    let c = db.collection::<Document>("c");
    let mut cs = c.watch().await.unwrap();
    for i in 0..5 {
        c.insert_one(doc! {"_id": i}).await.unwrap();
    }
    let r = run(&db, doc! {"find": "c"}).await;
    assert_eq!(ids(cursor_batch(&r, "firstBatch")), vec![2, 3, 4]);
    let st = run(&db, doc! {"collStats": "c"}).await;
    assert!(st.get_bool("capped").unwrap(), "{st}");
    assert_eq!(
        (
            doc_num(&st, "count"),
            doc_num(&st, "max"),
            doc_num(&st, "maxSize")
        ),
        (3, 3, 4096)
    );
    // The oldest documents go in the commit that inserts past the bound, each logged as a
    // delete: change streams see insert 3, delete 0, insert 4, delete 1.
    let mut seen = Vec::new();
    for _ in 0..7 {
        seen.push(next_event(&mut cs).await);
    }
    let want = [
        (OperationType::Insert, 0),
        (OperationType::Insert, 1),
        (OperationType::Insert, 2),
        (OperationType::Insert, 3),
        (OperationType::Delete, 0),
        (OperationType::Insert, 4),
        (OperationType::Delete, 1),
    ];
    for (got, want) in seen.iter().zip(want) {
        assert_eq!(
            (got.0.clone(), got.1.clone()),
            (want.0, Bson::Int32(want.1))
        );
    }
    let r = run(&db, doc! {"listCollections": 1, "filter": {"name": "c"}}).await;
    let opts = cursor_batch(&r, "firstBatch")[0]
        .as_document()
        .unwrap()
        .get_document("options")
        .unwrap()
        .clone();
    assert_eq!(opts, doc! {"capped": true, "size": 4096i64, "max": 3i64});

    // The size bound: 100 documents of about 120 bytes in 5000 (raised to 5120) bytes.
    run(&db, doc! {"create": "s", "capped": true, "size": 5000}).await;
    let sc = db.collection::<Document>("s");
    for i in 0..100 {
        sc.insert_one(doc! {"_id": i, "pad": "x".repeat(100)})
            .await
            .unwrap();
    }
    let st = run(&db, doc! {"collStats": "s"}).await;
    assert_eq!(doc_num(&st, "maxSize"), 5120);
    assert!(doc_num(&st, "size") <= 5120, "{st}");
    let r = run(&db, doc! {"find": "s", "batchSize": 1000}).await;
    let kept = ids(cursor_batch(&r, "firstBatch"));
    assert_eq!(kept.len() as i64, doc_num(&st, "count"));
    // The newest are kept, in insertion order.
    let first = 100 - kept.len() as i64;
    assert_eq!(kept, (first..100).collect::<Vec<_>>());
    assert!(kept.len() > 30 && kept.len() < 45, "{}", kept.len());

    // collMod cappedMax / cappedSize (new in 6.0): the next insert trims to the new bound.
    run(&db, doc! {"collMod": "c", "cappedMax": 1}).await;
    c.insert_one(doc! {"_id": 9}).await.unwrap();
    let r = run(&db, doc! {"find": "c"}).await;
    assert_eq!(ids(cursor_batch(&r, "firstBatch")), vec![9]);
    let (code, _) = cmd_error(&db, doc! {"collMod": "c", "cappedSize": -1}).await;
    assert_eq!(code, 2);
    db.collection::<Document>("plain")
        .insert_one(doc! {})
        .await
        .unwrap();
    let (code, _) = cmd_error(&db, doc! {"collMod": "plain", "cappedSize": 8192}).await;
    assert_eq!(code, 72);
    // A document larger than the whole collection could never be kept.
    let r = run(
        &db,
        doc! {"insert": "c", "documents": [{"_id": 10, "big": "x".repeat(5000)}]},
    )
    .await;
    assert_eq!(r.get_array("writeErrors").unwrap().len(), 1, "{r}");
    // Creation errors, as mongod words them.
    let (code, _) = cmd_error(&db, doc! {"create": "nosize", "capped": true}).await;
    assert_eq!(code, 72);
    let (code, _) = cmd_error(&db, doc! {"create": "nocap", "size": 4096}).await;
    assert_eq!(code, 72);
    // Capped collections take no transactional writes.
    let mut session = s.client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    let e = c
        .insert_one(doc! {"_id": 11})
        .session(&mut session)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("capped collection"), "{e}");
}

/// Source: https://www.mongodb.com/docs/v8.0/core/tailable-cursors/: a tailable cursor
/// stays open after the last document and returns documents inserted later; with
/// awaitData a getMore waits (up to maxTimeMS) for data; a cursor whose position was
/// removed dies with CappedPositionLost (136); a tailable cursor on an empty collection
/// or a non-capped one is refused or dead.
#[tokio::test]
async fn tailable_cursors_follow_inserts() {
    let s = testkit::spawn().await;
    let db = s.client.database("tail");
    run(
        &db,
        doc! {"create": "c", "capped": true, "size": 4096, "max": 3},
    )
    .await;
    let c = db.collection::<Document>("c");
    // Empty: the cursor is dead at once.
    let r = run(&db, doc! {"find": "c", "tailable": true}).await;
    assert_eq!(doc_num(r.get_document("cursor").unwrap(), "id"), 0);
    for i in 0..3 {
        c.insert_one(doc! {"_id": i, "even": i % 2 == 0})
            .await
            .unwrap();
    }
    let r = run(
        &db,
        doc! {"find": "c", "tailable": true, "awaitData": true, "filter": {"even": true}},
    )
    .await;
    assert_eq!(ids(cursor_batch(&r, "firstBatch")), vec![0, 2]);
    let id = doc_num(r.get_document("cursor").unwrap(), "id");
    assert_ne!(id, 0);
    // Nothing new: an awaitData getMore waits maxTimeMS, then returns an empty batch.
    let t = std::time::Instant::now();
    let r = run(
        &db,
        doc! {"getMore": id, "collection": "c", "maxTimeMS": 300},
    )
    .await;
    assert!(cursor_batch(&r, "nextBatch").is_empty());
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    // An insert while it waits wakes it; an odd one is filtered out.
    let c2 = c.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c2.insert_one(doc! {"_id": 3, "even": false}).await.unwrap();
        c2.insert_one(doc! {"_id": 4, "even": true}).await.unwrap();
    });
    let t = std::time::Instant::now();
    let mut got = Vec::new();
    while got.is_empty() {
        let r = run(
            &db,
            doc! {"getMore": id, "collection": "c", "maxTimeMS": 5000},
        )
        .await;
        got = ids(cursor_batch(&r, "nextBatch"));
    }
    assert_eq!(got, vec![4]);
    assert!(t.elapsed() < Duration::from_secs(4));
    // Three more inserts remove the document the cursor stands on (4 is kept, but the
    // cursor read up to 4; then 5, 6, 7 push 4 out).
    for i in 5..8 {
        c.insert_one(doc! {"_id": i, "even": true}).await.unwrap();
    }
    let (code, name) = cmd_error(&db, doc! {"getMore": id, "collection": "c"}).await;
    assert_eq!((code, name.as_str()), (136, "CappedPositionLost"));
    // Option checks.
    let (code, _) = cmd_error(&db, doc! {"find": "c", "awaitData": true}).await;
    assert_eq!(code, 9);
    let (code, _) = cmd_error(
        &db,
        doc! {"find": "c", "tailable": true, "sort": {"_id": 1}},
    )
    .await;
    assert_eq!(code, 2);
    db.collection::<Document>("plain")
        .insert_one(doc! {})
        .await
        .unwrap();
    let (code, _) = cmd_error(&db, doc! {"find": "plain", "tailable": true}).await;
    assert_eq!(code, 2);
    // A non-awaitData tailable cursor takes no maxTimeMS on getMore.
    let r = run(&db, doc! {"find": "c", "tailable": true, "batchSize": 1}).await;
    let id = doc_num(r.get_document("cursor").unwrap(), "id");
    let (code, _) = cmd_error(
        &db,
        doc! {"getMore": id, "collection": "c", "maxTimeMS": 10},
    )
    .await;
    assert_eq!(code, 2);
}

/// Source: https://www.mongodb.com/docs/v8.0/core/index-ttl/: a background task removes
/// documents whose indexed date is older than expireAfterSeconds (an array expires by its
/// earliest date; a field that is not a date never expires); it runs every
/// ttlMonitorSleepSecs; the deletes are ordinary deletes (change streams see them);
/// collMod changes expireAfterSeconds (https://www.mongodb.com/docs/v8.0/reference/command/collMod/).
/// The issue's case: a document 10 s old under `expireAfterSeconds: 1`.
#[tokio::test]
async fn ttl_indexes_expire_documents() {
    let s = testkit::spawn_with(|cfg| {
        cfg.parameters.insert("ttlMonitorSleepSecs", 1);
    })
    .await;
    let db = s.client.database("ttl");
    let c = db.collection::<Document>("c");
    let now = DateTime::now().timestamp_millis();
    let at = |ms: i64| Bson::DateTime(DateTime::from_millis(now + ms));
    c.insert_many(vec![
        doc! {"_id": 1, "at": at(-10_000)},
        doc! {"_id": 2, "at": at(3_600_000)},
        doc! {"_id": 3, "at": [at(3_600_000), at(-30_000)]},
        doc! {"_id": 4, "at": "not a date"},
        doc! {"_id": 5},
    ])
    .await
    .unwrap();
    let mut cs = c.watch().await.unwrap();
    run(
        &db,
        doc! {"createIndexes": "c", "indexes": [{"key": {"at": 1}, "name": "at_1", "expireAfterSeconds": 1}]},
    )
    .await;
    let mut deleted = vec![next_event(&mut cs).await, next_event(&mut cs).await];
    deleted.sort_by_key(|(_, id)| id.as_i32());
    assert_eq!(
        deleted,
        vec![
            (OperationType::Delete, Bson::Int32(1)),
            (OperationType::Delete, Bson::Int32(3))
        ]
    );
    let r = run(&db, doc! {"find": "c"}).await;
    assert_eq!(ids(cursor_batch(&r, "firstBatch")), vec![2, 4, 5]);
    let m = run(&db, doc! {"serverStatus": 1}).await;
    let ttl = m
        .get_document("metrics")
        .unwrap()
        .get_document("ttl")
        .unwrap();
    assert!(
        doc_num(ttl, "deletedDocuments") >= 2 && doc_num(ttl, "passes") >= 1,
        "{ttl}"
    );

    // collMod raises the bound: a document 5 s old is kept; lowered to 0, it goes.
    let r = run(
        &db,
        doc! {"collMod": "c", "index": {"name": "at_1", "expireAfterSeconds": 100_000}},
    )
    .await;
    assert_eq!(
        (
            doc_num(&r, "expireAfterSeconds_old"),
            doc_num(&r, "expireAfterSeconds_new")
        ),
        (1, 100_000)
    );
    c.insert_one(doc! {"_id": 6, "at": at(-5_000)})
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = run(&db, doc! {"find": "c", "filter": {"_id": 6}}).await;
    assert_eq!(
        cursor_batch(&r, "firstBatch").len(),
        1,
        "kept under the longer TTL"
    );
    run(
        &db,
        doc! {"collMod": "c", "index": {"keyPattern": {"at": 1}, "expireAfterSeconds": 0}},
    )
    .await;
    let t = std::time::Instant::now();
    loop {
        let r = run(&db, doc! {"find": "c", "filter": {"_id": 6}}).await;
        if cursor_batch(&r, "firstBatch").is_empty() {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "6 never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // TTL option errors (mongod's CannotCreateIndex, 67).
    for spec in [
        doc! {"key": {"a": 1, "b": 1}, "name": "ab", "expireAfterSeconds": 5},
        doc! {"key": {"a": 1}, "name": "a", "expireAfterSeconds": "5"},
        doc! {"key": {"a": 1}, "name": "a", "expireAfterSeconds": -1},
    ] {
        let (code, _) =
            cmd_error(&db, doc! {"createIndexes": "c", "indexes": [spec.clone()]}).await;
        assert_eq!(code, 67, "{spec}");
    }
}

/// Every index option either has its effect or is refused. Sources:
/// https://www.mongodb.com/docs/v8.0/reference/command/createIndexes/ (the option list),
/// https://www.mongodb.com/docs/v8.0/core/index-hidden/ (a hidden index is maintained but
/// not used by the planner, nor by a hint), and mongod's errors for what Eddy does not
/// build: CannotCreateIndex (67) and InvalidIndexSpecificationOption (197).
#[tokio::test]
async fn index_options_are_honoured_or_refused() {
    let s = testkit::spawn().await;
    let db = s.client.database("ixopts");
    let c = db.collection::<Document>("c");
    c.insert_many(
        (0..20)
            .map(|i| doc! {"_id": i, "a": i, "s": if i < 5 { Bson::Int32(i) } else { Bson::Null }}),
    )
    .await
    .unwrap();
    let create = |spec: Document| doc! {"createIndexes": "c", "indexes": [spec]};
    // unique: enforced.
    run(
        &db,
        create(doc! {"key": {"a": 1}, "name": "a_1", "unique": true}),
    )
    .await;
    let r = run(
        &db,
        doc! {"insert": "c", "documents": [{"_id": 100, "a": 3}]},
    )
    .await;
    assert_eq!(
        doc_num(
            r.get_array("writeErrors").unwrap()[0]
                .as_document()
                .unwrap(),
            "code"
        ),
        11000
    );
    let winning = |r: &Document| {
        let qp = r.get_document("queryPlanner").unwrap();
        qp.get_document("winningPlan").unwrap().clone()
    };
    let stage_of = |wp: &Document| -> String {
        let mut d = wp.clone();
        loop {
            match d.get_document("inputStage") {
                Ok(i) => d = i.clone(),
                Err(_) => return d.get_str("stage").unwrap().to_string(),
            }
        }
    };
    let explain = doc! {"explain": {"find": "c", "filter": {"a": 7}}};
    assert_eq!(
        stage_of(&winning(&run(&db, explain.clone()).await)),
        "IXSCAN"
    );
    // hidden: still enforced, but not used, and not hintable.
    let r = run(
        &db,
        doc! {"collMod": "c", "index": {"name": "a_1", "hidden": true}},
    )
    .await;
    assert_eq!(
        (
            r.get_bool("hidden_old").unwrap(),
            r.get_bool("hidden_new").unwrap()
        ),
        (false, true)
    );
    assert_eq!(
        stage_of(&winning(&run(&db, explain.clone()).await)),
        "COLLSCAN"
    );
    let (code, _) = cmd_error(&db, doc! {"find": "c", "hint": "a_1"}).await;
    assert_eq!(code, 2);
    let r = run(
        &db,
        doc! {"insert": "c", "documents": [{"_id": 101, "a": 3}]},
    )
    .await;
    assert!(
        r.get_array("writeErrors").is_ok(),
        "a hidden unique index still enforces"
    );
    run(
        &db,
        doc! {"collMod": "c", "index": {"name": "a_1", "hidden": false}},
    )
    .await;
    assert_eq!(
        stage_of(&winning(&run(&db, explain.clone()).await)),
        "IXSCAN"
    );
    let (code, _) = cmd_error(
        &db,
        doc! {"collMod": "c", "index": {"name": "_id_", "hidden": true}},
    )
    .await;
    assert_eq!(code, 2);
    let (code, _) = cmd_error(
        &db,
        doc! {"collMod": "c", "index": {"name": "a_1", "unique": true}},
    )
    .await;
    assert_eq!(code, 72);
    let (code, _) = cmd_error(
        &db,
        doc! {"collMod": "c", "index": {"name": "nope", "hidden": true}},
    )
    .await;
    assert_eq!(code, 27);
    // Created hidden.
    run(
        &db,
        create(doc! {"key": {"s": 1}, "name": "s_1", "hidden": true}),
    )
    .await;
    let ex = doc! {"explain": {"find": "c", "filter": {"s": 2}}};
    assert_eq!(stage_of(&winning(&run(&db, ex).await)), "COLLSCAN");
    // Accepted as mongod accepts them: background (no effect since 4.2 there too), an
    // empty storageEngine, v 1 or 2.
    run(
        &db,
        create(
            doc! {"key": {"b": 1}, "name": "b_1", "background": true, "storageEngine": {}, "v": 1},
        ),
    )
    .await;
    let r = run(&db, doc! {"listIndexes": "c"}).await;
    let b = cursor_batch(&r, "firstBatch")
        .iter()
        .map(|d| d.as_document().unwrap())
        .find(|d| d.get_str("name") == Ok("b_1"))
        .unwrap();
    assert_eq!(doc_num(b, "v"), 1);
    // Refused: index types Eddy does not build, their options, and unknown options.
    for (spec, code) in [
        (
            doc! {"key": {"t": "text", "g": "2dsphere"}, "name": "t"},
            67,
        ),
        (
            doc! {"key": {"t": "text"}, "name": "t", "textIndexVersion": 2},
            67,
        ),
        (doc! {"key": {"g": "2dsphere", "x": 1}, "name": "g"}, 67),
        (
            doc! {"key": {"g": "2dsphere"}, "name": "g", "2dsphereIndexVersion": 1},
            67,
        ),
        (doc! {"key": {"g": "2d", "x": 1}, "name": "g"}, 67),
        (doc! {"key": {"h": "hashed", "x": 1}, "name": "h"}, 67),
        (doc! {"key": {"$**": 1, "x": 1}, "name": "w"}, 67),
        (doc! {"key": {"x": "nonsense"}, "name": "x"}, 67),
        (doc! {"key": {"x": 1}, "name": "x", "weights": {"x": 2}}, 67),
        (
            doc! {"key": {"x": 1}, "name": "x", "default_language": "french"},
            67,
        ),
        (
            doc! {"key": {"x": 1}, "name": "x", "2dsphereIndexVersion": 3},
            67,
        ),
        (doc! {"key": {"x": 1}, "name": "x", "bits": 26}, 67),
        (
            doc! {"key": {"x": 1}, "name": "x", "wildcardProjection": {"a": 1}},
            2,
        ),
        (
            doc! {"key": {"x": 1}, "name": "x", "prepareUnique": true},
            67,
        ),
        (
            doc! {"key": {"x": 1}, "name": "x", "storageEngine": {"wiredTiger": {}}},
            72,
        ),
        (doc! {"key": {"x": 1}, "name": "x", "v": 3}, 67),
        (doc! {"key": {"x": 1}, "name": "x", "bogus": 1}, 197),
        (doc! {"key": {"x": 1}, "name": "x", "hidden": 1}, 14),
    ] {
        let (got, _) = cmd_error(&db, create(spec.clone())).await;
        assert_eq!(got, code, "{spec}");
    }
    let r = run(&db, doc! {"listIndexes": "c"}).await;
    let names: Vec<&str> = cursor_batch(&r, "firstBatch")
        .iter()
        .map(|d| d.as_document().unwrap().get_str("name").unwrap())
        .collect();
    assert_eq!(names, vec!["_id_", "a_1", "s_1", "b_1"]);
}

/// The N and percentile accumulators, with the examples of MongoDB's manual pages:
/// https://www.mongodb.com/docs/v8.0/reference/operator/aggregation/topN/ (and bottomN,
/// top, bottom, maxN, minN, lastN: the same `gamescores` collection),
/// https://www.mongodb.com/docs/v8.0/reference/operator/aggregation/median/ and
/// https://www.mongodb.com/docs/v8.0/reference/operator/aggregation/percentile/ (the
/// `testScores` collection; accumulator and expression forms).
#[tokio::test]
async fn n_and_percentile_accumulators_match_the_manual() {
    let s = testkit::spawn().await;
    let db = s.client.database("acc");
    let g = db.collection::<Document>("gamescores");
    let rows = [
        ("PlayerA", "G1", 31),
        ("PlayerB", "G1", 33),
        ("PlayerC", "G1", 99),
        ("PlayerD", "G1", 1),
        ("PlayerA", "G2", 10),
        ("PlayerB", "G2", 14),
        ("PlayerC", "G2", 66),
        ("PlayerD", "G2", 80),
    ];
    g.insert_many(
        rows.iter()
            .map(|(p, gm, sc)| doc! {"playerId": *p, "gameId": *gm, "score": *sc}),
    )
    .await
    .unwrap();
    let group = |acc: Document| async {
        let r = run(
            &db,
            doc! {"aggregate": "gamescores", "cursor": {}, "pipeline": [
                {"$sort": {"_id": 1}},
                {"$group": {"_id": "$gameId", "r": acc}},
                {"$sort": {"_id": 1}},
            ]},
        )
        .await;
        cursor_batch(&r, "firstBatch")
            .iter()
            .map(|d| d.as_document().unwrap().get("r").unwrap().clone())
            .collect::<Vec<_>>()
    };
    let out = doc! {"output": ["$playerId", "$score"], "sortBy": {"score": -1}};
    let mut top_n = out.clone();
    top_n.insert("n", 3);
    assert_eq!(
        group(doc! {"$topN": top_n.clone()}).await,
        vec![
            bson::bson!([["PlayerC", 99], ["PlayerB", 33], ["PlayerA", 31]]),
            bson::bson!([["PlayerD", 80], ["PlayerC", 66], ["PlayerB", 14]]),
        ]
    );
    assert_eq!(
        group(doc! {"$bottomN": top_n}).await,
        vec![
            bson::bson!([["PlayerB", 33], ["PlayerA", 31], ["PlayerD", 1]]),
            bson::bson!([["PlayerC", 66], ["PlayerB", 14], ["PlayerA", 10]]),
        ]
    );
    assert_eq!(
        group(doc! {"$top": out.clone()}).await,
        vec![bson::bson!(["PlayerC", 99]), bson::bson!(["PlayerD", 80])]
    );
    assert_eq!(
        group(doc! {"$bottom": out}).await,
        vec![bson::bson!(["PlayerD", 1]), bson::bson!(["PlayerA", 10])]
    );
    assert_eq!(
        group(doc! {"$maxN": {"input": ["$score", "$playerId"], "n": 3}}).await,
        vec![
            bson::bson!([[99, "PlayerC"], [33, "PlayerB"], [31, "PlayerA"]]),
            bson::bson!([[80, "PlayerD"], [66, "PlayerC"], [14, "PlayerB"]]),
        ]
    );
    assert_eq!(
        group(doc! {"$minN": {"input": ["$score", "$playerId"], "n": 3}}).await,
        vec![
            bson::bson!([[1, "PlayerD"], [31, "PlayerA"], [33, "PlayerB"]]),
            bson::bson!([[10, "PlayerA"], [14, "PlayerB"], [66, "PlayerC"]]),
        ]
    );
    // In input (`_id`) order.
    assert_eq!(
        group(doc! {"$firstN": {"input": "$score", "n": 3}}).await,
        vec![bson::bson!([31, 33, 99]), bson::bson!([10, 14, 66])]
    );
    assert_eq!(
        group(doc! {"$lastN": {"input": "$score", "n": 3}}).await,
        vec![bson::bson!([33, 99, 1]), bson::bson!([14, 66, 80])]
    );
    let (code, _) = cmd_error(
        &db,
        doc! {"aggregate": "gamescores", "cursor": {}, "pipeline": [
            {"$group": {"_id": null, "r": {"$topN": {"output": "$score", "n": 0, "sortBy": {"score": 1}}}}},
        ]},
    )
    .await;
    assert_eq!(code, 5787908);

    let t = db.collection::<Document>("testScores");
    for (id, a, b, c) in [
        (1, 62, 81, 80),
        (2, 60, 83, 79),
        (3, 64, 82, 80),
        (4, 65, 78, 79),
        (5, 63, 83, 78),
    ] {
        t.insert_one(doc! {"studentId": id, "test01": a, "test02": b, "test03": c})
            .await
            .unwrap();
    }
    let r = run(
        &db,
        doc! {"aggregate": "testScores", "cursor": {}, "pipeline": [{"$group": {
            "_id": null,
            "test01_median": {"$median": {"input": "$test01", "method": "approximate"}},
            "test01_percentiles": {"$percentile": {"input": "$test01", "p": [0.5, 0.75, 0.9, 0.95], "method": "approximate"}},
        }}]},
    )
    .await;
    let d = cursor_batch(&r, "firstBatch")[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(d.get("test01_median"), Some(&Bson::Double(63.0)));
    assert_eq!(
        d.get("test01_percentiles"),
        Some(&bson::bson!([63.0, 64.0, 65.0, 65.0]))
    );
    let r = run(
        &db,
        doc! {"aggregate": "testScores", "cursor": {}, "pipeline": [
            {"$sort": {"studentId": 1}},
            {"$project": {"_id": 0, "studentId": 1, "testMedians": {"$median": {"input": ["$test01", "$test02", "$test03"], "method": "approximate"}}}},
        ]},
    )
    .await;
    let medians: Vec<f64> = cursor_batch(&r, "firstBatch")
        .iter()
        .map(|d| d.as_document().unwrap().get_f64("testMedians").unwrap())
        .collect();
    assert_eq!(medians, vec![80.0, 79.0, 80.0, 78.0, 78.0]);
}

/// Source: https://www.mongodb.com/docs/v8.0/reference/operator/aggregation/indexStats/
/// (one document per index: `name`, `key`, `host`, `accesses.ops` counting the operations
/// that used it, `accesses.since`, `spec`), .../planCacheStats/ (one document per cached
/// plan: Eddy caches none) and https://www.mongodb.com/docs/v8.0/reference/command/top/
/// (per collection `total`, `readLock`, `writeLock`, `queries`, `insert`, ... with `time`
/// in microseconds and `count`; admin only).
#[tokio::test]
async fn index_stats_plan_cache_stats_and_top() {
    let s = testkit::spawn().await;
    let db = s.client.database("usage");
    let c = db.collection::<Document>("c");
    c.insert_many((0..10).map(|i| doc! {"_id": i, "a": i}))
        .await
        .unwrap();
    run(
        &db,
        doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_1"}, {"key": {"b": 1}, "name": "b_1"}]},
    )
    .await;
    for i in 0..3 {
        run(&db, doc! {"find": "c", "filter": {"a": i}}).await;
    }
    run(&db, doc! {"find": "c", "filter": {"_id": 1}}).await;
    let r = run(
        &db,
        doc! {"aggregate": "c", "cursor": {}, "pipeline": [{"$indexStats": {}}, {"$sort": {"name": 1}}]},
    )
    .await;
    let ops: Vec<(String, i64)> = cursor_batch(&r, "firstBatch")
        .iter()
        .map(|d| {
            let d = d.as_document().unwrap();
            assert!(
                d.get_document("spec").is_ok() && d.get_str("host").is_ok(),
                "{d}"
            );
            let acc = d.get_document("accesses").unwrap();
            assert!(acc.get_datetime("since").is_ok(), "{d}");
            (d.get_str("name").unwrap().to_string(), doc_num(acc, "ops"))
        })
        .collect();
    assert_eq!(
        ops,
        vec![
            ("_id_".to_string(), 1),
            ("a_1".to_string(), 3),
            ("b_1".to_string(), 0)
        ]
    );
    let r = run(
        &db,
        doc! {"aggregate": "c", "cursor": {}, "pipeline": [{"$planCacheStats": {}}]},
    )
    .await;
    assert!(cursor_batch(&r, "firstBatch").is_empty());
    let (code, _) = cmd_error(
        &db,
        doc! {"aggregate": "c", "cursor": {}, "pipeline": [{"$match": {}}, {"$indexStats": {}}]},
    )
    .await;
    assert_eq!(code, 40602);

    let (code, _) = cmd_error(&db, doc! {"top": 1}).await;
    assert_eq!(code, 13);
    let top = run(&s.client.database("admin"), doc! {"top": 1}).await;
    let t = top
        .get_document("totals")
        .unwrap()
        .get_document("usage.c")
        .unwrap()
        .clone();
    assert_eq!(
        doc_num(t.get_document("queries").unwrap(), "count"),
        4,
        "{t}"
    );
    assert_eq!(
        doc_num(t.get_document("insert").unwrap(), "count"),
        1,
        "{t}"
    );
    assert!(doc_num(t.get_document("total").unwrap(), "time") > 0, "{t}");
    assert!(
        doc_num(t.get_document("writeLock").unwrap(), "count") >= 2,
        "{t}"
    );
}

/// Source: https://www.mongodb.com/docs/v8.0/reference/command/setDefaultRWConcern/ and
/// .../getDefaultRWConcern/: the implicit defaults (`local` reads, `majority` writes), a
/// global default applied to commands that give no concern (and not to those that do),
/// `w: 0` refused as a default, `snapshot` refused as a default read concern, admin only.
#[tokio::test]
async fn default_read_and_write_concerns() {
    let s = testkit::spawn().await;
    let admin = s.client.database("admin");
    let db = s.client.database("rw");
    let r = run(&admin, doc! {"getDefaultRWConcern": 1}).await;
    assert_eq!(r.get_str("defaultWriteConcernSource").unwrap(), "implicit");
    assert_eq!(
        r.get_document("defaultReadConcern").unwrap(),
        &doc! {"level": "local"}
    );
    let r = run(
        &admin,
        doc! {"setDefaultRWConcern": 1, "defaultWriteConcern": {"w": 2, "wtimeout": 100}, "defaultReadConcern": {"level": "majority"}},
    )
    .await;
    assert_eq!(r.get_str("defaultWriteConcernSource").unwrap(), "global");
    // A one-member set cannot meet w: 2: the default is applied, so the write reports it.
    let r = run(&db, doc! {"insert": "c", "documents": [{"_id": 1}]}).await;
    assert_eq!(
        doc_num(r.get_document("writeConcernError").unwrap(), "code"),
        100,
        "{r}"
    );
    // An explicit concern wins.
    let r = run(
        &db,
        doc! {"insert": "c", "documents": [{"_id": 2}], "writeConcern": {"w": 1}},
    )
    .await;
    assert!(r.get("writeConcernError").is_none(), "{r}");
    let r = run(&admin, doc! {"getDefaultRWConcern": 1}).await;
    assert_eq!(
        r.get_document("defaultReadConcern").unwrap(),
        &doc! {"level": "majority"}
    );
    for bad in [
        doc! {"setDefaultRWConcern": 1, "defaultWriteConcern": {"w": 0}},
        doc! {"setDefaultRWConcern": 1, "defaultWriteConcern": {}},
        doc! {"setDefaultRWConcern": 1, "defaultReadConcern": {"level": "snapshot"}},
        doc! {"setDefaultRWConcern": 1},
    ] {
        let (code, _) = cmd_error(&admin, bad.clone()).await;
        assert_eq!(code, 2, "{bad}");
    }
    let (code, _) = cmd_error(&db, doc! {"getDefaultRWConcern": 1}).await;
    assert_eq!(code, 13);
    run(
        &admin,
        doc! {"setDefaultRWConcern": 1, "defaultWriteConcern": {"w": 1}},
    )
    .await;
    let r = run(&db, doc! {"insert": "c", "documents": [{"_id": 3}]}).await;
    assert!(r.get("writeConcernError").is_none(), "{r}");
}

/// Sources: https://www.mongodb.com/docs/v8.0/reference/command/convertToCapped/ and
/// .../cloneCollectionAsCapped/ (only the `_id` index is kept; the collection's options
/// are; a clone's target must not exist). A change stream on the converted collection
/// sees the rename over it and is invalidated, as mongod's copy-and-rename produces.
#[tokio::test]
async fn convert_and_clone_as_capped() {
    let s = testkit::spawn().await;
    let db = s.client.database("capconv");
    let c = db.collection::<Document>("c");
    for i in 0..20 {
        c.insert_one(doc! {"_id": i, "pad": "x".repeat(400)})
            .await
            .unwrap();
    }
    run(
        &db,
        doc! {"createIndexes": "c", "indexes": [{"key": {"pad": 1}, "name": "pad_1"}]},
    )
    .await;
    let mut cs = c.watch().await.unwrap();
    run(
        &db,
        doc! {"cloneCollectionAsCapped": "c", "toCollection": "small", "size": 4096},
    )
    .await;
    let small = run(&db, doc! {"find": "small", "sort": {"$natural": 1}}).await;
    let kept = ids(cursor_batch(&small, "firstBatch"));
    assert!(kept.len() < 20 && !kept.is_empty(), "{kept:?}");
    assert_eq!(*kept.last().unwrap(), 19, "the newest are kept");
    let st = run(&db, doc! {"collStats": "small"}).await;
    assert!(st.get_bool("capped").unwrap());
    assert_eq!(
        cmd_error(
            &db,
            doc! {"cloneCollectionAsCapped": "c", "toCollection": "small", "size": 4096}
        )
        .await
        .0,
        48
    );
    assert_eq!(
        cmd_error(
            &db,
            doc! {"cloneCollectionAsCapped": "nope", "toCollection": "x", "size": 4096}
        )
        .await
        .0,
        26
    );

    run(&db, doc! {"convertToCapped": "c", "size": 1_000_000}).await;
    let st = run(&db, doc! {"collStats": "c"}).await;
    assert!(st.get_bool("capped").unwrap(), "{st}");
    assert_eq!(doc_num(&st, "maxSize"), 1_000_192);
    assert_eq!(doc_num(&st, "count"), 20);
    let ix = run(&db, doc! {"listIndexes": "c"}).await;
    assert_eq!(cursor_batch(&ix, "firstBatch").len(), 1, "only _id is kept");
    let e = tokio::time::timeout(Duration::from_secs(10), cs.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.operation_type, OperationType::Rename);
    let e = tokio::time::timeout(Duration::from_secs(10), cs.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(e.operation_type, OperationType::Invalidate);
    // Capped from now on: a bound is enforced.
    run(&db, doc! {"convertToCapped": "c", "size": 4096}).await;
    c.insert_one(doc! {"_id": 100, "pad": "y".repeat(400)})
        .await
        .unwrap();
    let r = run(&db, doc! {"find": "c"}).await;
    let now = ids(cursor_batch(&r, "firstBatch"));
    assert!(now.len() < 21 && now.contains(&100), "{now:?}");
    for (cmd, code) in [
        (doc! {"convertToCapped": "c"}, 72),
        (doc! {"convertToCapped": "c", "size": -1}, 72),
        (doc! {"convertToCapped": "c", "size": "big"}, 72),
        (doc! {"convertToCapped": "missing", "size": 4096}, 26),
    ] {
        assert_eq!(cmd_error(&db, cmd.clone()).await.0, code, "{cmd}");
    }
}

/// Source: https://www.mongodb.com/docs/v8.0/reference/command/logRotate/ (admin only;
/// `1` or `"server"`; a rotated file is renamed with a timestamp suffix), and
/// .../aggregation/listSessions/ (run on `config.system.sessions`).
#[tokio::test]
async fn log_rotate_and_list_sessions() {
    let s = testkit::spawn().await;
    let admin = s.client.database("admin");
    run(&admin, doc! {"logRotate": 1}).await;
    run(&admin, doc! {"logRotate": "server"}).await;
    assert_eq!(cmd_error(&admin, doc! {"logRotate": "audit"}).await.0, 4);
    assert_eq!(
        cmd_error(&s.client.database("x"), doc! {"logRotate": 1})
            .await
            .0,
        13
    );

    // A session used by this client shows in $listSessions, as in $listLocalSessions.
    let mut session = s.client.start_session().await.unwrap();
    s.client
        .database("x")
        .collection::<Document>("c")
        .insert_one(doc! {"a": 1})
        .session(&mut session)
        .await
        .unwrap();
    let config = s.client.database("config");
    let r = run(
        &config,
        doc! {"aggregate": "system.sessions", "pipeline": [{"$listSessions": {"allUsers": true}}], "cursor": {}},
    )
    .await;
    let listed = cursor_batch(&r, "firstBatch");
    let want = session.id().get("id").unwrap().clone();
    assert!(
        listed.iter().any(|d| d
            .as_document()
            .and_then(|d| d.get_document("_id").ok())
            .and_then(|i| i.get("id"))
            == Some(&want)),
        "{listed:?}"
    );
    assert_eq!(
        cmd_error(
            &s.client.database("x"),
            doc! {"aggregate": "c", "pipeline": [{"$listSessions": {}}], "cursor": {}}
        )
        .await
        .0,
        73
    );
}

fn winning_index(explain: &Document) -> String {
    let plan = explain
        .get_document("queryPlanner")
        .unwrap()
        .get_document("winningPlan")
        .unwrap();
    match plan.get_document("inputStage") {
        Ok(ix) => ix.get_str("indexName").unwrap_or("?").to_string(),
        Err(_) => plan.get_str("stage").unwrap().to_string(),
    }
}

/// Sources: https://www.mongodb.com/docs/v8.0/core/indexes/index-types/index-hashed/
/// (equality queries use a hashed index; ranges cannot; arrays are refused) and
/// .../index-wildcard/ (a `$**` index serves a query on any one field, `wildcardProjection`
/// narrows it, `path.$**` covers a subtree; `explain` shows the index).
#[tokio::test]
async fn hashed_and_wildcard_indexes_are_used() {
    let s = testkit::spawn().await;
    let db = s.client.database("special");
    let h = db.collection::<Document>("h");
    for i in 0..50 {
        h.insert_one(doc! {"_id": i, "k": i % 10, "s": format!("v{i}")})
            .await
            .unwrap();
    }
    run(
        &db,
        doc! {"createIndexes": "h", "indexes": [{"key": {"k": "hashed"}, "name": "k_hashed"}]},
    )
    .await;
    let explain = |coll: &str, filter: Document| doc! {"explain": {"find": coll, "filter": filter}};
    assert_eq!(
        winning_index(&run(&db, explain("h", doc! {"k": 3})).await),
        "k_hashed"
    );
    assert_eq!(
        winning_index(&run(&db, explain("h", doc! {"k": {"$in": [3, 4]}})).await),
        "k_hashed"
    );
    assert_eq!(
        winning_index(&run(&db, explain("h", doc! {"k": {"$gt": 3}})).await),
        "COLLSCAN"
    );
    let r = run(&db, doc! {"find": "h", "filter": {"k": 3.0}}).await;
    assert_eq!(ids(cursor_batch(&r, "firstBatch")), vec![3, 13, 23, 33, 43]);
    let r = run(&db, doc! {"count": "h", "query": {"k": {"$in": [1, 2]}}}).await;
    assert_eq!(doc_num(&r, "n"), 10);
    let e = h
        .insert_one(doc! {"_id": 99, "k": [1, 2]})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("16766"), "{e}");
    h.update_one(doc! {"_id": 3}, doc! {"$set": {"k": 100}})
        .await
        .unwrap();
    let r = run(&db, doc! {"find": "h", "filter": {"k": 100}}).await;
    assert_eq!(ids(cursor_batch(&r, "firstBatch")), vec![3]);

    let w = db.collection::<Document>("w");
    w.insert_many(vec![
        doc! {"_id": 1, "a": 1, "b": {"c": "x", "d": [5, 6]}},
        doc! {"_id": 2, "a": 2, "b": {"c": "y"}, "z": 9},
        doc! {"_id": 3, "a": [1, 3], "q": {"r": 1}},
    ])
    .await
    .unwrap();
    run(
        &db,
        doc! {"createIndexes": "w", "indexes": [{"key": {"$**": 1}, "name": "all"}]},
    )
    .await;
    for (filter, want) in [
        (doc! {"a": 1}, vec![1, 3]),
        (doc! {"b.c": "y"}, vec![2]),
        (doc! {"b.d": 6}, vec![1]),
        (doc! {"a": {"$gte": 2}}, vec![2, 3]),
        (doc! {"z": {"$in": [9, 10]}}, vec![2]),
    ] {
        assert_eq!(
            winning_index(&run(&db, explain("w", filter.clone())).await),
            "all",
            "{filter}"
        );
        let r = run(
            &db,
            doc! {"find": "w", "filter": filter.clone(), "sort": {"_id": 1}},
        )
        .await;
        assert_eq!(ids(cursor_batch(&r, "firstBatch")), want, "{filter}");
    }
    // Null and whole sub-documents are not in a wildcard index: those queries scan.
    assert_eq!(
        winning_index(&run(&db, explain("w", doc! {"z": null})).await),
        "COLLSCAN"
    );
    let r = run(
        &db,
        doc! {"find": "w", "filter": {"z": null}, "sort": {"_id": 1}},
    )
    .await;
    assert_eq!(ids(cursor_batch(&r, "firstBatch")), vec![1, 3]);
    let r = run(&db, doc! {"find": "w", "filter": {"q": {"r": 1}}}).await;
    assert_eq!(ids(cursor_batch(&r, "firstBatch")), vec![3]);

    // A subtree index, and a projection.
    run(
        &db,
        doc! {"createIndexes": "w", "indexes": [
            {"key": {"b.$**": 1}, "name": "b_sub"},
        ]},
    )
    .await;
    run(&db, doc! {"dropIndexes": "w", "index": "all"}).await;
    assert_eq!(
        winning_index(&run(&db, explain("w", doc! {"b.c": "x"})).await),
        "b_sub"
    );
    assert_eq!(
        winning_index(&run(&db, explain("w", doc! {"a": 1})).await),
        "COLLSCAN"
    );
    run(
        &db,
        doc! {"createIndexes": "w", "indexes": [
            {"key": {"$**": 1}, "name": "only_a", "wildcardProjection": {"a": 1}},
        ]},
    )
    .await;
    assert_eq!(
        winning_index(&run(&db, explain("w", doc! {"a": 2})).await),
        "only_a"
    );
    assert_eq!(
        winning_index(&run(&db, explain("w", doc! {"z": 9})).await),
        "COLLSCAN"
    );
    for (spec, code) in [
        (doc! {"key": {"$**": 1}, "name": "u", "unique": true}, 67),
        (doc! {"key": {"$**": 1, "x": 1}, "name": "c"}, 67),
        (
            doc! {"key": {"a.$**": 1}, "name": "p", "wildcardProjection": {"a": 1}},
            2,
        ),
        (
            doc! {"key": {"$**": 1}, "name": "m", "wildcardProjection": {"a": 1, "b": 0}},
            31254,
        ),
        (
            doc! {"key": {"k": "hashed"}, "name": "hu", "unique": true},
            67,
        ),
        (doc! {"key": {"k": "hashed", "s": 1}, "name": "hc"}, 67),
    ] {
        let (got, _) =
            cmd_error(&db, doc! {"createIndexes": "w2", "indexes": [spec.clone()]}).await;
        assert_eq!(got, code, "{spec}");
    }
}
