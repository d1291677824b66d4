// collation: the collation option on reads and writes, collection defaults, collated
// indexes (uniqueness, planning) and refused collation documents.

use bson::{Bson, Document, doc};
use mongodb::Database;
use mongodb::options::{Collation, CollationStrength};

use crate::cmd_error;

const CI: fn() -> Document = || doc! {"locale": "en", "strength": 2};

async fn seed(db: &Database, coll: &str) {
    db.collection::<Document>(coll)
        .insert_many(vec![
            doc! {"_id": 1, "s": "apple"},
            doc! {"_id": 2, "s": "Apple"},
            doc! {"_id": 3, "s": "APPLE"},
            doc! {"_id": 4, "s": "banana"},
            doc! {"_id": 5, "s": "Éclair"},
        ])
        .await
        .unwrap();
}

fn ids(batch: &[Bson]) -> Vec<i32> {
    batch
        .iter()
        .map(|d| d.as_document().unwrap().get_i32("_id").unwrap())
        .collect()
}

fn first_batch(reply: &Document) -> &Vec<Bson> {
    reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
}

async fn find_ids(db: &Database, cmd: Document) -> Vec<i32> {
    ids(first_batch(&db.run_command(cmd).await.unwrap()))
}

#[tokio::test]
async fn reads_compare_strings_under_the_collation() {
    let s = testkit::spawn().await;
    let db = s.client.database("coll_reads");
    seed(&db, "c").await;

    // find: equality, range and sort.
    let q = doc! {"find": "c", "filter": {"s": "apple"}, "sort": {"_id": 1}};
    assert_eq!(find_ids(&db, q.clone()).await, vec![1]);
    let mut ci = q.clone();
    ci.insert("collation", CI());
    assert_eq!(find_ids(&db, ci).await, vec![1, 2, 3]);
    let sorted = doc! {
        "find": "c", "filter": {}, "sort": {"s": 1, "_id": 1},
        "collation": {"locale": "en"},
    };
    assert_eq!(find_ids(&db, sorted).await, vec![1, 2, 3, 4, 5]);
    let binary = doc! {"find": "c", "filter": {}, "sort": {"s": 1, "_id": 1}};
    assert_eq!(find_ids(&db, binary).await, vec![3, 2, 1, 4, 5]);
    let accents = doc! {
        "find": "c", "filter": {"s": {"$lt": "f"}}, "sort": {"_id": 1},
        "collation": {"locale": "fr", "strength": 1},
    };
    assert_eq!(find_ids(&db, accents).await, vec![1, 2, 3, 4, 5]);

    // count and distinct.
    let c = db.collection::<Document>("c");
    let n = c
        .count_documents(doc! {"s": "APPLE"})
        .collation(
            Collation::builder()
                .locale("en")
                .strength(CollationStrength::Secondary)
                .build(),
        )
        .await
        .unwrap();
    assert_eq!(n, 3);
    let r = db
        .run_command(doc! {"count": "c", "query": {"s": "apple"}, "collation": CI()})
        .await
        .unwrap();
    assert_eq!(r.get_i64("n").or(r.get_i32("n").map(i64::from)), Ok(3));
    let r = db
        .run_command(doc! {"distinct": "c", "key": "s", "collation": CI()})
        .await
        .unwrap();
    assert_eq!(
        r.get_array("values").unwrap(),
        &vec![
            Bson::from("apple"),
            Bson::from("banana"),
            Bson::from("Éclair")
        ]
    );

    // aggregate: $match, $group and $sort all use it.
    let r = db
        .run_command(doc! {
            "aggregate": "c",
            "pipeline": [
                {"$match": {"s": {"$in": ["APPLE", "BANANA"]}}},
                {"$group": {"_id": "$s", "n": {"$sum": 1}}},
                {"$sort": {"_id": -1}},
            ],
            "cursor": {},
            "collation": CI(),
        })
        .await
        .unwrap();
    assert_eq!(
        first_batch(&r),
        &vec![
            Bson::Document(doc! {"_id": "banana", "n": 1}),
            Bson::Document(doc! {"_id": "apple", "n": 3}),
        ]
    );
}

#[tokio::test]
async fn writes_match_under_the_collation() {
    let s = testkit::spawn().await;
    let db = s.client.database("coll_writes");
    seed(&db, "c").await;
    let r = db
        .run_command(doc! {"update": "c", "updates": [
            {"q": {"s": "APPLE"}, "u": {"$set": {"hit": true}}, "multi": true, "collation": CI()},
        ]})
        .await
        .unwrap();
    assert_eq!(r.get_i32("nModified"), Ok(3));
    let r = db
        .run_command(doc! {"update": "c", "updates": [
            {"q": {"s": "APPLE"}, "u": {"$set": {"hit": false}}, "multi": true},
        ]})
        .await
        .unwrap();
    assert_eq!(r.get_i32("nModified"), Ok(1));
    let r = db
        .run_command(
            doc! {"findAndModify": "c", "query": {"s": "ECLAIR"}, "remove": true,
            "collation": {"locale": "fr", "strength": 1}},
        )
        .await
        .unwrap();
    assert_eq!(r.get_document("value").unwrap().get_i32("_id"), Ok(5));
    let r = db
        .run_command(doc! {"delete": "c", "deletes": [
            {"q": {"s": "apple"}, "limit": 0, "collation": CI()},
        ]})
        .await
        .unwrap();
    assert_eq!(r.get_i32("n"), Ok(3));
    assert_eq!(
        db.collection::<Document>("c")
            .count_documents(doc! {})
            .await
            .unwrap(),
        1
    );
    // A bad collation in a write statement is that statement's write error.
    let r = db
        .run_command(doc! {"delete": "c", "deletes": [
            {"q": {}, "limit": 0, "collation": {"locale": "xx"}},
        ]})
        .await
        .unwrap();
    let e = r.get_array("writeErrors").unwrap()[0]
        .as_document()
        .unwrap();
    assert_eq!(e.get_i32("code"), Ok(2));
}

#[tokio::test]
async fn collection_default_collation() {
    let s = testkit::spawn().await;
    let db = s.client.database("coll_default");
    db.run_command(doc! {"create": "c", "collation": CI()})
        .await
        .unwrap();
    seed(&db, "c").await;

    let r = db
        .run_command(doc! {"listCollections": 1, "filter": {"name": "c"}})
        .await
        .unwrap();
    let info = first_batch(&r);
    let expanded = doc! {
        "locale": "en", "caseLevel": false, "caseFirst": "off", "strength": 2,
        "numericOrdering": false, "alternate": "non-ignorable", "maxVariable": "punct",
        "normalization": false, "backwards": false, "version": "57.1",
    };
    assert_eq!(
        info[0]
            .as_document()
            .unwrap()
            .get_document("options")
            .unwrap()
            .get_document("collation")
            .unwrap(),
        &expanded
    );

    // Operations without a collation use the default; an explicit one overrides it.
    let q = doc! {"find": "c", "filter": {"s": "APPLE"}, "sort": {"_id": 1}};
    assert_eq!(find_ids(&db, q.clone()).await, vec![1, 2, 3]);
    let mut simple = q;
    simple.insert("collation", doc! {"locale": "simple"});
    assert_eq!(find_ids(&db, simple).await, vec![3]);
    let r = db
        .run_command(doc! {"delete": "c", "deletes": [{"q": {"s": "BANANA"}, "limit": 1}]})
        .await
        .unwrap();
    assert_eq!(r.get_i32("n"), Ok(1));

    // Indexes inherit the default unless they name their own.
    db.run_command(doc! {"createIndexes": "c", "indexes": [
        {"key": {"s": 1}, "name": "s_default"},
        {"key": {"s": -1}, "name": "s_simple", "collation": {"locale": "simple"}},
    ]})
    .await
    .unwrap();
    let r = db.run_command(doc! {"listIndexes": "c"}).await.unwrap();
    let specs: Vec<Document> = first_batch(&r)
        .iter()
        .map(|s| s.as_document().unwrap().clone())
        .collect();
    let by_name = |n: &str| specs.iter().find(|s| s.get_str("name") == Ok(n)).unwrap();
    assert_eq!(by_name("_id_").get_document("collation"), Ok(&expanded));
    assert_eq!(
        by_name("s_default").get_document("collation"),
        Ok(&expanded)
    );
    assert!(by_name("s_simple").get("collation").is_none());
}

#[tokio::test]
async fn case_insensitive_unique_index() {
    let s = testkit::spawn().await;
    let db = s.client.database("coll_unique");
    let c = db.collection::<Document>("users");
    db.run_command(doc! {"createIndexes": "users", "indexes": [
        {"key": {"email": 1}, "name": "email_ci", "unique": true, "collation": CI()},
    ]})
    .await
    .unwrap();
    c.insert_one(doc! {"_id": 1, "email": "Ada@Example.com"})
        .await
        .unwrap();
    let e = c
        .insert_one(doc! {"_id": 2, "email": "ada@example.COM"})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("E11000"), "{e}");
    c.insert_one(doc! {"_id": 3, "email": "bob@example.com"})
        .await
        .unwrap();
    // An update into a case variant of an existing key is a duplicate too.
    let e = c
        .update_one(doc! {"_id": 3}, doc! {"$set": {"email": "ADA@EXAMPLE.COM"}})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("E11000"), "{e}");
    // A unique index built over existing case variants fails.
    let other = db.collection::<Document>("other");
    other
        .insert_many(vec![doc! {"k": "x"}, doc! {"k": "X"}])
        .await
        .unwrap();
    let (code, _) = cmd_error(
        &db,
        doc! {"createIndexes": "other", "indexes": [
            {"key": {"k": 1}, "name": "k_ci", "unique": true, "collation": CI()},
        ]},
    )
    .await;
    assert_eq!(code, 11000);
}

fn winning_stage(explain: &Document) -> String {
    let mut plan = explain
        .get_document("queryPlanner")
        .unwrap()
        .get_document("winningPlan")
        .unwrap()
        .clone();
    while let Ok(inner) = plan.get_document("inputStage") {
        plan = inner.clone();
    }
    plan.get_str("stage").unwrap().to_string()
}

#[tokio::test]
async fn index_used_only_when_collations_match() {
    let s = testkit::spawn().await;
    let db = s.client.database("coll_plan");
    seed(&db, "c").await;
    db.run_command(doc! {"createIndexes": "c", "indexes": [
        {"key": {"s": 1}, "name": "s_ci", "collation": CI()},
    ]})
    .await
    .unwrap();
    let explain = |coll: Option<Document>| {
        let mut find = doc! {"find": "c", "filter": {"s": "APPLE"}};
        if let Some(c) = coll {
            find.insert("collation", c);
        }
        let db = db.clone();
        async move {
            let r = db.run_command(doc! {"explain": find}).await.unwrap();
            winning_stage(&r)
        }
    };
    assert_eq!(explain(Some(CI())).await, "IXSCAN");
    assert_eq!(explain(None).await, "COLLSCAN");
    assert_eq!(explain(Some(doc! {"locale": "en"})).await, "COLLSCAN");
    assert_eq!(explain(Some(doc! {"locale": "simple"})).await, "COLLSCAN");

    // The index scan finds every case variant, and a sort can come from the index.
    let q = doc! {"find": "c", "filter": {"s": {"$gte": "APPLE", "$lte": "apple"}},
    "sort": {"s": 1, "_id": 1}, "collation": CI()};
    assert_eq!(find_ids(&db, q).await, vec![1, 2, 3]);
    let r = db
        .run_command(
            doc! {"explain": {"find": "c", "filter": {"s": {"$gt": "b"}},
            "sort": {"s": 1}, "collation": CI()}},
        )
        .await
        .unwrap();
    let top = r
        .get_document("queryPlanner")
        .unwrap()
        .get_document("winningPlan")
        .unwrap();
    assert_eq!(top.get_str("stage"), Ok("FETCH"), "no SORT stage: {top}");
}

#[tokio::test]
async fn malformed_collations_are_refused() {
    let s = testkit::spawn().await;
    let db = s.client.database("coll_errors");
    seed(&db, "c").await;
    let cases = [
        (doc! {"strength": 2}, 40414),
        (doc! {"locale": "en", "bogus": 1}, 40415),
        (doc! {"locale": "xx"}, 2),
        (doc! {"locale": "en", "strength": 6}, 2),
        (doc! {"locale": 1}, 14),
    ];
    for (spec, want) in cases {
        let (code, _) = cmd_error(&db, doc! {"find": "c", "collation": spec.clone()}).await;
        assert_eq!(code, want, "find with {spec}");
        let (code, _) = cmd_error(
            &db,
            doc! {"aggregate": "c", "pipeline": [], "cursor": {}, "collation": spec.clone()},
        )
        .await;
        assert_eq!(code, want, "aggregate with {spec}");
        let (code, _) = cmd_error(&db, doc! {"create": "d", "collation": spec.clone()}).await;
        assert_eq!(code, want, "create with {spec}");
    }
    let r = db
        .run_command(doc! {"find": "c", "filter": {}, "collation": {"locale": "xx"}})
        .await
        .unwrap_err();
    assert!(
        r.to_string()
            .contains("Field 'locale' is invalid in: { locale: \"xx\" }"),
        "{r}"
    );
}

#[tokio::test]
async fn a_view_runs_under_its_default_collation() {
    let s = testkit::spawn().await;
    let db = s.client.database("coll_view");
    seed(&db, "c").await;
    db.run_command(doc! {"create": "apples", "viewOn": "c",
    "pipeline": [{"$match": {"s": "APPLE"}}], "collation": CI()})
        .await
        .unwrap();
    let q = doc! {"find": "apples", "filter": {"s": {"$ne": "Apple"}}};
    assert_eq!(find_ids(&db, q).await, Vec::<i32>::new());
    let q = doc! {"find": "apples", "filter": {}, "sort": {"_id": -1}};
    assert_eq!(find_ids(&db, q).await, vec![3, 2, 1]);
}
