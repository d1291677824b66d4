// change_streams: events, targets, invalidation, resume, cursor behaviour.

use std::time::Duration;

use bson::{Document, doc};
use futures_util::StreamExt;
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType};
use mongodb::options::FullDocumentType;

use crate::{cmd_error, cursor_batch};

async fn next(
    cs: &mut mongodb::change_stream::ChangeStream<ChangeStreamEvent<Document>>,
) -> ChangeStreamEvent<Document> {
    tokio::time::timeout(Duration::from_secs(10), cs.next())
        .await
        .expect("event in time")
        .expect("stream open")
        .expect("no error")
}

#[tokio::test]
async fn collection_stream_sees_every_kind_of_event_in_order() {
    let s = testkit::spawn().await;
    let c = s.client.database("cs").collection::<Document>("a");
    c.insert_one(doc! {"_id": 0}).await.unwrap();
    let mut cs = c.watch().await.unwrap();
    c.insert_one(doc! {"_id": 1, "x": 1}).await.unwrap();
    c.update_one(doc! {"_id": 1}, doc! {"$set": {"y": 2}, "$unset": {"x": 1}})
        .await
        .unwrap();
    c.replace_one(doc! {"_id": 1}, doc! {"z": 3}).await.unwrap();
    c.delete_one(doc! {"_id": 1}).await.unwrap();
    c.drop().await.unwrap();

    let e = next(&mut cs).await;
    assert_eq!(e.operation_type, OperationType::Insert);
    assert_eq!(e.full_document, Some(doc! {"_id": 1, "x": 1}));
    assert_eq!(e.document_key, Some(doc! {"_id": 1}));
    assert!(e.wall_time.is_some() && e.cluster_time.is_some());
    let e = next(&mut cs).await;
    assert_eq!(e.operation_type, OperationType::Update);
    let ud = e.update_description.unwrap();
    assert_eq!(ud.updated_fields, doc! {"y": 2});
    assert_eq!(ud.removed_fields, vec!["x".to_string()]);
    assert!(e.full_document.is_none());
    let e = next(&mut cs).await;
    assert_eq!(e.operation_type, OperationType::Replace);
    assert_eq!(e.full_document, Some(doc! {"_id": 1, "z": 3}));
    let e = next(&mut cs).await;
    assert_eq!(e.operation_type, OperationType::Delete);
    let e = next(&mut cs).await;
    assert_eq!(e.operation_type, OperationType::Drop);
    let e = next(&mut cs).await;
    assert_eq!(e.operation_type, OperationType::Invalidate);
    assert!(!cs.is_alive() || next_none(&mut cs).await);
}

async fn next_none(
    cs: &mut mongodb::change_stream::ChangeStream<ChangeStreamEvent<Document>>,
) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(5), cs.next()).await,
        Ok(None)
    )
}

#[tokio::test]
async fn resume_tokens_order_and_resume() {
    let s = testkit::spawn().await;
    let c = s.client.database("cs").collection::<Document>("r");
    let mut cs = c.watch().await.unwrap();
    for i in 0..5 {
        c.insert_one(doc! {"_id": i}).await.unwrap();
    }
    let mut tokens = Vec::new();
    for i in 0..5 {
        let e = next(&mut cs).await;
        assert_eq!(e.document_key, Some(doc! {"_id": i}));
        tokens.push(e.id);
    }
    let datas: Vec<String> = tokens
        .iter()
        .map(|t| {
            bson::to_document(t)
                .unwrap()
                .get_str("_data")
                .unwrap()
                .to_string()
        })
        .collect();
    assert!(
        datas.windows(2).all(|w| w[0] < w[1]),
        "tokens sort in event order: {datas:?}"
    );
    // Resume after the second event: events 2, 3, 4.
    let mut resumed = c.watch().resume_after(tokens[1].clone()).await.unwrap();
    for i in 2..5 {
        assert_eq!(next(&mut resumed).await.document_key, Some(doc! {"_id": i}));
    }
    // startAtOperationTime at the third event's time: events 2, 3, 4.
    let db = s.client.database("cs");
    let r = db.run_command(doc! {"aggregate": "r", "pipeline": [{"$changeStream": {"resumeAfter": bson::to_document(&tokens[3]).unwrap()}}], "cursor": {}}).await.unwrap();
    let first = cursor_batch(&r, "firstBatch");
    assert_eq!(
        first.len(),
        1,
        "resuming from a past token returns the later events at once"
    );
    // Malformed tokens and conflicting options.
    // Not hex: FailedToParse, as MongoDB; hex that is no token: a KeyString error.
    let (code, _) = cmd_error(&db, doc! {"aggregate": "r", "pipeline": [{"$changeStream": {"resumeAfter": {"_data": "zz"}}}], "cursor": {}}).await;
    assert_eq!(code, 9);
    let (code, _) = cmd_error(&db, doc! {"aggregate": "r", "pipeline": [{"$changeStream": {"resumeAfter": {"_data": "8263"}}}], "cursor": {}}).await;
    assert!(code != 0);
    let t = bson::to_document(&tokens[0]).unwrap();
    let (code, _) = cmd_error(&db, doc! {"aggregate": "r", "pipeline": [{"$changeStream": {"resumeAfter": t.clone(), "startAfter": t}}], "cursor": {}}).await;
    assert_eq!(code, 40674);
    let (code, _) = cmd_error(&db, doc! {"aggregate": "r", "pipeline": [{"$changeStream": {}}, {"$group": {"_id": 1}}], "cursor": {}}).await;
    assert!(code != 0);
    let (code, _) = cmd_error(&db, doc! {"aggregate": "r", "pipeline": [{"$changeStream": {}}, {"$unsupported": {}}], "cursor": {}}).await;
    assert_eq!(code, 40324);
    let (code, _) = cmd_error(
        &db,
        doc! {"aggregate": "r", "pipeline": [{"$changeStream": {"bogus": 1}}], "cursor": {}},
    )
    .await;
    assert_eq!(code, 40415);
    let (code, _) = cmd_error(&db, doc! {"aggregate": "r", "pipeline": [{"$changeStream": {}}], "cursor": {}, "readConcern": {"level": "local"}}).await;
    assert!(code != 0);
}

#[tokio::test]
async fn database_and_cluster_streams() {
    let s = testkit::spawn().await;
    let db = s.client.database("dbs");
    db.create_collection("one").await.unwrap();
    let mut dbs = db.watch().await.unwrap();
    let mut all = s.client.watch().await.unwrap();
    db.collection::<Document>("one")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    db.collection::<Document>("two")
        .insert_one(doc! {"_id": 2})
        .await
        .unwrap();
    s.client
        .database("other")
        .collection::<Document>("x")
        .insert_one(doc! {"_id": 3})
        .await
        .unwrap();
    db.drop().await.unwrap();
    let e = next(&mut dbs).await;
    assert_eq!(e.ns.unwrap().coll.as_deref(), Some("one"));
    let e = next(&mut dbs).await;
    assert_eq!(e.ns.unwrap().coll.as_deref(), Some("two"));
    let mut kinds = Vec::new();
    for _ in 0..4 {
        kinds.push(next(&mut dbs).await.operation_type);
    }
    assert_eq!(
        kinds,
        vec![
            OperationType::Drop,
            OperationType::Drop,
            OperationType::DropDatabase,
            OperationType::Invalidate
        ]
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next(&mut all).await.document_key.unwrap());
    }
    assert_eq!(
        seen,
        vec![doc! {"_id": 1}, doc! {"_id": 2}, doc! {"_id": 3}]
    );
}

#[tokio::test]
async fn update_lookup_and_pipeline() {
    let s = testkit::spawn().await;
    let c = s.client.database("cs").collection::<Document>("p");
    let mut cs = c
        .watch()
        .pipeline(vec![doc! {"$match": {"operationType": "update"}}])
        .full_document(FullDocumentType::UpdateLookup)
        .await
        .unwrap();
    c.insert_one(doc! {"_id": 1, "a": 1}).await.unwrap();
    c.update_one(doc! {"_id": 1}, doc! {"$set": {"a": 2}})
        .await
        .unwrap();
    let e = next(&mut cs).await;
    assert_eq!(e.operation_type, OperationType::Update);
    assert_eq!(e.full_document, Some(doc! {"_id": 1, "a": 2}));
}

#[tokio::test]
async fn insert_many_arrives_in_one_batch_and_pbrt_advances() {
    let s = testkit::spawn().await;
    let db = s.client.database("cs");
    db.create_collection("b").await.unwrap();
    let r = db
        .run_command(doc! {"aggregate": "b", "pipeline": [{"$changeStream": {}}], "cursor": {}})
        .await
        .unwrap();
    let cur = r.get_document("cursor").unwrap();
    let id = cur.get_i64("id").unwrap();
    assert_ne!(id, 0);
    assert_eq!(cur.get_str("ns").unwrap(), "cs.b");
    let pbrt0 = cur
        .get_document("postBatchResumeToken")
        .unwrap()
        .get_str("_data")
        .unwrap()
        .to_string();
    // Writes elsewhere advance the high-water mark.
    db.collection::<Document>("elsewhere")
        .insert_one(doc! {"x": 1})
        .await
        .unwrap();
    let r = db
        .run_command(doc! {"getMore": id, "collection": "b", "maxTimeMS": 200})
        .await
        .unwrap();
    let cur = r.get_document("cursor").unwrap();
    assert!(cur.get_array("nextBatch").unwrap().is_empty());
    let pbrt1 = cur
        .get_document("postBatchResumeToken")
        .unwrap()
        .get_str("_data")
        .unwrap()
        .to_string();
    assert!(pbrt1 > pbrt0, "{pbrt1} > {pbrt0}");
    db.collection::<Document>("b")
        .insert_many((0..50).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    let r = db
        .run_command(doc! {"getMore": id, "collection": "b", "maxTimeMS": 2000})
        .await
        .unwrap();
    let cur = r.get_document("cursor").unwrap();
    let batch = cur.get_array("nextBatch").unwrap();
    assert_eq!(batch.len(), 50);
    let last_id = batch[49]
        .as_document()
        .unwrap()
        .get_document("_id")
        .unwrap()
        .clone();
    assert_eq!(cur.get_document("postBatchResumeToken").unwrap(), &last_id);
    // killCursors, then getMore: CursorNotFound.
    db.run_command(doc! {"killCursors": "b", "cursors": [id]})
        .await
        .unwrap();
    let (code, _) = cmd_error(&db, doc! {"getMore": id, "collection": "b"}).await;
    assert_eq!(code, 43);
    // A projection that drops _id fails at getMore with 280.
    let r = db.run_command(doc! {"aggregate": "b", "pipeline": [{"$changeStream": {}}, {"$project": {"_id": 0}}], "cursor": {}}).await.unwrap();
    let id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    db.collection::<Document>("b")
        .insert_one(doc! {"_id": 100})
        .await
        .unwrap();
    let (code, _) = cmd_error(
        &db,
        doc! {"getMore": id, "collection": "b", "maxTimeMS": 2000},
    )
    .await;
    assert_eq!(code, 280);
}

#[tokio::test]
async fn concurrent_writers_are_delivered_in_commit_order_once() {
    let s = testkit::spawn().await;
    let c = s.client.database("cs").collection::<Document>("w");
    let mut cs = c.watch().await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                c.insert_one(doc! {"w": w, "i": i}).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut last = None;
    let mut per_writer = [0; 4];
    for _ in 0..200 {
        let e = next(&mut cs).await;
        let ct = e.cluster_time.unwrap();
        if let Some(l) = last {
            assert!(
                (ct.time, ct.increment) > l,
                "strictly increasing clusterTime"
            );
        }
        last = Some((ct.time, ct.increment));
        let d = e.full_document.unwrap();
        let w = d.get_i32("w").unwrap() as usize;
        assert_eq!(
            d.get_i32("i").unwrap(),
            per_writer[w],
            "each writer's events in its order"
        );
        per_writer[w] += 1;
    }
    assert_eq!(per_writer, [50; 4]);
}

#[tokio::test]
async fn resume_from_high_water_mark_misses_nothing() {
    let s = testkit::spawn().await;
    let db = s.client.database("cs");
    db.create_collection("h").await.unwrap();
    let r = db
        .run_command(doc! {"aggregate": "h", "pipeline": [{"$changeStream": {}}], "cursor": {}})
        .await
        .unwrap();
    let pbrt = r
        .get_document("cursor")
        .unwrap()
        .get_document("postBatchResumeToken")
        .unwrap()
        .clone();
    db.collection::<Document>("h")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    let r = db.run_command(doc! {"aggregate": "h", "pipeline": [{"$changeStream": {"resumeAfter": pbrt}}], "cursor": {}}).await.unwrap();
    let batch = cursor_batch(&r, "firstBatch");
    assert_eq!(
        batch.len(),
        1,
        "the insert right after the high-water mark is delivered"
    );
}

#[tokio::test]
async fn history_lost_when_the_oplog_has_moved_on() {
    let s = testkit::spawn_with(|c| c.oplog_size_mb = 1).await;
    let c = s.client.database("cs").collection::<Document>("lost");
    let mut cs = c.watch().await.unwrap();
    c.insert_one(doc! {"_id": -1}).await.unwrap();
    let first = next(&mut cs).await.id;
    let pad = "x".repeat(4000);
    for chunk in 0..10 {
        c.insert_many((0..100).map(|i| doc! {"_id": chunk * 100 + i, "pad": pad.clone()}))
            .await
            .unwrap();
    }
    let db = s.client.database("cs");
    let token = bson::to_document(&first).unwrap();
    let (code, _) = cmd_error(&db, doc! {"aggregate": "lost", "pipeline": [{"$changeStream": {"resumeAfter": token}}], "cursor": {}}).await;
    assert_eq!(code, 286);
    let oplog = s
        .client
        .database("local")
        .collection::<Document>("oplog.rs");
    assert!(
        oplog.count_documents(doc! {}).await.unwrap() < 1001,
        "the oplog was truncated"
    );
}

#[tokio::test]
async fn expanded_events_rename_and_start_after_invalidate() {
    let s = testkit::spawn().await;
    let db = s.client.database("ex");
    let r = db.run_command(doc! {"aggregate": 1, "pipeline": [{"$changeStream": {"showExpandedEvents": true}}], "cursor": {}}).await.unwrap();
    let id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    assert_eq!(
        r.get_document("cursor").unwrap().get_str("ns").unwrap(),
        "ex.$cmd.aggregate"
    );
    db.create_collection("a").await.unwrap();
    let uuid = db
        .run_command(doc! {"listCollections": 1, "filter": {"name": "a"}})
        .await
        .unwrap()
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()[0]
        .as_document()
        .unwrap()
        .get_document("info")
        .unwrap()
        .get("uuid")
        .unwrap()
        .clone();
    db.run_command(doc! {"createIndexes": "a", "indexes": [{"key": {"x": 1}, "name": "x_1"}]})
        .await
        .unwrap();
    db.run_command(doc! {"collMod": "a"}).await.unwrap();
    db.run_command(doc! {"dropIndexes": "a", "index": "x_1"})
        .await
        .unwrap();
    db.collection::<Document>("a")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    s.client
        .database("admin")
        .run_command(doc! {"renameCollection": "ex.a", "to": "ex.b"})
        .await
        .unwrap();
    let mut events: Vec<Document> = Vec::new();
    while events.len() < 6 {
        let r = db
            .run_command(doc! {"getMore": id, "collection": "$cmd.aggregate", "maxTimeMS": 2000})
            .await
            .unwrap();
        for e in r
            .get_document("cursor")
            .unwrap()
            .get_array("nextBatch")
            .unwrap()
        {
            events.push(e.as_document().unwrap().clone());
        }
    }
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e.get_str("operationType").unwrap())
        .collect();
    assert_eq!(
        kinds,
        vec![
            "create",
            "createIndexes",
            "modify",
            "dropIndexes",
            "insert",
            "rename"
        ]
    );
    for e in &events {
        assert_eq!(e.get("collectionUUID"), Some(&uuid), "{e}");
    }
    assert_eq!(
        events[0].get_document("operationDescription").unwrap(),
        &doc! {"idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}
    );
    assert_eq!(
        events[1].get_document("operationDescription").unwrap(),
        &doc! {"indexes": [{"v": 2, "key": {"x": 1}, "name": "x_1"}]}
    );
    assert_eq!(
        events[5].get_document("to").unwrap(),
        &doc! {"db": "ex", "coll": "b"}
    );
    assert_eq!(
        events[5].get_document("operationDescription").unwrap(),
        &doc! {"to": {"db": "ex", "coll": "b"}}
    );

    // A collection stream on the renamed-away collection is invalidated; startAfter that
    // invalidate sees the collection when it comes back, resumeAfter is refused.
    let coll = db.collection::<Document>("b");
    let mut cs = coll.watch().await.unwrap();
    coll.drop().await.unwrap();
    assert_eq!(next(&mut cs).await.operation_type, OperationType::Drop);
    let inv = next(&mut cs).await;
    assert_eq!(inv.operation_type, OperationType::Invalidate);
    let t = bson::to_document(&inv.id).unwrap();
    let (code, _) = cmd_error(&db, doc! {"aggregate": "b", "pipeline": [{"$changeStream": {"resumeAfter": t.clone()}}], "cursor": {}}).await;
    assert_eq!(code, 260);
    let mut again = coll.watch().start_after(inv.id.clone()).await.unwrap();
    coll.insert_one(doc! {"_id": "back"}).await.unwrap();
    assert_eq!(
        next(&mut again).await.document_key,
        Some(doc! {"_id": "back"})
    );
}

#[tokio::test]
async fn start_at_operation_time_and_pre_images() {
    let s = testkit::spawn().await;
    let db = s.client.database("t");
    db.run_command(doc! {"create": "img", "changeStreamPreAndPostImages": {"enabled": true}})
        .await
        .unwrap();
    let c = db.collection::<Document>("img");
    c.insert_one(doc! {"_id": 1, "v": 1}).await.unwrap();
    let ping = db.run_command(doc! {"ping": 1}).await.unwrap();
    let t = ping.get_timestamp("operationTime").unwrap();
    c.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 2}})
        .await
        .unwrap();
    c.delete_one(doc! {"_id": 1}).await.unwrap();
    // Starting at the insert's time includes the insert.
    let mut cs = c
        .watch()
        .start_at_operation_time(t)
        .full_document(FullDocumentType::WhenAvailable)
        .full_document_before_change(mongodb::options::FullDocumentBeforeChangeType::WhenAvailable)
        .await
        .unwrap();
    let e = next(&mut cs).await;
    assert_eq!(e.operation_type, OperationType::Insert);
    let e = next(&mut cs).await;
    assert_eq!(e.operation_type, OperationType::Update);
    assert_eq!(e.full_document_before_change, Some(doc! {"_id": 1, "v": 1}));
    assert_eq!(
        e.full_document,
        Some(doc! {"_id": 1, "v": 2}),
        "the post-image as of the event"
    );
    let e = next(&mut cs).await;
    assert_eq!(e.operation_type, OperationType::Delete);
    assert_eq!(e.full_document_before_change, Some(doc! {"_id": 1, "v": 2}));
}

#[tokio::test]
async fn kill_cursors_while_a_get_more_waits() {
    let s = testkit::spawn().await;
    let db = s.client.database("k");
    db.create_collection("c").await.unwrap();
    let r = db
        .run_command(doc! {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}})
        .await
        .unwrap();
    let id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    let waiter = {
        let db = s.client.database("k");
        tokio::spawn(async move {
            db.run_command(doc! {"getMore": id, "collection": "c", "maxTimeMS": 10_000})
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    db.run_command(doc! {"killCursors": "c", "cursors": [id]})
        .await
        .unwrap();
    let res = waiter.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the waiting getMore ended promptly"
    );
    if let Err(e) = res {
        assert!(
            e.to_string().contains("237") || e.to_string().contains("CursorKilled"),
            "{e}"
        );
    }
    let (code, _) = cmd_error(&db, doc! {"getMore": id, "collection": "c"}).await;
    assert_eq!(code, 43);
}

#[tokio::test]
async fn large_events_split_and_resume_mid_event() {
    let s = testkit::spawn().await;
    let db = s.client.database("big");
    db.run_command(doc! {"create": "c", "changeStreamPreAndPostImages": {"enabled": true}})
        .await
        .unwrap();
    let c = db.collection::<Document>("c");
    c.insert_one(doc! {"_id": 1, "v": "a".repeat(10 * 1024 * 1024)})
        .await
        .unwrap();
    let open = doc! {"aggregate": "c", "pipeline": [{"$changeStream": {"fullDocumentBeforeChange": "required"}}], "cursor": {}};
    let r = db.run_command(open).await.unwrap();
    let plain = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    let split = doc! {"aggregate": "c", "pipeline": [{"$changeStream": {"fullDocumentBeforeChange": "required"}}, {"$changeStreamSplitLargeEvent": {}}], "cursor": {}};
    let r = db.run_command(split.clone()).await.unwrap();
    let id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    c.update_one(
        doc! {"_id": 1},
        doc! {"$set": {"v": "b".repeat(10 * 1024 * 1024)}},
    )
    .await
    .unwrap();
    // Without splitting, the 20 MB event fails the stream.
    let (code, _) = cmd_error(
        &db,
        doc! {"getMore": plain, "collection": "c", "maxTimeMS": 2000},
    )
    .await;
    assert_eq!(code, 10334);
    let mut frags: Vec<Document> = Vec::new();
    while frags.len() < 2 {
        let r = db
            .run_command(doc! {"getMore": id, "collection": "c", "maxTimeMS": 2000})
            .await
            .unwrap();
        for e in r
            .get_document("cursor")
            .unwrap()
            .get_array("nextBatch")
            .unwrap()
        {
            frags.push(e.as_document().unwrap().clone());
        }
    }
    assert_eq!(
        frags[0].get_document("splitEvent").unwrap(),
        &doc! {"fragment": 1, "of": 2}
    );
    assert_eq!(
        frags[1].get_document("splitEvent").unwrap(),
        &doc! {"fragment": 2, "of": 2}
    );
    // Reassembled, the fragments are the whole event.
    let mut whole = Document::new();
    for f in &frags {
        for (k, v) in f {
            if k != "_id" && k != "splitEvent" {
                whole.insert(k.clone(), v.clone());
            }
        }
    }
    assert_eq!(whole.get_str("operationType").unwrap(), "update");
    assert_eq!(
        whole
            .get_document("fullDocumentBeforeChange")
            .unwrap()
            .get_str("v")
            .unwrap()
            .len(),
        10 * 1024 * 1024
    );
    assert!(whole.get_document("updateDescription").is_ok());
    // Resuming from the first fragment yields the second.
    let mut resume = split.clone();
    resume.get_array_mut("pipeline").unwrap()[0]
        .as_document_mut()
        .unwrap()
        .get_document_mut("$changeStream")
        .unwrap()
        .insert("resumeAfter", frags[0].get_document("_id").unwrap().clone());
    let r = db.run_command(resume).await.unwrap();
    let first = cursor_batch(&r, "firstBatch");
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0]
            .as_document()
            .unwrap()
            .get_document("splitEvent")
            .unwrap(),
        &doc! {"fragment": 2, "of": 2}
    );
}

#[tokio::test]
async fn an_open_stream_that_falls_behind_truncation_loses_history() {
    let s = testkit::spawn_with(|c| c.oplog_size_mb = 1).await;
    let db = s.client.database("cs");
    db.create_collection("behind").await.unwrap();
    let r = db
        .run_command(
            doc! {"aggregate": "behind", "pipeline": [{"$changeStream": {}}], "cursor": {}},
        )
        .await
        .unwrap();
    let id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    let c = db.collection::<Document>("behind");
    let pad = "x".repeat(4000);
    for chunk in 0..10 {
        c.insert_many((0..100).map(|i| doc! {"_id": chunk * 100 + i, "pad": pad.clone()}))
            .await
            .unwrap();
    }
    let (code, _) = cmd_error(
        &db,
        doc! {"getMore": id, "collection": "behind", "maxTimeMS": 1000},
    )
    .await;
    assert_eq!(code, 286);
}

/// The update event's (fullDocument, fullDocumentBeforeChange) for `_id: 1` with
/// `whenAvailable` for both, read by resuming at `t`.
async fn images_at(
    db: &mongodb::Database,
    coll: &str,
    t: bson::Timestamp,
) -> (Option<Document>, Option<Document>) {
    let r = db
        .run_command(doc! {"aggregate": coll, "pipeline": [
            {"$changeStream": {"startAtOperationTime": t, "fullDocument": "whenAvailable", "fullDocumentBeforeChange": "whenAvailable"}},
            {"$match": {"operationType": "update"}}], "cursor": {}})
        .await
        .unwrap();
    let batch = cursor_batch(&r, "firstBatch");
    let e = batch[0].as_document().unwrap();
    let get = |k: &str| match e.get(k) {
        Some(bson::Bson::Document(d)) => Some(d.clone()),
        Some(bson::Bson::Null) => None,
        other => panic!("{k} must be present (null when unavailable), got {other:?}"),
    };
    (get("fullDocument"), get("fullDocumentBeforeChange"))
}

#[tokio::test]
async fn image_modes_enablement_and_expiry() {
    let s = testkit::spawn().await;
    let db = s.client.database("img");
    let admin = s.client.database("admin");
    let c = db.collection::<Document>("c");
    c.insert_one(doc! {"_id": 1, "v": 0}).await.unwrap();
    let t0 = db
        .run_command(doc! {"ping": 1})
        .await
        .unwrap()
        .get_timestamp("operationTime")
        .unwrap();
    // Disabled at the time of the write: no images.
    c.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 1}})
        .await
        .unwrap();
    assert_eq!(images_at(&db, "c", t0).await, (None, None));
    let (code, _) = cmd_error(&db, doc! {"aggregate": "c", "pipeline": [{"$changeStream": {"startAtOperationTime": t0, "fullDocumentBeforeChange": "required"}}], "cursor": {}}).await;
    assert_eq!(code, 47, "required with no pre-image fails the stream");
    // Enabled after that write: the earlier event still has none; later writes have both.
    db.run_command(doc! {"collMod": "c", "changeStreamPreAndPostImages": {"enabled": true}})
        .await
        .unwrap();
    assert_eq!(images_at(&db, "c", t0).await, (None, None));
    let t1 = db
        .run_command(doc! {"ping": 1})
        .await
        .unwrap()
        .get_timestamp("operationTime")
        .unwrap();
    c.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 2}})
        .await
        .unwrap();
    let t1 = bson::Timestamp {
        time: t1.time,
        increment: t1.increment + 1,
    };
    assert_eq!(
        images_at(&db, "c", t1).await,
        (Some(doc! {"_id": 1, "v": 2}), Some(doc! {"_id": 1, "v": 1}))
    );
    // The pre-image is readable where MongoDB keeps it.
    let pre = s
        .client
        .database("config")
        .collection::<Document>("system.preimages")
        .find_one(doc! {})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        pre.get_document("preImage").unwrap(),
        &doc! {"_id": 1, "v": 1}
    );
    assert!(pre.get_document("_id").unwrap().get_timestamp("ts").is_ok());
    // Expiry by time.
    let p = admin
        .run_command(doc! {"getClusterParameter": "changeStreamOptions"})
        .await
        .unwrap();
    let first = p.get_array("clusterParameters").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(
        first
            .get_document("preAndPostImages")
            .unwrap()
            .get_str("expireAfterSeconds")
            .unwrap(),
        "off"
    );
    let (code, _) = cmd_error(&admin, doc! {"setClusterParameter": {"changeStreamOptions": {"preAndPostImages": {"expireAfterSeconds": -1}}}}).await;
    assert_eq!(code, 2);
    admin.run_command(doc! {"setClusterParameter": {"changeStreamOptions": {"preAndPostImages": {"expireAfterSeconds": 1}}}}).await.unwrap();
    let mut gone = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if images_at(&db, "c", t1).await == (None, None) {
            gone = true;
            break;
        }
    }
    assert!(gone, "images older than expireAfterSeconds are removed");
    let p = admin
        .run_command(doc! {"getClusterParameter": ["changeStreamOptions"]})
        .await
        .unwrap();
    let first = p.get_array("clusterParameters").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(
        first
            .get_document("preAndPostImages")
            .unwrap()
            .get_i64("expireAfterSeconds")
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn images_go_with_their_truncated_oplog_entries() {
    let s = testkit::spawn_with(|c| c.oplog_size_mb = 1).await;
    let db = s.client.database("img");
    db.run_command(doc! {"create": "t", "changeStreamPreAndPostImages": {"enabled": true}})
        .await
        .unwrap();
    let c = db.collection::<Document>("t");
    c.insert_one(doc! {"_id": 1, "v": 0}).await.unwrap();
    c.update_one(doc! {"_id": 1}, doc! {"$set": {"v": 1}})
        .await
        .unwrap();
    let pre = s
        .client
        .database("config")
        .collection::<Document>("system.preimages");
    assert_eq!(pre.count_documents(doc! {}).await.unwrap(), 1);
    let pad = "x".repeat(4000);
    for chunk in 0..10 {
        c.insert_many((0..100).map(|i| doc! {"_id": 10 + chunk * 100 + i, "pad": pad.clone()}))
            .await
            .unwrap();
    }
    assert_eq!(
        pre.count_documents(doc! {}).await.unwrap(),
        0,
        "the image left with its oplog entry"
    );
}

#[tokio::test]
async fn fifteen_mb_document_with_both_images_splits_and_resumes_mid_event() {
    let s = testkit::spawn().await;
    let db = s.client.database("big");
    db.run_command(doc! {"create": "f", "changeStreamPreAndPostImages": {"enabled": true}})
        .await
        .unwrap();
    let c = db.collection::<Document>("f");
    let mb15 = 15 * 1024 * 1024;
    c.insert_one(doc! {"_id": 1, "v": "a".repeat(mb15)})
        .await
        .unwrap();
    let open = doc! {"aggregate": "f", "pipeline": [
    {"$changeStream": {"fullDocument": "required", "fullDocumentBeforeChange": "required"}},
    {"$match": {"operationType": "update"}},
    {"$changeStreamSplitLargeEvent": {}}], "cursor": {}};
    let r = db.run_command(open.clone()).await.unwrap();
    let id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    c.update_one(doc! {"_id": 1}, doc! {"$set": {"v": "b".repeat(mb15)}})
        .await
        .unwrap();
    let mut frags: Vec<Document> = Vec::new();
    while frags.len() < 3 {
        let r = db
            .run_command(doc! {"getMore": id, "collection": "f", "maxTimeMS": 3000})
            .await
            .unwrap();
        for e in r
            .get_document("cursor")
            .unwrap()
            .get_array("nextBatch")
            .unwrap()
        {
            frags.push(e.as_document().unwrap().clone());
        }
    }
    let mut whole = Document::new();
    for (i, f) in frags.iter().enumerate() {
        assert_eq!(
            f.get_document("splitEvent").unwrap(),
            &doc! {"fragment": i as i32 + 1, "of": 3}
        );
        for (k, v) in f {
            if k != "_id" && k != "splitEvent" {
                whole.insert(k.clone(), v.clone());
            }
        }
    }
    assert_eq!(
        whole
            .get_document("fullDocument")
            .unwrap()
            .get_str("v")
            .unwrap(),
        "b".repeat(mb15)
    );
    assert_eq!(
        whole
            .get_document("fullDocumentBeforeChange")
            .unwrap()
            .get_str("v")
            .unwrap(),
        "a".repeat(mb15)
    );
    assert_eq!(
        whole
            .get_document("updateDescription")
            .unwrap()
            .get_document("updatedFields")
            .unwrap()
            .get_str("v")
            .unwrap()
            .len(),
        mb15
    );
    // Resume from the middle fragment: the last one follows.
    let mut resume = open;
    resume.get_array_mut("pipeline").unwrap()[0]
        .as_document_mut()
        .unwrap()
        .get_document_mut("$changeStream")
        .unwrap()
        .insert("resumeAfter", frags[1].get_document("_id").unwrap().clone());
    let r = db.run_command(resume).await.unwrap();
    let first = cursor_batch(&r, "firstBatch");
    assert_eq!(first.len(), 1);
    assert_eq!(
        first[0]
            .as_document()
            .unwrap()
            .get_document("splitEvent")
            .unwrap(),
        &doc! {"fragment": 3, "of": 3}
    );
}

#[tokio::test]
async fn min_retention_keeps_history_past_the_size_bound() {
    let s = testkit::spawn_with(|c| {
        c.oplog_size_mb = 1;
        c.oplog_min_retention_hours = Some(1.0);
    })
    .await;
    let c = s.client.database("keep").collection::<Document>("c");
    let mut cs = c.watch().await.unwrap();
    c.insert_one(doc! {"_id": -1}).await.unwrap();
    let first = next(&mut cs).await.id;
    let pad = "x".repeat(4000);
    for chunk in 0..10 {
        c.insert_many((0..100).map(|i| doc! {"_id": chunk * 100 + i, "pad": pad.clone()}))
            .await
            .unwrap();
    }
    let oplog = s
        .client
        .database("local")
        .collection::<Document>("oplog.rs");
    assert!(
        oplog.count_documents(doc! {"ns": "keep.c"}).await.unwrap() >= 1001,
        "nothing younger than an hour is truncated"
    );
    let mut resumed = c.watch().resume_after(first).await.unwrap();
    assert_eq!(next(&mut resumed).await.document_key, Some(doc! {"_id": 0}));
    let status = s
        .client
        .database("admin")
        .run_command(doc! {"replSetGetStatus": 1})
        .await
        .unwrap();
    let o = status.get_document("oplog").unwrap();
    assert!(o.get_timestamp("earliestOptime").unwrap() <= o.get_timestamp("latestOptime").unwrap());
}

/// The reply limit (MongoDB's BSONObjMaxInternalSize: 16 MiB of user data + 16 KiB).
const MAX_REPLY: usize = 16 * 1024 * 1024 + 16 * 1024;

/// Opens a stream on `coll` with an empty first batch; `pipeline` follows `$changeStream`.
async fn open_stream(db: &mongodb::Database, coll: &str, pipeline: Vec<Document>) -> i64 {
    let mut stages = vec![doc! {"$changeStream": {}}];
    stages.extend(pipeline);
    let r = db
        .run_command(doc! {"aggregate": coll, "pipeline": stages, "cursor": {"batchSize": 0}})
        .await
        .unwrap();
    r.get_document("cursor").unwrap().get_i64("id").unwrap()
}

/// Reads `want` events with getMore, checking that every reply fits the message limit and
/// that events come in order (`fullDocument._id` or `documentKey._id` counting up); returns
/// the sizes of the replies.
async fn drain_sized(db: &mongodb::Database, coll: &str, id: i64, want: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut seen = 0usize;
    while seen < want {
        let r = db
            .run_command(doc! {"getMore": id, "collection": coll, "maxTimeMS": 5000})
            .await
            .unwrap();
        let n = bson::to_vec(&r).unwrap().len();
        assert!(n <= MAX_REPLY, "a reply of {n} bytes is over {MAX_REPLY}");
        let batch = cursor_batch(&r, "nextBatch");
        assert!(!batch.is_empty(), "events were waiting");
        for ev in batch {
            let key = ev
                .as_document()
                .unwrap()
                .get_document("documentKey")
                .unwrap();
            assert_eq!(
                key.get_i32("_id").unwrap() as usize,
                seen,
                "in order, none lost"
            );
            seen += 1;
        }
        sizes.push(n);
    }
    assert_eq!(seen, want);
    sizes
}

#[tokio::test]
async fn backlog_batches_stay_under_the_reply_limit() {
    let s = testkit::spawn().await;
    let db = s.client.database("big");
    // 100,000 tiny events, their full documents projected out: it is the array's element
    // headers that a byte count of the events alone misses.
    let c = db.collection::<Document>("tiny");
    let id = open_stream(&db, "tiny", vec![doc! {"$project": {"fullDocument": 0}}]).await;
    for chunk in (0..100_000).collect::<Vec<i32>>().chunks(10_000) {
        c.insert_many(chunk.iter().map(|i| doc! {"_id": i}))
            .await
            .unwrap();
    }
    let sizes = drain_sized(&db, "tiny", id, 100_000).await;
    assert!(
        sizes[0] > 15 * 1024 * 1024,
        "a backlog fills its batches: {sizes:?}"
    );
    // 1,000 events of 16 KiB.
    let c = db.collection::<Document>("mid");
    let id = open_stream(&db, "mid", vec![]).await;
    let pad = "p".repeat(16 * 1024);
    for chunk in (0..1_000).collect::<Vec<i32>>().chunks(100) {
        c.insert_many(chunk.iter().map(|i| doc! {"_id": i, "pad": &pad}))
            .await
            .unwrap();
    }
    drain_sized(&db, "mid", id, 1_000).await;
    // Small events around one just under the limit: it comes alone in its batch.
    let c = db.collection::<Document>("edge");
    let id = open_stream(&db, "edge", vec![]).await;
    for i in 0..3 {
        c.insert_one(doc! {"_id": i}).await.unwrap();
    }
    let big = "b".repeat(16 * 1024 * 1024 - 2048);
    c.insert_one(doc! {"_id": 3, "pad": big}).await.unwrap();
    for i in 4..7 {
        c.insert_one(doc! {"_id": i}).await.unwrap();
    }
    let sizes = drain_sized(&db, "edge", id, 7).await;
    assert!(
        sizes.iter().any(|n| *n > 16 * 1024 * 1024 - 4096),
        "the big event was delivered: {sizes:?}"
    );
}

/// Source: the seed's "Collation" section (change streams, MongoDB 4.2+): a stream's
/// comparisons use the `collation` given when it is opened, and simple binary comparison
/// otherwise, never the collection's default collation.
#[tokio::test]
async fn streams_compare_under_their_own_collation() {
    let s = testkit::spawn().await;
    let db = s.client.database("coll");
    db.run_command(doc! {"create": "c", "collation": {"locale": "en", "strength": 2}})
        .await
        .unwrap();
    let c = db.collection::<Document>("c");
    let pipeline = vec![doc! {"$match": {"fullDocument.name": "a"}}];
    let mut ci = c
        .watch()
        .pipeline(pipeline.clone())
        .collation(
            mongodb::options::Collation::builder()
                .locale("en")
                .strength(mongodb::options::CollationStrength::Secondary)
                .build(),
        )
        .await
        .unwrap();
    let mut plain = c.watch().pipeline(pipeline).await.unwrap();
    c.insert_one(doc! {"_id": 1, "name": "A"}).await.unwrap();
    c.insert_one(doc! {"_id": 2, "name": "a"}).await.unwrap();
    let e = next(&mut ci).await;
    assert_eq!(e.document_key, Some(doc! {"_id": 1}), "case-insensitive");
    let e = next(&mut ci).await;
    assert_eq!(e.document_key, Some(doc! {"_id": 2}));
    let e = next(&mut plain).await;
    assert_eq!(
        e.document_key,
        Some(doc! {"_id": 2}),
        "binary, not the collection's default"
    );
    let (code, _) = cmd_error(
        &db,
        doc! {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}, "collation": {"locale": "xx-nope"}},
    )
    .await;
    assert!(code != 0);
}

/// A fresh server reports operationTime (0, 0) before its first write; a stream started
/// at that time (as a driver resumes a stream that saw no event yet) loses nothing.
#[tokio::test]
async fn a_stream_from_time_zero_on_a_fresh_server_sees_the_first_write() {
    let s = testkit::spawn().await;
    let db = s.client.database("fresh");
    let r = db
        .run_command(doc! {"aggregate": "c", "pipeline": [{"$changeStream": {"startAtOperationTime": bson::Timestamp {time: 0, increment: 0}}}], "cursor": {}})
        .await
        .unwrap();
    let id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    db.collection::<Document>("c")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    let r = db
        .run_command(doc! {"getMore": id, "collection": "c", "maxTimeMS": 2000})
        .await
        .unwrap();
    let batch = cursor_batch(&r, "nextBatch");
    assert_eq!(batch.len(), 1, "{r}");
}

/// Laggards take turns building batches of history (a bounded number at once), and a
/// reader that stops reading its socket gives its turn up after a moment: two stalled
/// readers do not keep two others from draining the same backlog completely and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_laggards_do_not_hold_up_the_others() {
    use tokio::io::AsyncWriteExt;
    let s = testkit::spawn().await;
    let db = s.client.database("lag");
    db.collection::<Document>("seed")
        .insert_one(doc! {})
        .await
        .unwrap();
    let start = db.run_command(doc! {"ping": 1}).await.unwrap();
    let start = start.get_timestamp("operationTime").unwrap();
    let c = db.collection::<Document>("c");
    let pad = "p".repeat(1_000);
    const N: i32 = 40_000;
    for chunk in (0..N).collect::<Vec<i32>>().chunks(1_000) {
        c.insert_many(chunk.iter().map(|i| doc! {"_id": i, "pad": &pad}))
            .await
            .unwrap();
    }
    let open = || async {
        let r = db
            .run_command(doc! {"aggregate": "c", "pipeline": [{"$changeStream": {"startAtOperationTime": start}}], "cursor": {"batchSize": 0}})
            .await
            .unwrap();
        r.get_document("cursor").unwrap().get_i64("id").unwrap()
    };
    // Two readers ask for 16 MB of history and never read the reply.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let id = open().await;
        let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
            .await
            .unwrap();
        let cmd = doc! {"getMore": id, "collection": "c", "$db": "lag"};
        sock.write_all(&wire::encode_msg_request(1, &cmd, &[], false, None))
            .await
            .unwrap();
        stalled.push(sock);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let drain = |id: i64| {
        let db = db.clone();
        async move {
            let mut next = 0;
            while next < N {
                let r = db
                    .run_command(doc! {"getMore": id, "collection": "c", "maxTimeMS": 1000})
                    .await
                    .unwrap();
                for ev in r
                    .get_document("cursor")
                    .unwrap()
                    .get_array("nextBatch")
                    .unwrap()
                {
                    let k = ev
                        .as_document()
                        .unwrap()
                        .get_document("documentKey")
                        .unwrap();
                    assert_eq!(k.get_i32("_id").unwrap(), next, "in order");
                    next += 1;
                }
            }
        }
    };
    let (a, b) = (open().await, open().await);
    tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(drain(a), drain(b));
    })
    .await
    .expect("the other laggards drained the backlog");
    drop(stalled);
}
