// limits: maxTimeMS interrupts reads, writes and commits; blocking sorts, groups, lookups
// and facets are held to MongoDB's memory limits, and spill to disk with allowDiskUse.

use bson::{Document, doc};
use futures_util::TryStreamExt;
use mongodb::Database;

use crate::cmd_error;

async fn run(db: &Database, cmd: Document) -> Document {
    db.run_command(cmd).await.unwrap()
}

async fn fill(db: &Database, coll: &str, n: i64, pad: usize) {
    let c = db.collection::<Document>(coll);
    let mut batch = Vec::new();
    for i in 0..n {
        batch.push(doc! {"_id": i, "k": (i * 7919) % 1000, "g": i % 50, "s": format!("item-{i}"), "pad": "p".repeat(pad)});
        if batch.len() == 1000 {
            c.insert_many(std::mem::take(&mut batch)).await.unwrap();
        }
    }
    if !batch.is_empty() {
        c.insert_many(batch).await.unwrap();
    }
}

async fn error_of(db: &Database, cmd: Document) -> (i32, String) {
    match db.run_command(cmd.clone()).await {
        Ok(r) => panic!("expected {cmd} to fail, got {r}"),
        Err(e) => match *e.kind {
            mongodb::error::ErrorKind::Command(c) => (c.code, c.message),
            other => panic!("expected a command error, got {other:?}"),
        },
    }
}

/// Source: https://www.mongodb.com/docs/v8.0/reference/method/cursor.maxTimeMS/ and
/// https://www.mongodb.com/docs/v8.0/tutorial/terminate-running-operations/: an operation
/// past its time limit fails with MaxTimeMSExpired (50); a cursor's limit covers the time
/// spent in its getMores, not the time between them.
#[tokio::test]
async fn max_time_ms_interrupts_reads_writes_and_commits() {
    let s = testkit::spawn().await;
    let db = s.client.database("mt");
    fill(&db, "c", 30_000, 0).await;

    // An unindexed regex find, a blocking sort and countDocuments (an aggregate), each
    // with maxTimeMS: 1, stop at the deadline.
    for cmd in [
        doc! {"find": "c", "filter": {"s": {"$regex": "^nomatch"}}, "maxTimeMS": 1},
        doc! {"aggregate": "c", "pipeline": [{"$sort": {"s": -1}}], "cursor": {}, "maxTimeMS": 1},
        doc! {"aggregate": "c", "pipeline": [{"$match": {}}, {"$group": {"_id": 1, "n": {"$sum": 1}}}], "cursor": {}, "maxTimeMS": 1},
        doc! {"count": "c", "query": {"s": {"$regex": "x"}}, "maxTimeMS": 1},
        doc! {"distinct": "c", "key": "s", "maxTimeMS": 1},
    ] {
        assert_eq!(cmd_error(&db, cmd).await.0, 50);
    }
    // The same, with room to finish, succeed.
    let r = run(
        &db,
        doc! {"count": "c", "query": {"s": {"$regex": "^item-1"}}, "maxTimeMS": 60_000},
    )
    .await;
    let n = r
        .get("n")
        .and_then(|v| v.as_i64().or(v.as_i32().map(i64::from)));
    assert_eq!(n, Some(11_111));

    // A multi-document update past its deadline fails as a whole, and changes nothing.
    let (code, _) = cmd_error(
        &db,
        doc! {"update": "c", "updates": [{"q": {"s": {"$regex": "item"}}, "u": {"$set": {"touched": true}}, "multi": true}], "maxTimeMS": 1},
    )
    .await;
    assert_eq!(code, 50);
    let touched = db
        .collection::<Document>("c")
        .count_documents(doc! {"touched": true})
        .await
        .unwrap();
    assert_eq!(touched, 0);

    // Malformed limits are refused, as mongod refuses them.
    for bad in [bson::bson!(-1), bson::bson!(1.5), bson::bson!("10")] {
        let (code, name) = cmd_error(&db, doc! {"find": "c", "maxTimeMS": bad}).await;
        assert_eq!((code, name.as_str()), (2, "BadValue"));
    }

    // getMore cannot set its own limit on a non-awaitData cursor; the find's limit
    // carries over, and idle time between batches does not count.
    let r = run(&db, doc! {"find": "c", "batchSize": 2, "maxTimeMS": 2_000}).await;
    let id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    let (code, _) = cmd_error(
        &db,
        doc! {"getMore": id, "collection": "c", "batchSize": 2, "maxTimeMS": 10},
    )
    .await;
    assert_eq!(code, 2);
    let r = run(&db, doc! {"find": "c", "batchSize": 2, "maxTimeMS": 300}).await;
    let id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let r = run(&db, doc! {"getMore": id, "collection": "c", "batchSize": 2}).await;
    assert_eq!(
        r.get_document("cursor")
            .unwrap()
            .get_array("nextBatch")
            .unwrap()
            .len(),
        2
    );

    // maxTimeAlwaysTimeOut: any operation with a limit fails at its first check.
    let admin = s.client.database("admin");
    run(
        &admin,
        doc! {"configureFailPoint": "maxTimeAlwaysTimeOut", "mode": "alwaysOn"},
    )
    .await;
    assert_eq!(
        cmd_error(&db, doc! {"ping": 1, "maxTimeMS": 10_000})
            .await
            .0,
        50
    );
    run(&db, doc! {"ping": 1}).await;
    // Transactions honour maxCommitTimeMS (sent as the commit's maxTimeMS).
    let mut session = s.client.start_session().await.unwrap();
    session
        .start_transaction()
        .max_commit_time(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    db.collection::<Document>("t")
        .insert_one(doc! {"_id": 1})
        .session(&mut session)
        .await
        .unwrap();
    let e = session.commit_transaction().await.unwrap_err();
    match *e.kind {
        mongodb::error::ErrorKind::Command(c) => assert_eq!(c.code, 50),
        other => panic!("expected MaxTimeMSExpired, got {other:?}"),
    }
    run(
        &admin,
        doc! {"configureFailPoint": "maxTimeAlwaysTimeOut", "mode": "off"},
    )
    .await;
    session.abort_transaction().await.ok();
}

async fn set_param(s: &testkit::TestServer, name: &str, v: impl Into<bson::Bson>) {
    let mut cmd = doc! {"setParameter": 1};
    cmd.insert(name, v.into());
    run(&s.client.database("admin"), cmd).await;
}

/// Source: https://www.mongodb.com/docs/v8.0/reference/operator/aggregation/sort/#-sort-operator-and-memory
/// and https://www.mongodb.com/docs/v8.0/reference/operator/aggregation/group/#-group-and-memory-restrictions:
/// blocking stages may use 100 MB; past it they spill to disk when allowDiskUse is true
/// (the default since 6.0, `allowDiskUseByDefault`) and fail with
/// QueryExceededMemoryLimitNoDiskUseAllowed (292) when it is false. The limits are the
/// server parameters `internalQueryMaxBlockingSortMemoryUsageBytes` and
/// `internalDocumentSourceGroupMaxMemoryBytes`, lowered here to 1 MiB.
#[tokio::test]
async fn blocking_stages_keep_to_the_memory_limit_or_spill() {
    let s = testkit::spawn().await;
    let db = s.client.database("mem");
    fill(&db, "c", 4_000, 1_000).await; // about 4 MB
    set_param(
        &s,
        "internalQueryMaxBlockingSortMemoryUsageBytes",
        1_048_576i64,
    )
    .await;
    set_param(
        &s,
        "internalDocumentSourceGroupMaxMemoryBytes",
        1_048_576i64,
    )
    .await;

    let sort = doc! {"$sort": {"k": 1, "_id": -1}};
    let (code, msg) = error_of(
        &db,
        doc! {"aggregate": "c", "pipeline": [sort.clone()], "cursor": {}, "allowDiskUse": false},
    )
    .await;
    assert_eq!(code, 292);
    assert_eq!(
        msg,
        "PlanExecutor error during aggregation :: caused by :: Sort exceeded memory limit of 1048576 bytes, but did not opt in to external sorting."
    );
    let (code, msg) = error_of(
        &db,
        doc! {"find": "c", "sort": {"k": 1}, "allowDiskUse": false},
    )
    .await;
    assert_eq!(code, 292);
    assert!(
        msg.starts_with("Executor error during find command :: caused by :: Sort exceeded memory limit of 1048576 bytes"),
        "{msg}"
    );

    // With allowDiskUse (by default), the sort spills and merges, in order.
    let c = db.collection::<Document>("c");
    for allow in [None, Some(true)] {
        let mut cmd = doc! {"aggregate": "c", "pipeline": [sort.clone(), {"$project": {"k": 1}}], "cursor": {}};
        if let Some(a) = allow {
            cmd.insert("allowDiskUse", a);
        }
        let docs: Vec<Document> = c
            .aggregate(vec![sort.clone(), doc! {"$project": {"k": 1}}])
            .allow_disk_use(allow.unwrap_or(true))
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(docs.len(), 4_000);
        assert!(docs.windows(2).all(|w| {
            let (a, b) = (&w[0], &w[1]);
            let (ka, kb) = (a.get_i64("k").unwrap(), b.get_i64("k").unwrap());
            ka < kb || (ka == kb && a.get_i64("_id").unwrap() > b.get_i64("_id").unwrap())
        }));
        run(&db, cmd).await;
    }
    let found: Vec<Document> = c
        .find(doc! {})
        .sort(doc! {"k": -1, "_id": 1})
        .projection(doc! {"k": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(found.len(), 4_000);
    assert_eq!(found[0].get_i64("k").unwrap(), 999);
    // A sort with a limit is top-k: it holds only k documents and needs no disk.
    let top = run(
        &db,
        doc! {"aggregate": "c", "pipeline": [sort.clone(), {"$limit": 3}], "cursor": {}, "allowDiskUse": false},
    )
    .await;
    assert_eq!(
        top.get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap()
            .len(),
        3
    );

    // $group: the same limit on its accumulated state.
    let group = doc! {"$group": {"_id": "$_id", "pads": {"$push": "$pad"}}};
    let (code, msg) = error_of(
        &db,
        doc! {"aggregate": "c", "pipeline": [group.clone()], "cursor": {}, "allowDiskUse": false},
    )
    .await;
    assert_eq!(code, 292);
    assert!(msg.contains("Exceeded memory limit for $group"), "{msg}");
    let groups: Vec<Document> = c
        .aggregate(vec![
            doc! {"$group": {"_id": "$g", "n": {"$sum": 1}, "first": {"$first": "$_id"}, "last": {"$last": "$_id"}, "pads": {"$push": "$pad"}}},
            doc! {"$project": {"n": 1, "first": 1, "last": 1, "np": {"$size": "$pads"}}},
            doc! {"$sort": {"_id": 1}},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(groups.len(), 50);
    for (g, d) in groups.iter().enumerate() {
        let g = g as i64;
        assert_eq!(d.get_i32("n").unwrap(), 80, "{d}");
        assert_eq!(d.get_i32("np").unwrap(), 80, "{d}");
        assert_eq!(d.get_i64("first").unwrap(), g, "{d}");
        assert_eq!(d.get_i64("last").unwrap(), 3_950 + g, "{d}");
    }

    // $lookup's matches and $facet's buffered input count toward the limit too.
    let (code, _) = error_of(
        &db,
        doc! {"aggregate": "c", "pipeline": [{"$limit": 1}, {"$lookup": {"from": "c", "pipeline": [], "as": "all"}}], "cursor": {}},
    )
    .await;
    assert_eq!(code, 4568);
    let facet = doc! {"$facet": {"n": [{"$count": "n"}], "top": [{"$sort": {"k": -1}}, {"$limit": 2}, {"$project": {"k": 1}}]}};
    let (code, _) = error_of(
        &db,
        doc! {"aggregate": "c", "pipeline": [facet.clone()], "cursor": {}, "allowDiskUse": false},
    )
    .await;
    assert_eq!(code, 4_031_700);
    // With allowDiskUse, $facet's input is spilled once per sub-pipeline.
    let r = run(
        &db,
        doc! {"aggregate": "c", "pipeline": [facet], "cursor": {}},
    )
    .await;
    let out = r
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(
        out.get_array("n").unwrap()[0]
            .as_document()
            .unwrap()
            .get_i32("n")
            .unwrap(),
        4_000
    );
    assert_eq!(out.get_array("top").unwrap().len(), 2);

    // allowDiskUseByDefault: false makes spilling opt-in.
    set_param(&s, "allowDiskUseByDefault", false).await;
    let (code, _) = error_of(
        &db,
        doc! {"aggregate": "c", "pipeline": [sort.clone()], "cursor": {}},
    )
    .await;
    assert_eq!(code, 292);
    run(
        &db,
        doc! {"aggregate": "c", "pipeline": [sort], "cursor": {}, "allowDiskUse": true},
    )
    .await;
    let (code, _) = error_of(
        &db,
        doc! {"aggregate": "c", "pipeline": [], "cursor": {}, "allowDiskUse": 1},
    )
    .await;
    assert_eq!(code, 14);
}

/// Source: https://www.mongodb.com/docs/v8.0/reference/operator/aggregation/lookup/:
/// equality matches (`localField`/`foreignField`, array local values matching each
/// element, missing matching null) and correlated sub-pipelines (`let` with
/// `$expr: {$eq}`) give the same answer whether or not the foreign field is indexed.
#[tokio::test]
async fn lookup_answers_the_same_through_an_index() {
    let s = testkit::spawn().await;
    let db = s.client.database("lk");
    let outer = db.collection::<Document>("o");
    outer
        .insert_many(vec![
            doc! {"_id": 1, "k": 5},
            doc! {"_id": 2, "k": [1, 2, 999]},
            doc! {"_id": 3},
            doc! {"_id": 4, "k": null},
            doc! {"_id": 5, "k": 5.0},
            doc! {"_id": 6, "k": "5"},
        ])
        .await
        .unwrap();
    fill(&db, "f", 3_000, 0).await;
    let f = db.collection::<Document>("f");
    f.insert_many(vec![
        doc! {"_id": -1, "k": null},
        doc! {"_id": -2},
        doc! {"_id": -3, "k": [5, 6]},
    ])
    .await
    .unwrap();
    let pipelines = [
        vec![
            doc! {"$lookup": {"from": "f", "localField": "k", "foreignField": "k", "as": "m"}},
            doc! {"$project": {"ids": "$m._id"}},
        ],
        vec![
            doc! {"$lookup": {"from": "f", "let": {"kk": "$k"}, "pipeline": [
                {"$match": {"$expr": {"$eq": ["$k", "$$kk"]}}},
                {"$project": {"_id": 1}},
            ], "as": "m"}},
            doc! {"$project": {"ids": "$m._id"}},
        ],
        vec![
            doc! {"$lookup": {"from": "f", "let": {"kk": "$k"}, "pipeline": [
                {"$match": {"$expr": {"$and": [{"$eq": ["$$kk", "$k"]}, {"$gt": ["$_id", 100]}]}}},
            ], "as": "m"}},
            doc! {"$project": {"ids": "$m._id"}},
        ],
    ];
    let mut before = Vec::new();
    for p in &pipelines {
        let r: Vec<Document> = outer
            .aggregate(p.clone())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        before.push(normalised(r));
    }
    // `k` takes 1,000 values over 3,000 documents: each matches 3 (5 also matches -3).
    let ids = before[0][0].get_array("ids").unwrap();
    assert_eq!(ids.len(), 4, "{:?}", before[0]);
    f.create_index(mongodb::IndexModel::builder().keys(doc! {"k": 1}).build())
        .await
        .unwrap();
    for (p, b) in pipelines.iter().zip(&before) {
        let r: Vec<Document> = outer
            .aggregate(p.clone())
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(&normalised(r), b, "{p:?}");
    }
}

/// The matches of a `$lookup` come in no specified order: sort them.
fn normalised(docs: Vec<Document>) -> Vec<Document> {
    docs.into_iter()
        .map(|mut d| {
            let mut ids: Vec<i64> = d
                .get_array("ids")
                .unwrap()
                .iter()
                .map(|v| v.as_i64().or(v.as_i32().map(i64::from)).unwrap())
                .collect();
            ids.sort_unstable();
            d.insert("ids", ids);
            d
        })
        .collect()
}

/// Source: https://www.mongodb.com/docs/v8.0/reference/operator/aggregation/sample/ (a
/// sample that is not a small share of the collection is taken by a random sort, held to
/// the sort's memory limit) and MongoDB's `internalQueryMaxPushBytes` /
/// `internalQueryMaxAddToSetBytes` (100 MB by default): a `$push` or `$addToSet` array
/// cannot spill, and past its limit fails with ExceededMemoryLimit (146).
#[tokio::test]
async fn sample_spills_and_accumulator_arrays_are_capped() {
    let s = testkit::spawn().await;
    let db = s.client.database("capped");
    fill(&db, "c", 3_000, 1_000).await; // about 3 MB
    set_param(
        &s,
        "internalQueryMaxBlockingSortMemoryUsageBytes",
        1_048_576i64,
    )
    .await;
    let sample = doc! {"$sample": {"size": 2_500}};
    let (code, _) = error_of(
        &db,
        doc! {"aggregate": "c", "pipeline": [sample.clone()], "cursor": {}, "allowDiskUse": false},
    )
    .await;
    assert_eq!(code, 292);
    let got: Vec<Document> = db
        .collection::<Document>("c")
        .aggregate(vec![sample])
        .allow_disk_use(true)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut ids: Vec<i64> = got.iter().map(|d| d.get_i64("_id").unwrap()).collect();
    assert_eq!(ids.len(), 2_500);
    let in_order = ids.windows(2).all(|w| w[0] < w[1]);
    assert!(!in_order, "a random order");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 2_500, "no document twice");
    assert!(got.iter().all(|d| d.get_str("pad").unwrap().len() == 1_000));

    set_param(&s, "internalQueryMaxPushBytes", 512 * 1024i64).await;
    set_param(&s, "internalQueryMaxAddToSetBytes", 512 * 1024i64).await;
    let distinct = bson::Bson::Document(doc! {"$concat": ["$s", "$pad"]});
    for (op, field) in [("$push", bson::Bson::from("$pad")), ("$addToSet", distinct)] {
        let pipeline = vec![doc! {"$group": {"_id": null, "all": {op: field}}}];
        let (code, msg) = error_of(
            &db,
            doc! {"aggregate": "c", "pipeline": pipeline, "cursor": {}},
        )
        .await;
        assert_eq!(code, 146, "{op}: {msg}");
        assert!(
            msg.contains(&format!(
                "{op} used too much memory and cannot spill to disk"
            )) && msg.contains("Memory limit: 524288 bytes"),
            "{msg}"
        );
    }
    // Per group: fifty groups of sixty 1 KB values each stay under the cap.
    let r = run(
        &db,
        doc! {"aggregate": "c", "pipeline": [{"$group": {"_id": "$g", "all": {"$push": "$pad"}}}, {"$count": "n"}], "cursor": {}},
    )
    .await;
    let first = r
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(first.get_i32("n").unwrap(), 50);
}
