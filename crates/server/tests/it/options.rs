// options: what Eddy accepts it honours: write concern it cannot meet is reported,
// re-creating `_id_` is a no-op, statistics are measured, and the log is kept and tunable.

use std::time::Duration;

use bson::{Bson, Document, doc};
use mongodb::Database;

use crate::{cmd_error, cursor_batch, doc_num};

async fn run(db: &Database, cmd: Document) -> Document {
    db.run_command(cmd).await.unwrap()
}

/// Source: https://www.mongodb.com/docs/v8.0/reference/write-concern/ and MongoDB's
/// behaviour on a one-member replica set: the write is applied and `writeConcernError`
/// says why the concern cannot be met, at once rather than after `wtimeout`.
#[tokio::test]
async fn unmet_write_concern_is_reported() {
    let s = testkit::spawn().await;
    let db = s.client.database("wc");
    let t = std::time::Instant::now();
    let r = run(
        &db,
        doc! {"insert": "c", "documents": [{"_id": 1}], "writeConcern": {"w": 2, "wtimeout": 1000}},
    )
    .await;
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "no wait for wtimeout"
    );
    assert_eq!(doc_num(&r, "n"), 1, "{r}");
    let wce = r
        .get_document("writeConcernError")
        .expect("writeConcernError");
    assert_eq!(doc_num(wce, "code"), 100);
    assert_eq!(
        wce.get_str("codeName").unwrap(),
        "UnsatisfiableWriteConcern"
    );
    assert_eq!(
        wce.get_document("errInfo").unwrap(),
        &doc! {"writeConcern": {"w": 2i64, "wtimeout": 1000, "provenance": "clientSupplied"}}
    );
    // The write happened.
    let n = db
        .collection::<Document>("c")
        .count_documents(doc! {})
        .await
        .unwrap();
    assert_eq!(n, 1);

    // An unknown tag.
    let r = run(&db, doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"a": 1}}}], "writeConcern": {"w": "dc-east"}}).await;
    assert_eq!(
        r.get_document("writeConcernError")
            .unwrap()
            .get_i32("code")
            .unwrap(),
        79
    );
    // Met ones carry no error.
    for wc in [
        doc! {"w": 1},
        doc! {"w": "majority", "j": true},
        doc! {"w": 1, "wtimeout": 5},
    ] {
        let r = run(&db, doc! {"delete": "c", "deletes": [{"q": {"_id": 99}, "limit": 1}], "writeConcern": wc.clone()}).await;
        assert!(!r.contains_key("writeConcernError"), "{wc}: {r}");
    }
    // DDL reports it too.
    let r = run(&db, doc! {"create": "d", "writeConcern": {"w": 3}}).await;
    assert_eq!(
        r.get_document("writeConcernError")
            .unwrap()
            .get_i32("code")
            .unwrap(),
        100
    );
    // Malformed ones and commands that take none are refused before anything runs.
    let (code, _) = cmd_error(
        &db,
        doc! {"insert": "c", "documents": [{"_id": 2}], "writeConcern": {"w": -1}},
    )
    .await;
    assert_eq!(code, 9);
    let (code, _) = cmd_error(
        &db,
        doc! {"insert": "c", "documents": [{"_id": 2}], "writeConcern": {"w": 1, "bogus": 1}},
    )
    .await;
    assert_eq!(code, 40415);
    let (code, _) = cmd_error(
        &db,
        doc! {"insert": "c", "documents": [{"_id": 2}], "writeConcern": {"fsync": true, "j": true}},
    )
    .await;
    assert_eq!(code, 9);
    let (code, name) = cmd_error(&db, doc! {"find": "c", "writeConcern": {"w": 1}}).await;
    assert_eq!((code, name.as_str()), (72, "InvalidOptions"));
    assert!(
        db.collection::<Document>("c")
            .find_one(doc! {"_id": 2})
            .await
            .unwrap()
            .is_none()
    );
}

/// Source: restore tools replay `listIndexes`, `_id_` included; MongoDB answers
/// "all indexes already exist".
#[tokio::test]
async fn recreating_id_index_is_a_no_op() {
    let s = testkit::spawn().await;
    let db = s.client.database("idx");
    run(&db, doc! {"insert": "c", "documents": [{"_id": 1}]}).await;
    let r = run(
        &db,
        doc! {"createIndexes": "c", "indexes": [{"key": {"_id": 1}, "name": "_id_"}]},
    )
    .await;
    assert_eq!(doc_num(&r, "numIndexesBefore"), 1, "{r}");
    assert_eq!(doc_num(&r, "numIndexesAfter"), 1);
    assert_eq!(r.get_str("note").unwrap(), "all indexes already exist");
    assert!(!r.contains_key("createdCollectionAutomatically"));
    // On a collection that does not exist yet, it creates the collection only.
    let r = run(
        &db,
        doc! {"createIndexes": "fresh", "indexes": [{"key": {"_id": 1}, "name": "_id_", "v": 2}]},
    )
    .await;
    assert!(r.get_bool("createdCollectionAutomatically").unwrap(), "{r}");
    let ix = run(&db, doc! {"listIndexes": "fresh"}).await;
    let batch = cursor_batch(&ix, "firstBatch");
    assert_eq!(batch.len(), 1);
    // `_id_` with another key or a unique flag is still refused.
    let (code, _) = cmd_error(
        &db,
        doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "_id_"}]},
    )
    .await;
    assert_eq!(code, 2);
    let (code, _) = cmd_error(&db, doc! {"createIndexes": "c", "indexes": [{"key": {"_id": 1}, "name": "_id_", "unique": true}]}).await;
    assert_eq!(code, 197);
}

/// Source: https://www.mongodb.com/docs/v8.0/reference/command/dbStats/ and
/// https://www.mongodb.com/docs/v8.0/reference/command/collStats/
#[tokio::test]
async fn stats_measure_the_data() {
    let s = testkit::spawn().await;
    let db = s.client.database("st");
    let docs: Vec<Document> = (0..100)
        .map(|i| doc! {"_id": i, "a": i % 10, "pad": "x".repeat(100)})
        .collect();
    let one = bson::to_vec(&docs[0]).unwrap().len() as i64;
    run(&db, doc! {"insert": "c", "documents": docs}).await;
    run(
        &db,
        doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_1"}]},
    )
    .await;
    run(&db, doc! {"create": "v", "viewOn": "c", "pipeline": []}).await;

    for spelling in ["dbStats", "dbstats"] {
        let st = run(&db, doc! {spelling: 1}).await;
        assert_eq!(st.get_str("db").unwrap(), "st");
        assert_eq!(doc_num(&st, "collections"), 1, "{st}");
        assert_eq!(doc_num(&st, "views"), 1);
        assert_eq!(st.get_i64("objects").unwrap(), 100);
        let data = doc_num(&st, "dataSize");
        assert!((100 * one - 100..=100 * one + 100).contains(&data), "{st}");
        assert!(doc_num(&st, "storageSize") >= data);
        assert_eq!(doc_num(&st, "indexes"), 2);
        assert!(doc_num(&st, "indexSize") > 0);
        assert_eq!(doc_num(&st, "avgObjSize"), data / 100);
    }
    let scaled = run(&db, doc! {"dbStats": 1, "scale": 1024}).await;
    assert_eq!(doc_num(&scaled, "scaleFactor"), 1024);
    let (code, _) = cmd_error(&db, doc! {"dbStats": 1, "scale": 0}).await;
    assert_eq!(code, 2);

    for spelling in ["collStats", "collstats"] {
        let cs = run(&db, doc! {spelling: "c"}).await;
        assert_eq!(cs.get_str("ns").unwrap(), "st.c");
        assert_eq!(
            cs.get_i32("count")
                .unwrap_or_else(|_| cs.get_i64("count").unwrap() as i32),
            100
        );
        let size = doc_num(&cs, "size");
        assert!((100 * one - 100..=100 * one + 100).contains(&size), "{cs}");
        assert_eq!(doc_num(&cs, "avgObjSize"), size / 100);
        assert!(doc_num(&cs, "storageSize") >= size);
        let sizes = cs.get_document("indexSizes").unwrap();
        assert!(
            doc_num(sizes, "_id_") > 0 && doc_num(sizes, "a_1") > 0,
            "{cs}"
        );
        assert_eq!(
            doc_num(&cs, "totalIndexSize"),
            doc_num(sizes, "_id_") + doc_num(sizes, "a_1")
        );
        assert_eq!(doc_num(&cs, "nindexes"), 2);
    }
    // $collStats, as mongosh's db.c.stats() asks.
    let cur = run(&db, doc! {"aggregate": "c", "pipeline": [{"$collStats": {"storageStats": {}, "count": {}}}], "cursor": {}}).await;
    let first = cur
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(first.get_str("ns").unwrap(), "st.c");
    assert_eq!(
        doc_num(first.get_document("storageStats").unwrap(), "count"),
        100
    );
    assert_eq!(doc_num(&first, "count"), 100);
    let (code, _) = cmd_error(
        &db,
        doc! {"aggregate": "c", "pipeline": [{"$match": {}}, {"$collStats": {}}], "cursor": {}},
    )
    .await;
    assert_eq!(code, 40602);

    // show dbs and the local database, as db.printReplicationInfo() reads them.
    let dbs = run(&s.client.database("admin"), doc! {"listDatabases": 1}).await;
    let names: Vec<&str> = dbs
        .get_array("databases")
        .unwrap()
        .iter()
        .map(|d| d.as_document().unwrap().get_str("name").unwrap())
        .collect();
    for n in ["admin", "config", "local", "st"] {
        assert!(names.contains(&n), "{names:?}");
    }
    let local = s.client.database("local");
    let colls = local.list_collection_names().await.unwrap();
    assert!(colls.contains(&"oplog.rs".to_string()), "{colls:?}");
    let os = run(&local, doc! {"collStats": "oplog.rs"}).await;
    assert!(os.get_bool("capped").unwrap());
    assert_eq!(doc_num(&os, "maxSize"), 1024 * 1024 * 1024);
    assert!(doc_num(&os, "count") >= 103, "{os}");
    let est = local
        .collection::<Document>("oplog.rs")
        .estimated_document_count()
        .await
        .unwrap();
    assert_eq!(est as i64, doc_num(&os, "count"));
}

/// Source: https://www.mongodb.com/docs/v8.0/reference/command/getLog/,
/// https://www.mongodb.com/docs/v8.0/reference/log-messages/ (JSON lines, "Slow query"
/// id 51803) and https://www.mongodb.com/docs/v8.0/reference/method/db.setLogLevel/.
/// The log belongs to the process, so this runs the `eddy` binary.
#[tokio::test]
async fn get_log_keeps_recent_lines_and_verbosity_is_tunable() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::crash::free_port();
    let _child = crate::crash::start_with(dir.path(), port, &[]).await;
    let client = testkit::client_for(port).await;
    let admin = client.database("admin");
    let db = client.database("logs");

    let names = run(&admin, doc! {"getLog": "*"}).await;
    assert_eq!(
        names.get_array("names").unwrap(),
        &vec![Bson::from("global"), Bson::from("startupWarnings")]
    );
    let (code, _) = cmd_error(&admin, doc! {"getLog": "nope"}).await;
    assert_eq!(code, 96);

    // --quiet logs warnings only: a slow operation leaves no line until `command` is
    // raised to verbosity 0 (info), and a failure none until verbosity 1 (debug).
    let was = run(&db, doc! {"profile": 0, "slowms": 0}).await;
    assert_eq!(doc_num(&was, "slowms"), 100);
    let r = run(
        &admin,
        doc! {"setParameter": 1, "logComponentVerbosity": {"command": {"verbosity": 1}}},
    )
    .await;
    assert_eq!(
        r.get_document("was")
            .unwrap()
            .get_document("command")
            .unwrap()
            .get_i32("verbosity")
            .unwrap(),
        -1
    );
    let p = run(&admin, doc! {"getParameter": 1, "logComponentVerbosity": 1}).await;
    assert_eq!(
        p.get_document("logComponentVerbosity")
            .unwrap()
            .get_document("command")
            .unwrap()
            .get_i32("verbosity")
            .unwrap(),
        1
    );

    let docs: Vec<Document> = (0..5000).map(|i| doc! {"_id": i, "k": i}).collect();
    run(
        &db,
        doc! {"insert": "c", "documents": docs, "comment": "marker-slow"},
    )
    .await;
    let _ = db
        .run_command(doc! {"find": "c", "filter": {"$bogus": 1}, "comment": "marker-failed"})
        .await;

    let lines = global_log(&admin).await;
    let slow = lines
        .iter()
        .find(|l| l.get_str("msg") == Ok("Slow query") && l.to_string().contains("marker-slow"))
        .unwrap_or_else(|| panic!("no slow query line in {lines:?}"));
    assert_eq!(slow.get_str("s").unwrap(), "I");
    assert_eq!(slow.get_str("c").unwrap(), "COMMAND");
    assert_eq!(doc_num(slow, "id"), 51803);
    // `t` is {$date: ...}: extended JSON reads it back as a date.
    assert!(matches!(slow.get("t"), Some(Bson::DateTime(_))), "{slow}");
    let attr = slow.get_document("attr").unwrap();
    assert_eq!(attr.get_str("ns").unwrap(), "logs.c");
    assert_eq!(attr.get_str("type").unwrap(), "command");
    assert!(doc_num(attr, "durationMillis") >= 1);
    // A 5,000-document insert is too long to log whole.
    assert!(
        attr.get_document("command")
            .unwrap()
            .contains_key("$truncated")
    );
    let failed = lines
        .iter()
        .find(|l| doc_num(l, "id") == 21962 && l.to_string().contains("marker-failed"))
        .unwrap_or_else(|| panic!("no failed command line in {lines:?}"));
    assert_eq!(failed.get_str("s").unwrap(), "D1");
    assert_eq!(
        failed
            .get_document("attr")
            .unwrap()
            .get_str("errName")
            .unwrap(),
        "BadValue"
    );

    // Back to the default: failures are no longer logged.
    run(
        &admin,
        doc! {"setParameter": 1, "logComponentVerbosity": {"command": {"verbosity": -1}}},
    )
    .await;
    let _ = db
        .run_command(doc! {"find": "c", "filter": {"$bogus": 1}, "comment": "marker-quiet"})
        .await;
    // The global level works the same way (mongosh's db.setLogLevel(1)).
    let r = run(&admin, doc! {"setParameter": 1, "logLevel": 1}).await;
    assert_eq!(doc_num(&r, "was"), 0);
    let _ = db
        .run_command(doc! {"find": "c", "filter": {"$bogus": 1}, "comment": "marker-global"})
        .await;
    let lines = global_log(&admin).await;
    assert!(!lines.iter().any(|l| l.to_string().contains("marker-quiet")));
    assert!(
        lines
            .iter()
            .any(|l| l.to_string().contains("marker-global"))
    );
    let (code, _) = cmd_error(
        &admin,
        doc! {"setParameter": 1, "logComponentVerbosity": {"nosuch": {"verbosity": 1}}},
    )
    .await;
    assert_eq!(code, 2);

    // The profiler's `filter` is not implemented: refused, not ignored.
    let (code, _) = cmd_error(&db, doc! {"profile": 0, "filter": {"millis": {"$gt": 1}}}).await;
    assert_eq!(code, 2);
    let now = run(&db, doc! {"profile": -1}).await;
    assert_eq!(doc_num(&now, "was"), 0);
    assert_eq!(doc_num(&now, "slowms"), 0);
}

async fn global_log(admin: &Database) -> Vec<Document> {
    let r = run(admin, doc! {"getLog": "global"}).await;
    assert!(doc_num(&r, "totalLinesWritten") > 0);
    r.get_array("log")
        .unwrap()
        .iter()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l.as_str().unwrap()).unwrap_or_else(|e| panic!("{e}: {l}"));
            Bson::try_from(v).unwrap().as_document().unwrap().clone()
        })
        .collect()
}

/// Source: https://www.mongodb.com/docs/v8.0/reference/command/create/. The kinds of
/// collection Eddy does not implement yet (time-series, clustered, encrypted, and
/// engine settings) are refused with InvalidOptions (72) instead of being created as plain
/// collections that ignore them; the forms restore tools send that mean nothing are kept.
#[tokio::test]
async fn unsupported_collection_kinds_are_refused() {
    let s = testkit::spawn().await;
    let db = s.client.database("kinds");
    for opts in [
        doc! {"timeseries": {"timeField": "t", "metaField": "m", "granularity": "hours"}},
        doc! {"timeseries": {"timeField": "t"}, "expireAfterSeconds": 60},
        doc! {"clusteredIndex": {"key": {"_id": 1}, "unique": true}},
        doc! {"expireAfterSeconds": 60},
        doc! {"encryptedFields": {"fields": []}},
        doc! {"storageEngine": {"wiredTiger": {"configString": "block_compressor=zstd"}}},
        doc! {"indexOptionDefaults": {"storageEngine": {"wiredTiger": {}}}},
        doc! {"idIndex": {"key": {"_id": -1}, "name": "_id_"}},
        doc! {"autoIndexId": false},
    ] {
        let mut cmd = doc! {"create": "c"};
        cmd.extend(opts.clone());
        let (code, name) = cmd_error(&db, cmd).await;
        assert_eq!((code, name.as_str()), (72, "InvalidOptions"), "{opts}");
    }
    let names = db.list_collection_names().await.unwrap();
    assert!(names.is_empty(), "{names:?}");
    for (i, opts) in [
        doc! {"capped": false},
        doc! {"autoIndexId": true},
        doc! {"storageEngine": {}},
        doc! {"idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}},
    ]
    .into_iter()
    .enumerate()
    {
        let mut cmd = doc! {"create": format!("ok{i}")};
        cmd.extend(opts);
        run(&db, cmd).await;
    }
}

/// Source: https://www.mongodb.com/docs/v8.0/reference/explain-results/: executionStats
/// gives nReturned, executionTimeMillis, totalKeysExamined, totalDocsExamined and a stage
/// tree with works/advanced; an aggregate's query runs as `stages[0].$cursor`.
#[tokio::test]
async fn explain_reports_execution_stats() {
    let s = testkit::spawn().await;
    let db = s.client.database("ex");
    let c = db.collection::<Document>("c");
    c.insert_many((0..100).map(|i| doc! {"_id": i, "a": i, "b": i % 10}))
        .await
        .unwrap();
    c.create_index(mongodb::IndexModel::builder().keys(doc! {"a": 1}).build())
        .await
        .unwrap();
    let stats = |r: &Document| r.get_document("executionStats").unwrap().clone();

    let r = run(
        &db,
        doc! {"explain": {"find": "c", "filter": {"a": {"$gte": 90}}}, "verbosity": "executionStats"},
    )
    .await;
    let e = stats(&r);
    assert_eq!(doc_num(&e, "nReturned"), 10, "{e}");
    assert_eq!(doc_num(&e, "totalKeysExamined"), 10);
    assert_eq!(doc_num(&e, "totalDocsExamined"), 10);
    assert!(e.contains_key("executionTimeMillis"));
    let st = e.get_document("executionStages").unwrap();
    assert_eq!(st.get_str("stage").unwrap(), "FETCH");
    assert_eq!(doc_num(st, "advanced"), 10);
    assert_eq!(doc_num(st, "works"), 11);
    let ix = st.get_document("inputStage").unwrap();
    assert_eq!(ix.get_str("stage").unwrap(), "IXSCAN");
    assert_eq!(doc_num(ix, "keysExamined"), 10);

    // A collection scan with a blocking sort and a limit.
    let r = run(
        &db,
        doc! {"explain": {"find": "c", "filter": {"b": {"$lt": 3}}, "sort": {"b": -1}, "limit": 4}},
    )
    .await;
    let e = stats(&r);
    assert_eq!(doc_num(&e, "nReturned"), 4, "{e}");
    assert_eq!(doc_num(&e, "totalDocsExamined"), 100);
    assert_eq!(doc_num(&e, "totalKeysExamined"), 0);
    let st = e.get_document("executionStages").unwrap();
    assert_eq!(st.get_str("stage").unwrap(), "LIMIT");
    let sort = st.get_document("inputStage").unwrap();
    assert_eq!(sort.get_str("stage").unwrap(), "SORT");
    let scan = sort.get_document("inputStage").unwrap();
    assert_eq!(scan.get_str("stage").unwrap(), "COLLSCAN");
    assert_eq!(doc_num(scan, "nReturned"), 30);
    // queryPlanner verbosity runs nothing.
    let r = run(
        &db,
        doc! {"explain": {"count": "c", "query": {"b": 3}}, "verbosity": "queryPlanner"},
    )
    .await;
    assert!(!r.contains_key("executionStats"));

    // An aggregate's leading $match is planned like a find, shown as $cursor.
    let pipeline = vec![
        doc! {"$match": {"a": {"$lt": 5}}},
        doc! {"$group": {"_id": null, "n": {"$sum": 1}}},
    ];
    let r = run(
        &db,
        doc! {"explain": {"aggregate": "c", "pipeline": pipeline.clone(), "cursor": {}}, "verbosity": "executionStats"},
    )
    .await;
    let stages = r.get_array("stages").unwrap();
    let cursor = stages[0]
        .as_document()
        .unwrap()
        .get_document("$cursor")
        .unwrap();
    let qp = cursor.get_document("queryPlanner").unwrap();
    assert_eq!(
        qp.get_document("parsedQuery").unwrap(),
        &doc! {"a": {"$lt": 5}}
    );
    let wp = qp.get_document("winningPlan").unwrap();
    assert_eq!(
        wp.get_document("inputStage")
            .unwrap()
            .get_str("stage")
            .unwrap(),
        "IXSCAN"
    );
    assert_eq!(
        doc_num(cursor.get_document("executionStats").unwrap(), "nReturned"),
        5
    );
    assert!(stages[1].as_document().unwrap().contains_key("$group"));
    // aggregate with explain: true says the same.
    let r = run(
        &db,
        doc! {"aggregate": "c", "pipeline": pipeline, "explain": true},
    )
    .await;
    let stages = r.get_array("stages").unwrap();
    let wp = stages[0]
        .as_document()
        .unwrap()
        .get_document("$cursor")
        .unwrap()
        .get_document("queryPlanner")
        .unwrap()
        .get_document("winningPlan")
        .unwrap();
    assert_eq!(wp.get_str("stage").unwrap(), "FETCH");
}

/// The option census at work, through a driver: fields MongoDB does not have are unknown
/// (40415, as mongod's strict parsers say), and the ones Eddy does not implement are
/// refused rather than ignored. Source: mongod's find command IDL behaviour, and
/// https://www.mongodb.com/docs/v8.0/reference/command/find/ for the field list.
#[tokio::test]
async fn options_not_read_are_refused() {
    let s = testkit::spawn().await;
    let db = s.client.database("census");
    let c = db.collection::<Document>("c");
    c.insert_one(doc! {"_id": 1, "a": 1}).await.unwrap();
    c.create_index(
        mongodb::IndexModel::builder()
            .keys(doc! {"s": 1})
            .options(
                mongodb::options::IndexOptions::builder()
                    .sparse(true)
                    .build(),
            )
            .build(),
    )
    .await
    .unwrap();
    let (code, _) = cmd_error(&db, doc! {"find": "c", "filtr": {"a": 1}}).await;
    assert_eq!(code, 40415);
    let (code, _) = cmd_error(
        &db,
        doc! {"aggregate": "c", "pipeline": [], "cursor": {}, "exchange": {}},
    )
    .await;
    assert_eq!(code, 40415);
    for field in ["returnKey", "showRecordId"] {
        let mut cmd = doc! {"find": "c"};
        cmd.insert(field, true);
        assert_eq!(cmd_error(&db, cmd).await.0, 72, "{field}");
    }
    let (code, _) = cmd_error(&db, doc! {"find": "c", "min": {"a": 0}, "hint": {"a": 1}}).await;
    assert_eq!(code, 72);
    let (code, _) = cmd_error(&db, doc! {"find": "c", "tailable": true}).await;
    assert_eq!(code, 2);
    // What is read works: noCursorTimeout and the one-node no-ops are accepted.
    run(
        &db,
        doc! {"find": "c", "noCursorTimeout": true, "allowPartialResults": true, "batchSize": 0},
    )
    .await;
    let (code, _) = cmd_error(&db, doc! {"find": "c", "noCursorTimeout": 1}).await;
    assert_eq!(code, 14);
    // A write's hint must name an index; one that leaves documents out is refused.
    let r = run(
        &db,
        doc! {"update": "c", "updates": [{"q": {"a": 1}, "u": {"$set": {"b": 1}}, "hint": {"_id": 1}}]},
    )
    .await;
    assert_eq!(doc_num(&r, "nModified"), 1, "{r}");
    for hint in [doc! {"nope": 1}, doc! {"s": 1}] {
        let r = run(
            &db,
            doc! {"update": "c", "updates": [{"q": {"a": 1}, "u": {"$set": {"b": 2}}, "hint": hint.clone()}]},
        )
        .await;
        let code = r.get_array("writeErrors").unwrap()[0]
            .as_document()
            .unwrap()
            .get_i32("code")
            .unwrap();
        assert!(code == 2 || code == 72, "{hint}: {r}");
    }
    let (code, _) = cmd_error(
        &db,
        doc! {"findAndModify": "c", "query": {"a": 1}, "update": {"$set": {"b": 3}}, "hint": {"s": 1}},
    )
    .await;
    assert_eq!(code, 72);
    // Every write command takes bypassDocumentValidation (pymongo's bulk writer sends it
    // on deletes too).
    run(
        &db,
        doc! {"delete": "c", "deletes": [{"q": {"_id": 99}, "limit": 1}], "bypassDocumentValidation": true},
    )
    .await;
    // An error in a skipped document is not skipped.
    c.insert_many(vec![doc! {"_id": 2, "x": 0}, doc! {"_id": 3, "x": 1}])
        .await
        .unwrap();
    let bad = doc! {"$expr": {"$gt": [{"$divide": [1, "$x"]}, 0]}, "_id": {"$gte": 2}};
    let (code, _) = cmd_error(&db, doc! {"find": "c", "filter": bad.clone(), "skip": 1}).await;
    assert_ne!(code, 0);
    let (code, _) = cmd_error(&db, doc! {"count": "c", "query": bad, "skip": 1}).await;
    assert_ne!(code, 0);
}

/// Source: https://www.mongodb.com/docs/v8.0/reference/glossary/#std-term-natural-order and
/// https://www.mongodb.com/docs/v8.0/reference/operator/meta/natural/: a collection's
/// natural order is the order of its record ids (insertion order; an update keeps a
/// document's place), `$natural: 1 | -1` as a sort or hint scans forwards or backwards,
/// and a query with no sort returns documents in natural order.
#[tokio::test]
async fn natural_order_is_insertion_order() {
    let s = testkit::spawn().await;
    let db = s.client.database("nat");
    let c = db.collection::<Document>("c");
    for i in [3, 1, 2] {
        c.insert_one(doc! {"_id": i, "k": 10 - i}).await.unwrap();
    }
    async fn ids(db: &Database, extra: Document) -> Vec<i32> {
        let mut cmd = doc! {"find": "c"};
        cmd.extend(extra);
        let r = db.run_command(cmd).await.unwrap();
        r.get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap()
            .iter()
            .map(|d| d.as_document().unwrap().get_i32("_id").unwrap())
            .collect()
    }
    assert_eq!(ids(&db, doc! {}).await, [3, 1, 2]);
    assert_eq!(ids(&db, doc! {"sort": {"$natural": -1}}).await, [2, 1, 3]);
    assert_eq!(ids(&db, doc! {"sort": {"$natural": 1}}).await, [3, 1, 2]);
    assert_eq!(ids(&db, doc! {"hint": {"$natural": -1}}).await, [2, 1, 3]);
    assert_eq!(ids(&db, doc! {"hint": {"_id": 1}}).await, [1, 2, 3]);
    assert_eq!(ids(&db, doc! {"sort": {"_id": -1}}).await, [3, 2, 1]);
    // Batches across getMore keep the order.
    async fn ids_of(cursor: mongodb::Cursor<Document>) -> Vec<i32> {
        use futures_util::TryStreamExt;
        let docs: Vec<Document> = cursor.try_collect().await.unwrap();
        docs.iter().map(|d| d.get_i32("_id").unwrap()).collect()
    }
    let got = ids_of(
        c.find(doc! {})
            .sort(doc! {"$natural": -1})
            .batch_size(1)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got, [2, 1, 3]);
    // An update keeps its place, even one that grows the document; a delete and
    // re-insert goes last.
    c.update_one(doc! {"_id": 3}, doc! {"$set": {"pad": "x".repeat(10_000)}})
        .await
        .unwrap();
    c.delete_one(doc! {"_id": 1}).await.unwrap();
    c.insert_one(doc! {"_id": 1}).await.unwrap();
    assert_eq!(ids(&db, doc! {"projection": {"_id": 1}}).await, [3, 2, 1]);
    // Writes without a sort take the first match in natural order.
    c.delete_one(doc! {}).await.unwrap();
    assert_eq!(ids(&db, doc! {}).await, [2, 1]);
    let r = c
        .find_one_and_update(doc! {}, doc! {"$set": {"first": true}})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.get_i32("_id").unwrap(), 2);
    // Aggregation reads natural order too.
    let agg = ids_of(
        c.aggregate(vec![doc! {"$project": {"_id": 1}}])
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(agg, [2, 1]);
    // explain names the scans.
    let plan = |r: Document| {
        r.get_document("queryPlanner")
            .unwrap()
            .get_document("winningPlan")
            .unwrap()
            .clone()
    };
    let e = run(
        &db,
        doc! {"explain": {"find": "c", "sort": {"$natural": -1}}, "verbosity": "queryPlanner"},
    )
    .await;
    let w = plan(e);
    assert_eq!(w.get_str("stage").unwrap(), "COLLSCAN", "{w}");
    assert_eq!(w.get_str("direction").unwrap(), "backward", "{w}");
    let e = run(
        &db,
        doc! {"explain": {"find": "c", "sort": {"_id": 1}}, "verbosity": "queryPlanner"},
    )
    .await;
    let w = plan(e);
    assert_eq!(w.get_str("stage").unwrap(), "FETCH", "{w}");
    let ix = w.get_document("inputStage").unwrap();
    assert_eq!(ix.get_str("indexName").unwrap(), "_id_", "{w}");
    let (code, _) = cmd_error(&db, doc! {"find": "c", "hint": {"$natural": "up"}}).await;
    assert_eq!(code, 2);
}
