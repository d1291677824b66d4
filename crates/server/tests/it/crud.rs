// crud: insert, find, update, delete, findAndModify, count, distinct, aggregate, indexes.

use bson::{Bson, doc};
use futures_util::TryStreamExt;
use mongodb::options::{FindOptions, ReturnDocument};

use crate::cmd_error;

#[tokio::test]
async fn insert_find_update_delete() {
    let s = testkit::spawn().await;
    let c = s
        .client
        .database("app")
        .collection::<bson::Document>("people");
    let r = c.insert_one(doc! {"name": "ada", "age": 36}).await.unwrap();
    assert!(
        matches!(r.inserted_id, Bson::ObjectId(_)),
        "_id generated as ObjectId"
    );
    c.insert_many(vec![
        doc! {"_id": 1, "name": "bob", "age": 20, "tags": ["x", "y"]},
        doc! {"_id": 2, "name": "cy", "age": 50},
    ])
    .await
    .unwrap();

    let found: Vec<_> = c
        .find(doc! {"age": {"$gte": 30}})
        .with_options(
            FindOptions::builder()
                .sort(doc! {"age": -1})
                .projection(doc! {"name": 1, "_id": 0})
                .build(),
        )
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(found, vec![doc! {"name": "cy"}, doc! {"name": "ada"}]);
    assert_eq!(c.count_documents(doc! {"tags": "y"}).await.unwrap(), 1);

    let u = c
        .update_one(
            doc! {"_id": 1},
            doc! {"$inc": {"age": 1}, "$push": {"tags": "z"}},
        )
        .await
        .unwrap();
    assert_eq!((u.matched_count, u.modified_count), (1, 1));
    let bob = c.find_one(doc! {"_id": 1}).await.unwrap().unwrap();
    assert_eq!(bob.get_i32("age").unwrap(), 21);
    assert_eq!(bob.get_array("tags").unwrap().len(), 3);

    let up = c
        .update_one(doc! {"name": "dee"}, doc! {"$set": {"age": 9}})
        .upsert(true)
        .await
        .unwrap();
    assert!(up.upserted_id.is_some());
    assert_eq!(
        c.find_one(doc! {"name": "dee"})
            .await
            .unwrap()
            .unwrap()
            .get_i32("age")
            .unwrap(),
        9
    );

    let many = c
        .update_many(doc! {}, doc! {"$set": {"seen": true}})
        .await
        .unwrap();
    assert_eq!(many.modified_count, 4);
    c.replace_one(doc! {"_id": 2}, doc! {"name": "cy2"})
        .await
        .unwrap();
    assert_eq!(
        c.find_one(doc! {"_id": 2}).await.unwrap().unwrap(),
        doc! {"_id": 2, "name": "cy2"}
    );

    let fam = c
        .find_one_and_update(doc! {"_id": 1}, doc! {"$set": {"age": 99}})
        .return_document(ReturnDocument::After)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fam.get_i32("age").unwrap(), 99);
    let gone = c
        .find_one_and_delete(doc! {"_id": 1})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gone.get_i32("age").unwrap(), 99);

    let d = c.delete_many(doc! {"seen": true}).await.unwrap();
    assert_eq!(d.deleted_count, 2);
    assert_eq!(c.count_documents(doc! {}).await.unwrap(), 1);
    let distinct = c.distinct("name", doc! {}).await.unwrap();
    assert_eq!(distinct, vec![Bson::String("cy2".into())]);
}

#[tokio::test]
async fn duplicate_keys_and_write_errors() {
    let s = testkit::spawn().await;
    let db = s.client.database("app");
    let c = db.collection::<bson::Document>("u");
    c.create_index(
        mongodb::IndexModel::builder()
            .keys(doc! {"email": 1})
            .options(
                mongodb::options::IndexOptions::builder()
                    .unique(true)
                    .build(),
            )
            .build(),
    )
    .await
    .unwrap();
    c.insert_one(doc! {"_id": 1, "email": "a@x"}).await.unwrap();
    // Raw command so the reply's writeErrors can be inspected.
    let r = db
        .run_command(doc! {"insert": "u", "documents": [{"_id": 2, "email": "b@x"}, {"_id": 3, "email": "a@x"}, {"_id": 4, "email": "c@x"}], "ordered": false})
        .await
        .unwrap();
    assert_eq!(r.get_i32("n").unwrap(), 2);
    let we = r.get_array("writeErrors").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(we.get_i32("index").unwrap(), 1);
    assert_eq!(we.get_i32("code").unwrap(), 11000);
    assert_eq!(we.get_document("keyPattern").unwrap(), &doc! {"email": 1});
    assert_eq!(we.get_document("keyValue").unwrap(), &doc! {"email": "a@x"});
    let r = db
        .run_command(doc! {"insert": "u", "documents": [{"_id": 1}, {"_id": 9}]})
        .await
        .unwrap();
    assert_eq!(
        r.get_i32("n").unwrap(),
        0,
        "ordered insert stops at the first error"
    );
    // Updating into a duplicate fails and leaves the document as it was.
    let e = c
        .update_one(doc! {"_id": 2}, doc! {"$set": {"email": "a@x"}})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("E11000"), "{e}");
    assert_eq!(
        c.find_one(doc! {"_id": 2})
            .await
            .unwrap()
            .unwrap()
            .get_str("email")
            .unwrap(),
        "b@x"
    );
    // Bad filters and updates.
    let (code, _) = cmd_error(&db, doc! {"find": "u", "filter": {"a": {"$bogus": 1}}}).await;
    assert_eq!(code, 2);
    let r = db
        .run_command(
            doc! {"update": "u", "updates": [{"q": {"_id": 2}, "u": {"$set": {"_id": 5}}}]},
        )
        .await
        .unwrap();
    assert_eq!(
        r.get_array("writeErrors").unwrap()[0]
            .as_document()
            .unwrap()
            .get_i32("code")
            .unwrap(),
        66
    );
}

#[tokio::test]
async fn indexes_are_used_and_listed() {
    let s = testkit::spawn().await;
    let db = s.client.database("app");
    let c = db.collection::<bson::Document>("items");
    let docs: Vec<_> = (0..500)
        .map(|i| doc! {"_id": i, "n": i % 50, "s": format!("k{i:04}")})
        .collect();
    c.insert_many(docs).await.unwrap();
    c.create_index(
        mongodb::IndexModel::builder()
            .keys(doc! {"n": 1, "s": -1})
            .build(),
    )
    .await
    .unwrap();
    let names = c.list_index_names().await.unwrap();
    assert_eq!(names, vec!["_id_".to_string(), "n_1_s_-1".to_string()]);
    let plan = db
        .run_command(doc! {"explain": {"find": "items", "filter": {"n": 7}}})
        .await
        .unwrap();
    let wp = plan
        .get_document("queryPlanner")
        .unwrap()
        .get_document("winningPlan")
        .unwrap();
    assert_eq!(
        wp.get_document("inputStage")
            .unwrap()
            .get_str("stage")
            .unwrap(),
        "IXSCAN"
    );
    let hits: Vec<_> = c
        .find(doc! {"n": 7})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(hits.len(), 10);
    let range: Vec<_> = c
        .find(doc! {"n": {"$gt": 47}})
        .sort(doc! {"n": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(range.len(), 20);
    assert!(
        range
            .windows(2)
            .all(|w| w[0].get_i32("n").unwrap() <= w[1].get_i32("n").unwrap())
    );
    let plan = db
        .run_command(doc! {"explain": {"find": "items", "filter": {"s": "k0001"}}})
        .await
        .unwrap();
    let wp = plan
        .get_document("queryPlanner")
        .unwrap()
        .get_document("winningPlan")
        .unwrap();
    assert_eq!(wp.get_str("stage").unwrap(), "COLLSCAN");
    // Index entries follow updates and deletes.
    c.update_many(doc! {"n": 7}, doc! {"$set": {"n": 700}})
        .await
        .unwrap();
    assert_eq!(c.count_documents(doc! {"n": 7}).await.unwrap(), 0);
    assert_eq!(c.count_documents(doc! {"n": 700}).await.unwrap(), 10);
    c.delete_many(doc! {"n": 700}).await.unwrap();
    assert_eq!(c.count_documents(doc! {"n": 700}).await.unwrap(), 0);
    // A unique index cannot be built over duplicates.
    let e = c
        .create_index(
            mongodb::IndexModel::builder()
                .keys(doc! {"n": 1})
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await;
    assert!(e.is_err());
    c.drop_index("n_1_s_-1").await.unwrap();
    let (code, _) = cmd_error(&db, doc! {"dropIndexes": "items", "index": "nope"}).await;
    assert_eq!(code, 27);
    // Batches: a find cursor over many documents.
    let all: Vec<_> = c
        .find(doc! {})
        .batch_size(7)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 490);
    let agg: Vec<_> = c
        .aggregate(vec![
            doc! {"$match": {"n": {"$lt": 3}}},
            doc! {"$group": {"_id": "$n", "c": {"$sum": 1}}},
            doc! {"$sort": {"_id": 1}},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        agg,
        vec![
            doc! {"_id": 0, "c": 10},
            doc! {"_id": 1, "c": 10},
            doc! {"_id": 2, "c": 10}
        ]
    );
}

#[tokio::test]
async fn retryable_write_applies_once() {
    let s = testkit::spawn().await;
    let db = s.client.database("app");
    let lsid = doc! {"id": bson::Uuid::new()};
    let cmd = doc! {"update": "r", "updates": [{"q": {"_id": 1}, "u": {"$inc": {"n": 1}}, "upsert": true}], "lsid": lsid.clone(), "txnNumber": 5i64, "$db": "app"};
    let first = crate::raw_command(s.port, cmd.clone()).await;
    let again = crate::raw_command(s.port, cmd).await;
    assert_eq!(first.get_i32("n").unwrap(), again.get_i32("n").unwrap());
    let d = db
        .collection::<bson::Document>("r")
        .find_one(doc! {"_id": 1})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.get_i32("n").unwrap(), 1, "the retry did not apply twice");
    let old = doc! {"insert": "r", "documents": [{"x": 1}], "lsid": lsid, "txnNumber": 4i64, "$db": "app"};
    let r = crate::raw_command(s.port, old).await;
    assert_eq!(r.get_i32("code").unwrap(), 225);
}
