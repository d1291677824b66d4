// transactions: isolation, conflicts, atomic commit, their change events, crash safety,
// lifetime limits, and snapshot reads outside transactions.

use std::time::Duration;

use bson::{Document, doc};
use futures_util::StreamExt;
use mongodb::change_stream::event::{ChangeStreamEvent, OperationType};
use mongodb::error::{ErrorKind, TRANSIENT_TRANSACTION_ERROR};

use crate::cursor_batch;

async fn next(
    cs: &mut mongodb::change_stream::ChangeStream<ChangeStreamEvent<Document>>,
) -> ChangeStreamEvent<Document> {
    tokio::time::timeout(Duration::from_secs(10), cs.next())
        .await
        .expect("event in time")
        .expect("stream open")
        .expect("no error")
}

fn code_of(e: &mongodb::error::Error) -> i32 {
    match &*e.kind {
        ErrorKind::Command(c) => c.code,
        ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => w.code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test]
async fn reads_see_own_writes_and_others_see_nothing_until_commit() {
    let s = testkit::spawn().await;
    let c = s.client.database("tx").collection::<Document>("c");
    c.insert_one(doc! {"_id": 0, "n": 0}).await.unwrap();
    let mut session = s.client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    c.insert_one(doc! {"_id": 1, "n": 1})
        .session(&mut session)
        .await
        .unwrap();
    c.update_one(doc! {"_id": 0}, doc! {"$inc": {"n": 10}})
        .session(&mut session)
        .await
        .unwrap();
    // Inside: both writes, through the index planner and a full scan alike.
    let inside: Vec<Document> = c
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .session(&mut session)
        .await
        .unwrap()
        .stream(&mut session)
        .map(|d| d.unwrap())
        .collect()
        .await;
    assert_eq!(
        inside,
        vec![doc! {"_id": 0, "n": 10}, doc! {"_id": 1, "n": 1}]
    );
    let by_id = c
        .find_one(doc! {"_id": 1})
        .session(&mut session)
        .await
        .unwrap();
    assert_eq!(by_id, Some(doc! {"_id": 1, "n": 1}));
    // Outside: nothing yet.
    assert_eq!(c.count_documents(doc! {}).await.unwrap(), 1);
    assert_eq!(
        c.find_one(doc! {"_id": 0}).await.unwrap(),
        Some(doc! {"_id": 0, "n": 0})
    );
    session.commit_transaction().await.unwrap();
    assert_eq!(c.count_documents(doc! {}).await.unwrap(), 2);
    assert_eq!(
        c.find_one(doc! {"_id": 0}).await.unwrap(),
        Some(doc! {"_id": 0, "n": 10})
    );
}

#[tokio::test]
async fn concurrent_transactions_on_the_same_document_one_conflicts() {
    let s = testkit::spawn().await;
    let c = s.client.database("tx").collection::<Document>("c");
    c.insert_one(doc! {"_id": 1, "n": 0}).await.unwrap();
    let mut a = s.client.start_session().await.unwrap();
    let mut b = s.client.start_session().await.unwrap();
    a.start_transaction().await.unwrap();
    b.start_transaction().await.unwrap();
    c.update_one(doc! {"_id": 1}, doc! {"$inc": {"n": 1}})
        .session(&mut a)
        .await
        .unwrap();
    let e = c
        .update_one(doc! {"_id": 1}, doc! {"$inc": {"n": 100}})
        .session(&mut b)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), 112, "WriteConflict: {e}");
    assert!(e.contains_label(TRANSIENT_TRANSACTION_ERROR));
    // The loser's transaction is over; the winner commits.
    let e = b.commit_transaction().await.unwrap_err();
    assert_eq!(code_of(&e), 251, "NoSuchTransaction: {e}");
    a.commit_transaction().await.unwrap();
    assert_eq!(
        c.find_one(doc! {"_id": 1}).await.unwrap(),
        Some(doc! {"_id": 1, "n": 1})
    );
}

#[tokio::test]
async fn a_write_committed_after_the_snapshot_conflicts() {
    let s = testkit::spawn().await;
    let c = s.client.database("tx").collection::<Document>("c");
    c.insert_one(doc! {"_id": 1, "n": 0}).await.unwrap();
    let mut a = s.client.start_session().await.unwrap();
    a.start_transaction().await.unwrap();
    // The transaction's snapshot is taken by its first statement.
    assert_eq!(
        c.find_one(doc! {"_id": 1})
            .session(&mut a)
            .await
            .unwrap()
            .unwrap()
            .get_i32("n")
            .unwrap(),
        0
    );
    c.update_one(doc! {"_id": 1}, doc! {"$set": {"n": 5}})
        .await
        .unwrap();
    // Snapshot isolation: the later commit is invisible, and writing over it conflicts.
    assert_eq!(
        c.find_one(doc! {"_id": 1})
            .session(&mut a)
            .await
            .unwrap()
            .unwrap()
            .get_i32("n")
            .unwrap(),
        0
    );
    let e = c
        .update_one(doc! {"_id": 1}, doc! {"$inc": {"n": 1}})
        .session(&mut a)
        .await
        .unwrap_err();
    assert_eq!(code_of(&e), 112);
    assert_eq!(
        c.find_one(doc! {"_id": 1}).await.unwrap(),
        Some(doc! {"_id": 1, "n": 5})
    );
}

#[tokio::test]
async fn a_transaction_over_two_collections_is_one_atomic_group_of_events() {
    let s = testkit::spawn().await;
    let db = s.client.database("txcs");
    let a = db.collection::<Document>("a");
    let b = db.collection::<Document>("b");
    a.insert_one(doc! {"_id": 0}).await.unwrap();
    b.insert_one(doc! {"_id": 0}).await.unwrap();
    let mut cs = db.watch().await.unwrap();

    // An aborted transaction first: it must leave no trace in the stream.
    let mut session = s.client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    a.insert_one(doc! {"_id": "aborted"})
        .session(&mut session)
        .await
        .unwrap();
    session.abort_transaction().await.unwrap();

    session.start_transaction().await.unwrap();
    a.insert_one(doc! {"_id": 1})
        .session(&mut session)
        .await
        .unwrap();
    b.update_one(doc! {"_id": 0}, doc! {"$set": {"x": 1}})
        .session(&mut session)
        .await
        .unwrap();
    a.delete_one(doc! {"_id": 0})
        .session(&mut session)
        .await
        .unwrap();
    b.insert_one(doc! {"_id": 2})
        .session(&mut session)
        .await
        .unwrap();
    session.commit_transaction().await.unwrap();
    a.insert_one(doc! {"_id": "after"}).await.unwrap();

    let events = [
        next(&mut cs).await,
        next(&mut cs).await,
        next(&mut cs).await,
        next(&mut cs).await,
    ];
    let kinds: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.operation_type.clone(),
                e.ns.as_ref().unwrap().coll.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (OperationType::Insert, "a".to_string()),
            (OperationType::Update, "b".to_string()),
            (OperationType::Delete, "a".to_string()),
            (OperationType::Insert, "b".to_string()),
        ],
        "statement order, and nothing of the aborted transaction"
    );
    let lsid = events[0].lsid.clone().expect("lsid on transaction events");
    for e in &events {
        assert_eq!(e.cluster_time, events[0].cluster_time, "one clusterTime");
        assert_eq!(e.lsid.as_ref(), Some(&lsid));
        assert!(e.txn_number.is_some());
    }
    assert_eq!(events[0].txn_number, events[3].txn_number);
    // Distinct tokens, and resuming from the k-th yields k+1 onward.
    for k in 0..4 {
        let mut resumed = db.watch().resume_after(events[k].id.clone()).await.unwrap();
        for expected in events.iter().skip(k + 1) {
            let e = next(&mut resumed).await;
            assert_eq!(e.id, expected.id);
        }
        let e = next(&mut resumed).await;
        assert_eq!(e.document_key, Some(doc! {"_id": "after"}));
    }
    let after = next(&mut cs).await;
    assert_eq!(after.document_key, Some(doc! {"_id": "after"}));
    assert!(after.lsid.is_none() && after.txn_number.is_none());
}

#[tokio::test]
async fn create_collection_and_index_inside_a_transaction() {
    let s = testkit::spawn().await;
    let db = s.client.database("txddl");
    let mut session = s.client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    db.create_collection("fresh")
        .session(&mut session)
        .await
        .unwrap();
    let c = db.collection::<Document>("fresh");
    c.create_index(mongodb::IndexModel::builder().keys(doc! {"k": 1}).build())
        .session(&mut session)
        .await
        .unwrap();
    c.insert_one(doc! {"_id": 1, "k": 5})
        .session(&mut session)
        .await
        .unwrap();
    assert!(
        !db.list_collection_names()
            .await
            .unwrap()
            .contains(&"fresh".to_string()),
        "invisible before commit"
    );
    session.commit_transaction().await.unwrap();
    assert!(
        db.list_collection_names()
            .await
            .unwrap()
            .contains(&"fresh".to_string())
    );
    assert_eq!(c.count_documents(doc! {"k": 5}).await.unwrap(), 1);
    let names = c.list_index_names().await.unwrap();
    assert!(names.contains(&"k_1".to_string()), "{names:?}");
}

#[tokio::test]
async fn misuse_gets_mongodb_errors() {
    let s = testkit::spawn().await;
    let port = s.port;
    let lsid = doc! {"id": bson::Uuid::new()};
    let run = |cmd: Document| crate::raw_command(port, cmd);
    // A statement of a transaction that never started.
    let r = run(doc! {"find": "c", "lsid": lsid.clone(), "txnNumber": 1i64, "autocommit": false, "$db": "tx"}).await;
    assert_eq!(r.get_i32("code").unwrap(), 251, "{r}");
    assert_eq!(
        r.get_array("errorLabels").unwrap()[0].as_str(),
        Some("TransientTransactionError")
    );
    // count is not allowed inside one.
    let r = run(doc! {"count": "c", "lsid": lsid.clone(), "txnNumber": 1i64, "autocommit": false, "startTransaction": true, "$db": "tx"}).await;
    assert_eq!(r.get_i32("code").unwrap(), 263, "{r}");
    // Start, commit, then a retried commit answers the same; abort after commit fails.
    let r = run(doc! {"insert": "c", "documents": [{"_id": 1}], "lsid": lsid.clone(), "txnNumber": 2i64, "autocommit": false, "startTransaction": true, "$db": "tx"}).await;
    assert_eq!(r.get_f64("ok").unwrap(), 1.0, "{r}");
    // Only the first statement may carry a read concern.
    let r = run(doc! {"find": "c", "readConcern": {"level": "local"}, "lsid": lsid.clone(), "txnNumber": 2i64, "autocommit": false, "$db": "tx"}).await;
    assert_eq!(r.get_i32("code").unwrap(), 72, "{r}");
    // That was refused before it ran, so the transaction is still open; a failed
    // statement aborts it.
    let r = run(doc! {"insert": "c", "documents": [{"_id": 1}], "lsid": lsid.clone(), "txnNumber": 2i64, "autocommit": false, "$db": "tx"}).await;
    assert!(r.get_array("writeErrors").is_ok(), "duplicate _id: {r}");
    let r = run(doc! {"commitTransaction": 1, "lsid": lsid.clone(), "txnNumber": 2i64, "autocommit": false, "$db": "admin"}).await;
    assert_eq!(r.get_i32("code").unwrap(), 251, "{r}");
    let r = run(doc! {"insert": "c", "documents": [{"_id": 1}], "lsid": lsid.clone(), "txnNumber": 3i64, "autocommit": false, "startTransaction": true, "$db": "tx"}).await;
    assert_eq!(r.get_f64("ok").unwrap(), 1.0, "{r}");
    for _ in 0..2 {
        let r = run(doc! {"commitTransaction": 1, "lsid": lsid.clone(), "txnNumber": 3i64, "autocommit": false, "$db": "admin"}).await;
        assert_eq!(r.get_f64("ok").unwrap(), 1.0, "{r}");
    }
    let r = run(doc! {"abortTransaction": 1, "lsid": lsid.clone(), "txnNumber": 3i64, "autocommit": false, "$db": "admin"}).await;
    assert_eq!(
        r.get_str("codeName").unwrap(),
        "TransactionCommitted",
        "{r}"
    );
    // An older transaction number is too old.
    let r = run(doc! {"find": "c", "lsid": lsid.clone(), "txnNumber": 1i64, "autocommit": false, "startTransaction": true, "$db": "tx"}).await;
    assert_eq!(r.get_str("codeName").unwrap(), "TransactionTooOld", "{r}");
}

#[tokio::test]
async fn transactions_past_their_lifetime_and_ended_sessions_are_aborted() {
    let s = testkit::spawn().await;
    let admin = s.client.database("admin");
    admin
        .run_command(doc! {"setParameter": 1, "transactionLifetimeLimitSeconds": 1})
        .await
        .unwrap();
    let c = s.client.database("tx").collection::<Document>("c");
    let mut session = s.client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    c.insert_one(doc! {"_id": 1})
        .session(&mut session)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let e = session.commit_transaction().await.unwrap_err();
    assert_eq!(code_of(&e), 251, "{e}");
    assert_eq!(c.count_documents(doc! {}).await.unwrap(), 0);
    // Its lock went with it: another transaction may write the document.
    let mut other = s.client.start_session().await.unwrap();
    other.start_transaction().await.unwrap();
    c.insert_one(doc! {"_id": 1})
        .session(&mut other)
        .await
        .unwrap();
    other.commit_transaction().await.unwrap();

    // endSessions aborts an open transaction.
    let port = s.port;
    let lsid = doc! {"id": bson::Uuid::new()};
    let r = crate::raw_command(port, doc! {"insert": "c", "documents": [{"_id": 2}], "lsid": lsid.clone(), "txnNumber": 1i64, "autocommit": false, "startTransaction": true, "$db": "tx"}).await;
    assert_eq!(r.get_f64("ok").unwrap(), 1.0, "{r}");
    crate::raw_command(port, doc! {"endSessions": [lsid.clone()], "$db": "admin"}).await;
    let r = crate::raw_command(port, doc! {"commitTransaction": 1, "lsid": lsid, "txnNumber": 1i64, "autocommit": false, "$db": "admin"}).await;
    assert_eq!(r.get_i32("code").unwrap(), 251, "{r}");
    assert_eq!(c.count_documents(doc! {"_id": 2}).await.unwrap(), 0);
}

#[tokio::test]
async fn snapshot_reads_return_and_accept_at_cluster_time() {
    let s = testkit::spawn().await;
    let db = s.client.database("snap");
    let c = db.collection::<Document>("c");
    c.insert_many((0..3).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    let r = db
        .run_command(doc! {"find": "c", "readConcern": {"level": "snapshot"}, "batchSize": 1})
        .await
        .unwrap();
    let cursor = r.get_document("cursor").unwrap();
    let at = cursor.get_timestamp("atClusterTime").unwrap();
    c.insert_one(doc! {"_id": 3}).await.unwrap();
    c.delete_one(doc! {"_id": 0}).await.unwrap();
    // getMore continues the same snapshot.
    let more = db
        .run_command(doc! {"getMore": cursor.get_i64("id").unwrap(), "collection": "c"})
        .await
        .unwrap();
    assert_eq!(
        more.get_document("cursor")
            .unwrap()
            .get_array("nextBatch")
            .unwrap()
            .len(),
        2
    );
    // Reading at that time again sees the three documents, not the later writes.
    let again = db
        .run_command(doc! {"aggregate": "c", "pipeline": [{"$count": "n"}], "cursor": {}, "readConcern": {"level": "snapshot", "atClusterTime": at}})
        .await
        .unwrap();
    let first = cursor_batch(&again, "firstBatch");
    assert_eq!(first[0].as_document().unwrap().get_i32("n").unwrap(), 3);
    // A time long gone is refused.
    let old = bson::Timestamp {
        time: at.time - 3600,
        increment: 1,
    };
    let (code, _) = crate::cmd_error(
        &db,
        doc! {"find": "c", "readConcern": {"level": "snapshot", "atClusterTime": old}},
    )
    .await;
    assert_eq!(code, 239, "SnapshotTooOld");
    // Writes may not use snapshot read concern outside a transaction.
    let (code, _) = crate::cmd_error(
        &db,
        doc! {"insert": "c", "documents": [{"_id": 9}], "readConcern": {"level": "snapshot"}},
    )
    .await;
    assert_eq!(code, 72);
}

#[tokio::test]
async fn after_cluster_time_reads_what_was_seen_and_refuses_the_future() {
    let s = testkit::spawn().await;
    let db = s.client.database("cc");
    let c = db.collection::<Document>("c");
    c.insert_one(doc! {"_id": 1}).await.unwrap();
    let r = db.run_command(doc! {"ping": 1}).await.unwrap();
    let seen = r.get_timestamp("operationTime").unwrap();
    let r = db
        .run_command(
            doc! {"find": "c", "readConcern": {"level": "majority", "afterClusterTime": seen}},
        )
        .await
        .unwrap();
    let batch = cursor_batch(&r, "firstBatch");
    assert_eq!(batch.len(), 1, "the write before that time is visible");
    let ahead = bson::Timestamp {
        time: seen.time + 3600,
        increment: 1,
    };
    let (code, _) = crate::cmd_error(
        &db,
        doc! {"find": "c", "readConcern": {"level": "majority", "afterClusterTime": ahead}},
    )
    .await;
    assert_eq!(code, 72);
    // A causally consistent session through the driver.
    let mut session = s
        .client
        .start_session()
        .causal_consistency(true)
        .await
        .unwrap();
    c.insert_one(doc! {"_id": 2})
        .session(&mut session)
        .await
        .unwrap();
    assert_eq!(
        c.count_documents(doc! {})
            .session(&mut session)
            .await
            .unwrap(),
        2
    );
}

#[tokio::test]
async fn a_ddl_change_after_the_snapshot_conflicts_at_commit() {
    let s = testkit::spawn().await;
    let c = s.client.database("txddl2").collection::<Document>("c");
    c.insert_one(doc! {"_id": 0, "x": 0}).await.unwrap();
    let mut session = s.client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    c.insert_one(doc! {"_id": 1, "x": 1})
        .session(&mut session)
        .await
        .unwrap();
    // A unique index built meanwhile cannot see the transaction's document: committing
    // it would leave the document out of the index.
    c.create_index(
        mongodb::IndexModel::builder()
            .keys(doc! {"x": 1})
            .options(
                mongodb::options::IndexOptions::builder()
                    .unique(true)
                    .build(),
            )
            .build(),
    )
    .await
    .unwrap();
    let e = session.commit_transaction().await.unwrap_err();
    assert_eq!(code_of(&e), 112, "{e}");
    assert!(e.contains_label(TRANSIENT_TRANSACTION_ERROR));
    assert_eq!(c.count_documents(doc! {}).await.unwrap(), 1);
    // Retried as drivers do, the transaction commits and the index has the document.
    session.start_transaction().await.unwrap();
    c.insert_one(doc! {"_id": 1, "x": 1})
        .session(&mut session)
        .await
        .unwrap();
    session.commit_transaction().await.unwrap();
    assert_eq!(
        c.count_documents(doc! {"x": 1})
            .hint(mongodb::options::Hint::Name("x_1".into()))
            .await
            .unwrap(),
        1
    );
}

/// The README's recipe: read everything at one snapshot, then watch from just after it.
/// Under concurrent inserts every document is seen exactly once.
#[tokio::test]
async fn snapshot_then_watch_sees_every_document_exactly_once() {
    let s = testkit::spawn().await;
    let db = s.client.database("recipe");
    let c = db.collection::<Document>("c");
    c.insert_many((0..200).map(|i| doc! {"_id": i}))
        .await
        .unwrap();
    let writer = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 200..1200 {
                c.insert_one(doc! {"_id": i}).await.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = db
        .run_command(doc! {"find": "c", "readConcern": {"level": "snapshot"}, "batchSize": 10})
        .await
        .unwrap();
    let cursor = r.get_document("cursor").unwrap();
    let at = cursor.get_timestamp("atClusterTime").unwrap();
    let mut seen: Vec<i32> = cursor
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|d| d.as_document().unwrap().get_i32("_id").unwrap())
        .collect();
    let mut id = cursor.get_i64("id").unwrap();
    while id != 0 {
        let more = db
            .run_command(doc! {"getMore": id, "collection": "c", "batchSize": 10})
            .await
            .unwrap();
        let cur = more.get_document("cursor").unwrap();
        seen.extend(
            cur.get_array("nextBatch")
                .unwrap()
                .iter()
                .map(|d| d.as_document().unwrap().get_i32("_id").unwrap()),
        );
        id = cur.get_i64("id").unwrap();
    }
    let start = bson::Timestamp {
        time: at.time,
        increment: at.increment + 1,
    };
    let mut cs = c.watch().start_at_operation_time(start).await.unwrap();
    writer.await.unwrap();
    while seen.len() < 1200 {
        let e = next(&mut cs).await;
        seen.push(e.document_key.unwrap().get_i32("_id").unwrap());
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "no document twice");
    assert_eq!(sorted, (0..1200).collect::<Vec<_>>(), "every document once");
}

#[tokio::test]
async fn a_committed_transaction_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::crash::free_port();
    let mut child = crate::crash::start(dir.path(), port).await;
    let lsid = doc! {"id": bson::Uuid::new()};
    for (i, coll) in ["a", "b"].iter().enumerate() {
        let mut cmd = doc! {"insert": *coll, "documents": [{"_id": i as i32}], "lsid": lsid.clone(), "txnNumber": 1i64, "autocommit": false, "$db": "crash"};
        if i == 0 {
            cmd.insert("startTransaction", true);
        }
        let r = crate::raw_command(port, cmd).await;
        assert_eq!(r.get_f64("ok").unwrap(), 1.0, "{r}");
    }
    let commit = doc! {"commitTransaction": 1, "lsid": lsid.clone(), "txnNumber": 1i64, "autocommit": false, "$db": "admin"};
    let r = crate::raw_command(port, commit.clone()).await;
    assert_eq!(r.get_f64("ok").unwrap(), 1.0, "{r}");
    // Killed right after the acknowledgement, before any other write.
    child.start_kill().unwrap();
    child.wait().await.unwrap();

    let _child = crate::crash::start(dir.path(), port).await;
    let client = testkit::client_for(port).await;
    let db = client.database("crash");
    for coll in ["a", "b"] {
        assert_eq!(
            db.collection::<Document>(coll)
                .count_documents(doc! {})
                .await
                .unwrap(),
            1,
            "{coll}"
        );
    }
    // The applyOps entry is there, and a retried commit still answers ok.
    let oplog = client.database("local").collection::<Document>("oplog.rs");
    assert_eq!(
        oplog
            .count_documents(doc! {"o.applyOps": {"$exists": true}})
            .await
            .unwrap(),
        1
    );
    let r = crate::raw_command(port, commit).await;
    assert_eq!(r.get_f64("ok").unwrap(), 1.0, "{r}");
}

#[tokio::test]
async fn pre_and_post_images_of_writes_inside_a_transaction() {
    let s = testkit::spawn().await;
    let db = s.client.database("tximg");
    db.run_command(doc! {"create": "c", "changeStreamPreAndPostImages": {"enabled": true}})
        .await
        .unwrap();
    let c = db.collection::<Document>("c");
    c.insert_many([doc! {"_id": 1, "v": 1}, doc! {"_id": 2, "v": 2}])
        .await
        .unwrap();
    let mut cs = c
        .watch()
        .full_document_before_change(mongodb::options::FullDocumentBeforeChangeType::Required)
        .full_document(mongodb::options::FullDocumentType::Required)
        .await
        .unwrap();
    let mut session = s.client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    c.update_one(doc! {"_id": 1}, doc! {"$inc": {"v": 10}})
        .session(&mut session)
        .await
        .unwrap();
    c.update_one(doc! {"_id": 2}, doc! {"$inc": {"v": 20}})
        .session(&mut session)
        .await
        .unwrap();
    c.update_one(doc! {"_id": 1}, doc! {"$inc": {"v": 100}})
        .session(&mut session)
        .await
        .unwrap();
    session.commit_transaction().await.unwrap();
    let expected = [
        (doc! {"_id": 1, "v": 1}, doc! {"_id": 1, "v": 11}),
        (doc! {"_id": 2, "v": 2}, doc! {"_id": 2, "v": 22}),
        (doc! {"_id": 1, "v": 11}, doc! {"_id": 1, "v": 111}),
    ];
    for (before, after) in expected {
        let e = next(&mut cs).await;
        assert_eq!(e.full_document_before_change, Some(before));
        assert_eq!(e.full_document, Some(after));
    }
    let images = s
        .client
        .database("config")
        .collection::<Document>("system.preimages")
        .count_documents(doc! {"_id.applyOpsIndex": {"$in": [0, 1, 2]}})
        .await
        .unwrap();
    assert!(images >= 3, "{images}");
}
