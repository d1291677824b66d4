// ops: currentOp, $currentOp and killOp show and stop what the server is doing.

use std::time::Duration;

use bson::{Document, doc};
use futures_util::TryStreamExt;
use mongodb::Database;

use crate::cmd_error;

async fn current(admin: &Database, filter: Document) -> Vec<Document> {
    let mut cmd = doc! {"currentOp": 1};
    cmd.extend(filter);
    let r = admin.run_command(cmd).await.unwrap();
    r.get_array("inprog")
        .unwrap()
        .iter()
        .map(|d| d.as_document().unwrap().clone())
        .collect()
}

/// Polls `currentOp` until an operation matching `filter` shows, and returns its opid.
async fn wait_for_op(admin: &Database, filter: Document) -> i64 {
    for _ in 0..500 {
        if let Some(op) = current(admin, filter.clone()).await.first() {
            return op.get_i64("opid").unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = current(admin, doc! {}).await;
    panic!("no operation matching {filter} showed in currentOp: {all:?}");
}

/// Source: https://www.mongodb.com/docs/v8.0/reference/command/currentOp/ and
/// https://www.mongodb.com/docs/v8.0/reference/command/killOp/: `currentOp` lists the
/// running operations (filtered by its other fields), `killOp` marks one killed and it
/// fails with Interrupted (11601) at its next interruption point; a killed `getMore` ends
/// its cursor. Both run only on `admin`.
// Two workers, as `eddy` has on this machine's two cores: a long scan must not hold up
// the other connections (it hands its worker's other tasks to another thread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_op_lists_and_kill_op_stops() {
    let s = testkit::spawn().await;
    let admin = s.client.database("admin");
    let db = s.client.database("ops");
    // A scan that runs for long: an unindexed self-join.
    let c = db.collection::<Document>("c");
    c.insert_many((0..3_000).map(|i| doc! {"_id": i, "k": i % 1_000}))
        .await
        .unwrap();
    let slow = {
        let db = db.clone();
        tokio::spawn(async move {
            // Nine million `$expr` evaluations: minutes, unless killed.
            db.run_command(doc! {"aggregate": "c", "pipeline": [
                {"$lookup": {"from": "c", "let": {"k": "$k"}, "pipeline": [
                    {"$match": {"$expr": {"$eq": [{"$mod": ["$k", 7]}, {"$mod": ["$$k", 7]}]}}},
                    {"$count": "n"},
                ], "as": "m"}},
                {"$count": "n"},
            ], "cursor": {}, "comment": "the slow one"})
                .await
        })
    };
    let opid = wait_for_op(&admin, doc! {"command.comment": "the slow one"}).await;
    // Meanwhile a new connection is served at once.
    let fresh = s.client().await;
    tokio::time::timeout(
        Duration::from_secs(5),
        fresh.database("admin").run_command(doc! {"ping": 1}),
    )
    .await
    .expect("a new connection is not starved by the scan")
    .unwrap();
    let op = current(&admin, doc! {"opid": opid}).await.remove(0);
    assert_eq!(op.get_str("ns").unwrap(), "ops.c", "{op}");
    assert_eq!(op.get_str("op").unwrap(), "command");
    assert!(op.get_bool("active").unwrap());
    assert_eq!(
        op.get_document("command")
            .unwrap()
            .get_str("aggregate")
            .unwrap(),
        "c"
    );
    assert!(op.contains_key("microsecs_running") && op.contains_key("client"));
    // currentOp sees itself.
    assert!(
        !current(&admin, doc! {"command.currentOp": {"$exists": true}})
            .await
            .is_empty()
    );
    let r = admin
        .run_command(doc! {"killOp": 1, "op": opid})
        .await
        .unwrap();
    assert_eq!(r.get_str("info").unwrap(), "attempting to kill op");
    let e = tokio::time::timeout(Duration::from_secs(30), slow)
        .await
        .expect("the killed operation ended")
        .unwrap()
        .unwrap_err();
    match *e.kind {
        mongodb::error::ErrorKind::Command(c) => assert_eq!(c.code, 11601, "{}", c.message),
        other => panic!("expected Interrupted, got {other:?}"),
    }
    assert!(
        current(&admin, doc! {"opid": opid}).await.is_empty(),
        "gone"
    );

    // A change stream getMore waiting for events, killed: Interrupted, and its cursor ends.
    let r = db
        .run_command(doc! {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}})
        .await
        .unwrap();
    let id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    let waiting = {
        let db = db.clone();
        tokio::spawn(async move {
            db.run_command(doc! {"getMore": id, "collection": "c", "maxTimeMS": 20_000})
                .await
        })
    };
    let opid = wait_for_op(&admin, doc! {"op": "getmore", "ns": "ops.c"}).await;
    let started = std::time::Instant::now();
    admin
        .run_command(doc! {"killOp": 1, "op": opid})
        .await
        .unwrap();
    let e = waiting.await.unwrap().unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "woken at once");
    match *e.kind {
        mongodb::error::ErrorKind::Command(c) => assert_eq!(c.code, 11601, "{}", c.message),
        other => panic!("expected Interrupted, got {other:?}"),
    }
    let (code, _) = cmd_error(&db, doc! {"getMore": id, "collection": "c"}).await;
    assert_eq!(code, 43, "CursorNotFound");

    // Errors.
    let (code, _) = cmd_error(&db, doc! {"currentOp": 1}).await;
    assert_eq!(code, 13);
    let (code, _) = cmd_error(&db, doc! {"killOp": 1, "op": 1}).await;
    assert_eq!(code, 13);
    let (code, _) = cmd_error(&admin, doc! {"killOp": 1}).await;
    assert_eq!(code, 40414);
    let (code, _) = cmd_error(&admin, doc! {"killOp": 1, "op": "x"}).await;
    assert_eq!(code, 14);
    // Killing an operation that is not running is not an error.
    admin
        .run_command(doc! {"killOp": 1, "op": 999_999})
        .await
        .unwrap();
}

/// Source: https://www.mongodb.com/docs/v8.0/reference/operator/aggregation/currentOp/:
/// `$currentOp` on `admin` with `{aggregate: 1}` yields the operations, and with
/// `idleConnections`, `idleCursors` and `idleSessions` (the default) the connections,
/// cursors and transactions idle between commands. Eddy's idle change stream cursors say
/// where the stream stands: how far behind the newest commit and how much it has queued.
#[tokio::test]
async fn current_op_stage_shows_idle_cursors_streams_and_sessions() {
    let s = testkit::spawn().await;
    let admin = s.client.database("admin");
    let db = s.client.database("ops2");
    let c = db.collection::<Document>("c");
    c.insert_one(doc! {"_id": 0}).await.unwrap();
    let r = db
        .run_command(doc! {"aggregate": "c", "pipeline": [{"$changeStream": {}}], "cursor": {}})
        .await
        .unwrap();
    let cs_id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    for i in 1..=5 {
        c.insert_one(doc! {"_id": i}).await.unwrap();
    }
    let r = db
        .run_command(doc! {"find": "c", "batchSize": 1})
        .await
        .unwrap();
    let find_id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    let mut session = s.client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    c.insert_one(doc! {"_id": 100})
        .session(&mut session)
        .await
        .unwrap();

    let stage = |spec: Document| async {
        let docs: Vec<Document> = admin
            .aggregate(vec![
                doc! {"$currentOp": spec},
                doc! {"$match": {"type": {"$ne": "op"}}},
            ])
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        docs
    };
    let docs = stage(doc! {"idleCursors": true}).await;
    let cursor_of = |docs: &[Document], id: i64| {
        docs.iter()
            .find(|d| {
                d.get_str("type") == Ok("idleCursor")
                    && d.get_document("cursor").unwrap().get_i64("cursorId") == Ok(id)
            })
            .cloned()
    };
    let cs = cursor_of(&docs, cs_id).expect("the stream's cursor");
    assert_eq!(cs.get_str("ns").unwrap(), "ops2.c");
    let status = cs
        .get_document("cursor")
        .unwrap()
        .get_document("changeStream")
        .unwrap()
        .clone();
    assert_eq!(status.get_i64("lagEntries").unwrap(), 5, "{status}");
    assert!(status.contains_key("resumeToken") && status.contains_key("lagSeconds"));
    let q = cursor_of(&docs, find_id).expect("the find cursor");
    assert!(
        !q.get_document("cursor")
            .unwrap()
            .contains_key("changeStream")
    );
    let idle: Vec<&Document> = docs
        .iter()
        .filter(|d| d.get_str("type") == Ok("idleSession"))
        .collect();
    assert_eq!(idle.len(), 1, "{docs:?}");
    assert_eq!(
        idle[0]
            .get_document("transaction")
            .unwrap()
            .get_document("parameters")
            .unwrap()
            .get_i64("txnNumber")
            .unwrap(),
        1
    );
    // Without idleCursors no cursors; with idleSessions: false no sessions.
    let docs = stage(doc! {"idleSessions": false}).await;
    assert!(docs.is_empty(), "{docs:?}");
    // Read the events: the stream has caught up.
    let r = db
        .run_command(doc! {"getMore": cs_id, "collection": "c", "maxTimeMS": 1000})
        .await
        .unwrap();
    let n = r
        .get_document("cursor")
        .unwrap()
        .get_array("nextBatch")
        .unwrap()
        .len();
    assert_eq!(n, 5);
    let docs = stage(doc! {"idleCursors": true, "idleSessions": false}).await;
    let status = cursor_of(&docs, cs_id).unwrap();
    let status = status
        .get_document("cursor")
        .unwrap()
        .get_document("changeStream")
        .unwrap();
    assert_eq!(status.get_i64("lagEntries").unwrap(), 0, "{status}");
    // Idle connections: at least this client's pooled ones.
    let docs: Vec<Document> = admin
        .aggregate(vec![
            doc! {"$currentOp": {"idleConnections": true, "idleSessions": false}},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(
        docs.iter().any(|d| d.get_bool("active") == Ok(true)),
        "itself"
    );
    session.abort_transaction().await.unwrap();
    // Only on admin, with {aggregate: 1}; options are checked.
    let (code, _) = cmd_error(
        &db,
        doc! {"aggregate": 1, "pipeline": [{"$currentOp": {}}], "cursor": {}},
    )
    .await;
    assert_eq!(code, 73);
    let (code, _) = cmd_error(
        &admin,
        doc! {"aggregate": 1, "pipeline": [{"$currentOp": {"bogus": true}}], "cursor": {}},
    )
    .await;
    assert_eq!(code, 9);
    let (code, _) = cmd_error(
        &admin,
        doc! {"aggregate": 1, "pipeline": [{"$currentOp": {"idleCursors": 1}}], "cursor": {}},
    )
    .await;
    assert_eq!(code, 14);
}
