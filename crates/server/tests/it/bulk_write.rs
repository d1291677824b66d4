// bulk_write: the 8.0 bulkWrite command (client bulk write), and `let` on CRUD commands.

use bson::{Bson, Document, doc};
use futures_util::{StreamExt, TryStreamExt};
use mongodb::Namespace;
use mongodb::options::{
    DeleteManyModel, DeleteOneModel, ReplaceOneModel, UpdateManyModel, UpdateOneModel, WriteModel,
};

use crate::{cmd_error, raw_command, raw_with_sequences};

fn first_batch(r: &Document) -> Vec<Document> {
    r.get_document("cursor")
        .unwrap_or_else(|_| panic!("no cursor in {r}"))
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|b| b.as_document().unwrap().clone())
        .collect()
}

fn counts(r: &Document) -> [i32; 6] {
    [
        "nErrors",
        "nInserted",
        "nMatched",
        "nModified",
        "nUpserted",
        "nDeleted",
    ]
    .map(|k| {
        r.get_i32(k)
            .unwrap_or_else(|_| panic!("{k} missing in {r}"))
    })
}

async fn contents(c: &mongodb::Collection<Document>) -> Vec<Document> {
    c.find(doc! {})
        .sort(doc! {"_id": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn mixed_operations_across_two_namespaces() {
    let s = testkit::spawn().await;
    let db = s.client.database("app");
    let a = db.collection::<Document>("a");
    let b = db.collection::<Document>("b");
    a.insert_many(vec![
        doc! {"_id": 1, "x": 1},
        doc! {"_id": 2, "x": 2},
        doc! {"_id": 3, "x": 3},
    ])
    .await
    .unwrap();
    b.insert_one(doc! {"_id": 1, "y": 1}).await.unwrap();
    let mut stream = db.watch().await.unwrap();

    let (na, nb) = (Namespace::new("app", "a"), Namespace::new("app", "b"));
    let models: Vec<WriteModel> = vec![
        a.insert_one_model(doc! {"_id": 4, "x": 4}).unwrap().into(),
        b.insert_one_model(doc! {"_id": 2, "y": 2}).unwrap().into(),
        UpdateOneModel::builder()
            .namespace(na.clone())
            .filter(doc! {"_id": 1})
            .update(doc! {"$inc": {"x": 10}})
            .build()
            .into(),
        UpdateManyModel::builder()
            .namespace(nb.clone())
            .filter(doc! {})
            .update(doc! {"$set": {"seen": true}})
            .build()
            .into(),
        ReplaceOneModel::builder()
            .namespace(nb.clone())
            .filter(doc! {"_id": 9})
            .replacement(doc! {"y": 9})
            .upsert(true)
            .build()
            .into(),
        DeleteOneModel::builder()
            .namespace(na.clone())
            .filter(doc! {"_id": 2})
            .build()
            .into(),
        DeleteManyModel::builder()
            .namespace(na.clone())
            .filter(doc! {"x": {"$gte": 3, "$lt": 10}})
            .build()
            .into(),
    ];
    let r = s.client.bulk_write(models).verbose_results().await.unwrap();
    let sum = &r.summary;
    assert_eq!(
        (sum.inserted_count, sum.matched_count, sum.modified_count),
        (2, 3, 3)
    );
    assert_eq!((sum.upserted_count, sum.deleted_count), (1, 3));
    assert_eq!(r.update_results[&4].upserted_id, Some(Bson::Int32(9)));
    assert_eq!(r.update_results[&3].matched_count, 2);
    assert_eq!(r.delete_results[&6].deleted_count, 2);
    assert_eq!(contents(&a).await, vec![doc! {"_id": 1, "x": 11}]);
    assert_eq!(
        contents(&b).await,
        vec![
            doc! {"_id": 1, "y": 1, "seen": true},
            doc! {"_id": 2, "y": 2, "seen": true},
            doc! {"_id": 9, "y": 9},
        ]
    );

    // The same change events as the single-collection commands produce, in order.
    let mut seen = Vec::new();
    while seen.len() < 9 {
        let e = stream.next().await.unwrap().unwrap();
        seen.push((
            format!("{:?}", e.operation_type),
            e.ns.and_then(|n| n.coll).unwrap_or_default(),
        ));
    }
    let want = [
        ("Insert", "a"),
        ("Insert", "b"),
        ("Update", "a"),
        ("Update", "b"),
        ("Update", "b"),
        ("Insert", "b"),
        ("Delete", "a"),
        ("Delete", "a"),
        ("Delete", "a"),
    ];
    for (i, (op, coll)) in want.iter().enumerate() {
        assert_eq!(
            (seen[i].0.as_str(), seen[i].1.as_str()),
            (*op, *coll),
            "event {i}"
        );
    }
}

#[tokio::test]
async fn ordered_stops_at_the_first_error_and_unordered_goes_on() {
    let s = testkit::spawn().await;
    let ops = || {
        vec![
            doc! {"insert": 0, "document": {"_id": 1}},
            doc! {"insert": 0, "document": {"_id": 1}},
            doc! {"insert": 1, "document": {"_id": 2}},
        ]
    };
    let ns_info = || vec![doc! {"ns": "o.a"}, doc! {"ns": "o.b"}];
    let r = raw_with_sequences(
        s.port,
        doc! {"bulkWrite": 1, "$db": "admin"},
        &[("ops".into(), ops()), ("nsInfo".into(), ns_info())],
    )
    .await;
    assert_eq!(r.get_f64("ok").unwrap(), 1.0, "{r}");
    assert_eq!(counts(&r), [1, 1, 0, 0, 0, 0]);
    let items = first_batch(&r);
    assert_eq!(items.len(), 2);
    assert_eq!(items[0], doc! {"ok": 1.0, "idx": 0, "n": 1});
    assert_eq!(items[1].get_f64("ok").unwrap(), 0.0);
    assert_eq!(items[1].get_i32("idx").unwrap(), 1);
    assert_eq!(items[1].get_i32("code").unwrap(), 11000);
    assert_eq!(items[1].get_str("codeName").unwrap(), "DuplicateKey");
    assert_eq!(items[1].get_document("keyValue").unwrap(), &doc! {"_id": 1});
    let cursor = r.get_document("cursor").unwrap();
    assert_eq!(cursor.get_i64("id").unwrap(), 0);
    assert_eq!(cursor.get_str("ns").unwrap(), "admin.$cmd.bulkWrite");
    let b = s.client.database("o").collection::<Document>("b");
    assert_eq!(b.count_documents(doc! {}).await.unwrap(), 0);

    s.client.database("o").drop().await.unwrap();
    let r = raw_command(
        s.port,
        doc! {"bulkWrite": 1, "ops": ops(), "nsInfo": ns_info(), "ordered": false, "$db": "admin"},
    )
    .await;
    assert_eq!(counts(&r), [1, 2, 0, 0, 0, 0]);
    assert_eq!(first_batch(&r).len(), 3);
    assert_eq!(b.count_documents(doc! {}).await.unwrap(), 1);
}

#[tokio::test]
async fn errors_only_returns_just_the_failures() {
    let s = testkit::spawn().await;
    let r = raw_command(
        s.port,
        doc! {
            "bulkWrite": 1,
            "ops": [
                {"insert": 0, "document": {"_id": 1, "a": 1}},
                {"update": 0, "filter": {"_id": 1}, "updateMods": {"$set": {"a": 2}}},
                {"update": 0, "filter": {"_id": 1}, "updateMods": {"$set": {"_id": 5}}},
                {"delete": 0, "filter": {"$expr": {"$eq": ["$_id", "$$nope"]}}},
                {"delete": 0, "filter": {"_id": 1}},
            ],
            "nsInfo": [{"ns": "e.c"}],
            "ordered": false,
            "errorsOnly": true,
            "$db": "admin",
        },
    )
    .await;
    assert_eq!(counts(&r), [2, 1, 1, 1, 0, 1]);
    let items = first_batch(&r);
    let failed: Vec<(i32, i32)> = items
        .iter()
        .map(|i| (i.get_i32("idx").unwrap(), i.get_i32("code").unwrap()))
        .collect();
    assert_eq!(failed, vec![(2, 66), (3, 17276)]);
    assert_eq!(items[0].get_i32("nModified").unwrap(), 0);
}

#[tokio::test]
async fn a_retried_bulk_write_applies_once() {
    let s = testkit::spawn().await;
    let lsid = doc! {"id": bson::Uuid::new()};
    let cmd = |txn: i64| {
        doc! {
            "bulkWrite": 1,
            "ops": [
                {"update": 0, "filter": {"_id": 1}, "updateMods": {"$inc": {"n": 1}}, "upsert": true},
                {"insert": 1, "document": {"txn": txn}},
            ],
            "nsInfo": [{"ns": "r.counter"}, {"ns": "r.log"}],
            "lsid": lsid.clone(),
            "txnNumber": txn,
            "$db": "admin",
        }
    };
    let first = raw_command(s.port, cmd(1)).await;
    assert_eq!(counts(&first), [0, 1, 0, 0, 1, 0]);
    let retry = raw_command(s.port, cmd(1)).await;
    assert_eq!(counts(&retry), counts(&first));
    assert_eq!(first_batch(&retry), first_batch(&first));
    let db = s.client.database("r");
    let counter = db.collection::<Document>("counter");
    let log = db.collection::<Document>("log");
    assert_eq!(contents(&counter).await, vec![doc! {"_id": 1, "n": 1}]);
    assert_eq!(log.count_documents(doc! {}).await.unwrap(), 1);

    // The next transaction number is a new write.
    let next = raw_command(s.port, cmd(2)).await;
    assert_eq!(counts(&next), [0, 1, 1, 1, 0, 0]);
    assert_eq!(contents(&counter).await, vec![doc! {"_id": 1, "n": 2}]);
    // An older one is refused.
    let old = raw_command(s.port, cmd(1)).await;
    assert_eq!(old.get_i32("code").unwrap(), 225, "{old}");
}

#[tokio::test]
async fn results_past_the_batch_size_come_through_get_more() {
    let s = testkit::spawn().await;
    let ops: Vec<Document> = (0..5)
        .map(|i| doc! {"insert": 0, "document": {"_id": i}})
        .collect();
    let r = raw_command(
        s.port,
        doc! {"bulkWrite": 1, "ops": ops, "nsInfo": [{"ns": "g.c"}], "cursor": {"batchSize": 2}, "$db": "admin"},
    )
    .await;
    assert_eq!(counts(&r), [0, 5, 0, 0, 0, 0]);
    assert_eq!(first_batch(&r).len(), 2);
    let id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    assert_ne!(id, 0);
    let more = raw_command(
        s.port,
        doc! {"getMore": id, "collection": "$cmd.bulkWrite", "$db": "admin"},
    )
    .await;
    let next: Vec<i32> = more
        .get_document("cursor")
        .unwrap()
        .get_array("nextBatch")
        .unwrap()
        .iter()
        .map(|d| d.as_document().unwrap().get_i32("idx").unwrap())
        .collect();
    assert_eq!(next, vec![2, 3, 4]);
}

#[tokio::test]
async fn bad_bulk_writes_fail_as_a_whole() {
    let s = testkit::spawn().await;
    let admin = s.client.database("admin");
    let ok_op = doc! {"insert": 0, "document": {}};
    let cases = [
        (
            doc! {"bulkWrite": 1, "ops": [], "nsInfo": [{"ns": "x.y"}]},
            16,
        ),
        (
            doc! {"bulkWrite": 1, "ops": [ok_op.clone()], "nsInfo": []},
            2,
        ),
        (
            doc! {"bulkWrite": 1, "ops": [ok_op.clone()], "nsInfo": [{"ns": "nodot"}]},
            73,
        ),
        (
            doc! {"bulkWrite": 1, "ops": [{"insert": 0}], "nsInfo": [{"ns": "x.y"}]},
            40414,
        ),
        (
            doc! {"bulkWrite": 1, "ops": [ok_op.clone()], "nsInfo": [{"ns": "x.y"}], "let": {"Bad": 1}},
            9,
        ),
    ];
    for (cmd, code) in cases {
        assert_eq!(cmd_error(&admin, cmd.clone()).await.0, code, "{cmd}");
    }
    let other = s.client.database("x");
    let cmd = doc! {"bulkWrite": 1, "ops": [ok_op], "nsInfo": [{"ns": "x.y"}]};
    assert_eq!(cmd_error(&other, cmd).await.0, 13);
}

#[tokio::test]
async fn let_constants_in_find_update_delete_aggregate_and_bulk_write() {
    let s = testkit::spawn().await;
    let db = s.client.database("l");
    let c = db.collection::<Document>("c");
    c.insert_many(vec![doc! {"_id": 1}, doc! {"_id": 2}, doc! {"_id": 3}])
        .await
        .unwrap();
    let by_id = doc! {"$expr": {"$eq": ["$_id", "$$id"]}};

    let found: Vec<Document> = c
        .find(by_id.clone())
        .let_vars(doc! {"id": 2})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(found, vec![doc! {"_id": 2}]);

    let u = c
        .update_one(
            by_id.clone(),
            vec![doc! {"$set": {"x": "$$x", "at": "$$NOW"}}],
        )
        .let_vars(doc! {"id": 1, "x": {"$concat": ["f", "oo"]}})
        .await
        .unwrap();
    assert_eq!((u.matched_count, u.modified_count), (1, 1));
    let one = c.find_one(doc! {"_id": 1}).await.unwrap().unwrap();
    assert_eq!(one.get_str("x").unwrap(), "foo");
    assert!(one.get_datetime("at").is_ok());

    let before = c
        .find_one_and_update(by_id.clone(), vec![doc! {"$set": {"y": "$$y"}}])
        .let_vars(doc! {"id": 3, "y": 7})
        .await
        .unwrap();
    assert_eq!(before, Some(doc! {"_id": 3}));

    let agg: Vec<Document> = c
        .aggregate(vec![
            doc! {"$match": by_id.clone()},
            doc! {"$project": {"_id": 0, "y": 1, "k": "$$k"}},
        ])
        .let_vars(doc! {"id": 3, "k": {"$literal": "$notAField"}})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(agg, vec![doc! {"y": 7, "k": "$notAField"}]);

    c.aggregate(vec![doc! {"$match": by_id.clone()}, doc! {"$out": "copy"}])
        .let_vars(doc! {"id": 2})
        .await
        .unwrap();
    let copy = db.collection::<Document>("copy");
    assert_eq!(contents(&copy).await, vec![doc! {"_id": 2}]);

    let d = c
        .delete_one(by_id.clone())
        .let_vars(doc! {"id": 2})
        .await
        .unwrap();
    assert_eq!(d.deleted_count, 1);

    // bulkWrite: the command's let, and an operation's own.
    let r = raw_command(
        s.port,
        doc! {
            "bulkWrite": 1,
            "ops": [
                {"update": 0, "filter": by_id.clone(), "updateMods": [{"$set": {"z": "$$z"}}]},
                {"delete": 0, "filter": {"$expr": {"$eq": ["$_id", "$$other"]}}, "let": {"other": 1}},
            ],
            "nsInfo": [{"ns": "l.c"}],
            "let": {"id": 3, "z": true},
            "$db": "admin",
        },
    )
    .await;
    assert_eq!(counts(&r), [0, 0, 1, 1, 0, 1]);
    assert_eq!(contents(&c).await, vec![doc! {"_id": 3, "y": 7, "z": true}]);

    // Undefined variables, bad names and field paths are errors.
    let find = |filter: Document, lets: Document| {
        doc! {"find": "c", "filter": filter, "let": lets}
    };
    assert_eq!(cmd_error(&db, find(by_id.clone(), doc! {})).await.0, 17276);
    assert_eq!(cmd_error(&db, find(doc! {}, doc! {"Id": 1})).await.0, 9);
    assert_eq!(
        cmd_error(&db, find(doc! {}, doc! {"id": "$_id"})).await.0,
        4890500
    );
}

#[tokio::test]
async fn results_over_16mb_are_split_between_batches() {
    let s = testkit::spawn().await;
    // Two upserts whose reply items carry 8 MB `_id`s: both cannot fit one reply.
    let big = |c: &str| c.repeat(8 * 1024 * 1024 - 64);
    let ops: Vec<Document> = ["a", "b"]
        .iter()
        .map(|c| {
            doc! {"update": 0, "filter": {"_id": big(c)}, "updateMods": {"$set": {"x": 1}}, "upsert": true}
        })
        .collect();
    let r = raw_with_sequences(
        s.port,
        doc! {"bulkWrite": 1, "$db": "admin"},
        &[
            ("ops".into(), ops),
            ("nsInfo".into(), vec![doc! {"ns": "big.c"}]),
        ],
    )
    .await;
    assert_eq!(counts(&r), [0, 0, 0, 0, 2, 0]);
    let first = first_batch(&r);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].get_i32("idx").unwrap(), 0);
    let id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    assert_ne!(id, 0);
    let more = raw_command(
        s.port,
        doc! {"getMore": id, "collection": "$cmd.bulkWrite", "$db": "admin"},
    )
    .await;
    let cursor = more.get_document("cursor").unwrap();
    assert_eq!(cursor.get_i64("id").unwrap(), 0);
    let next = cursor.get_array("nextBatch").unwrap();
    assert_eq!(next.len(), 1);
    let item = next[0].as_document().unwrap();
    assert_eq!(item.get_i32("idx").unwrap(), 1);
    assert_eq!(
        item.get_document("upserted")
            .unwrap()
            .get_str("_id")
            .unwrap(),
        big("b")
    );
}

#[tokio::test]
async fn a_bulk_write_inside_a_transaction_commits_or_aborts_with_it() {
    let s = testkit::spawn().await;
    let db = s.client.database("t");
    let a = db.collection::<Document>("a");
    let b = db.collection::<Document>("b");
    a.insert_one(doc! {"_id": 1, "n": 0}).await.unwrap();
    b.insert_one(doc! {"_id": 1}).await.unwrap();
    let models = || -> Vec<WriteModel> {
        vec![
            a.insert_one_model(doc! {"_id": 2}).unwrap().into(),
            UpdateOneModel::builder()
                .namespace(Namespace::new("t", "a"))
                .filter(doc! {"_id": 1})
                .update(doc! {"$inc": {"n": 1}})
                .build()
                .into(),
            DeleteOneModel::builder()
                .namespace(Namespace::new("t", "b"))
                .filter(doc! {"_id": 1})
                .build()
                .into(),
        ]
    };
    let mut session = s.client.start_session().await.unwrap();
    session.start_transaction().await.unwrap();
    let r = s
        .client
        .bulk_write(models())
        .session(&mut session)
        .await
        .unwrap();
    assert_eq!(
        (r.inserted_count, r.modified_count, r.deleted_count),
        (1, 1, 1)
    );
    // Not visible outside until commit; gone after an abort.
    assert_eq!(a.count_documents(doc! {}).await.unwrap(), 1);
    session.abort_transaction().await.unwrap();
    assert_eq!(contents(&a).await, vec![doc! {"_id": 1, "n": 0}]);
    assert_eq!(b.count_documents(doc! {}).await.unwrap(), 1);

    session.start_transaction().await.unwrap();
    s.client
        .bulk_write(models())
        .session(&mut session)
        .await
        .unwrap();
    session.commit_transaction().await.unwrap();
    assert_eq!(
        contents(&a).await,
        vec![doc! {"_id": 1, "n": 1}, doc! {"_id": 2}]
    );
    assert_eq!(b.count_documents(doc! {}).await.unwrap(), 0);
}
