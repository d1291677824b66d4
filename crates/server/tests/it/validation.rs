// validation: collection validators enforced on every write path, with MongoDB's errInfo.
// The cases follow MongoDB's schema-validation manual pages; each names its source.

use bson::{Bson, Document, doc};
use mongodb::Database;

use crate::cmd_error;

/// Runs a command and returns its reply (write errors are in the reply, not errors).
async fn run(db: &Database, cmd: Document) -> Document {
    db.run_command(cmd).await.unwrap()
}

fn first_write_error(r: &Document) -> Document {
    r.get_array("writeErrors").expect("writeErrors")[0]
        .as_document()
        .unwrap()
        .clone()
}

/// Source: https://www.mongodb.com/docs/v8.0/core/schema-validation/specify-json-schema/
#[tokio::test]
async fn json_schema_students_example() {
    let s = testkit::spawn().await;
    let db = s.client.database("school");
    run(&db, doc! {"create": "students", "validator": {"$jsonSchema": {
        "bsonType": "object",
        "title": "Student Object Validation",
        "required": ["address", "major", "name", "year"],
        "properties": {
            "name": {"bsonType": "string", "description": "'name' must be a string and is required"},
            "year": {"bsonType": "int", "minimum": 2017, "maximum": 3017, "description": "'year' must be an integer in [ 2017, 3017 ] and is required"},
            "gpa": {"bsonType": ["double"], "description": "'gpa' must be a double if the field exists"},
        },
    }}}).await;
    let bad = doc! {"_id": 1, "name": "Alice", "year": 2019, "major": "History", "gpa": 3, "address": {"city": "NYC", "street": "33rd Street"}};
    let r = run(&db, doc! {"insert": "students", "documents": [bad]}).await;
    assert_eq!(r.get_i32("n").unwrap(), 0);
    let e = first_write_error(&r);
    assert_eq!(e.get_i32("code").unwrap(), 121);
    assert_eq!(e.get_str("errmsg").unwrap(), "Document failed validation");
    assert_eq!(
        e.get_document("errInfo").unwrap(),
        &doc! {
            "failingDocumentId": 1,
            "details": {
                "operatorName": "$jsonSchema",
                "title": "Student Object Validation",
                "schemaRulesNotSatisfied": [{
                    "operatorName": "properties",
                    "propertiesNotSatisfied": [{
                        "propertyName": "gpa",
                        "description": "'gpa' must be a double if the field exists",
                        "details": [{"operatorName": "bsonType", "specifiedAs": {"bsonType": ["double"]}, "reason": "type did not match", "consideredValue": 3, "consideredType": "int"}],
                    }],
                }],
            },
        }
    );
    let good = doc! {"name": "Alice", "year": 2019, "major": "History", "gpa": 3.0, "address": {"city": "NYC", "street": "33rd Street"}};
    let r = run(&db, doc! {"insert": "students", "documents": [good]}).await;
    assert_eq!(r.get_i32("n").unwrap(), 1);
    // An update that breaks the schema is refused too.
    let r = run(&db, doc! {"update": "students", "updates": [{"q": {"name": "Alice"}, "u": {"$set": {"year": 2000}}}]}).await;
    assert_eq!(first_write_error(&r).get_i32("code").unwrap(), 121);
    // listCollections shows the validator as given.
    let info = run(
        &db,
        doc! {"listCollections": 1, "filter": {"name": "students"}},
    )
    .await;
    let first = info
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert!(
        first
            .get_document("options")
            .unwrap()
            .contains_key("validator")
    );
}

/// Source: https://www.mongodb.com/docs/v8.0/core/schema-validation/specify-query-expression-rules/
/// (the page uses Decimal128 amounts; integers here, as Eddy's decimal arithmetic goes
/// through doubles).
#[tokio::test]
async fn query_operator_orders_example() {
    let s = testkit::spawn().await;
    let db = s.client.database("shop");
    run(&db, doc! {"create": "orders", "validator": {"$expr": {"$eq": ["$totalWithVAT", {"$multiply": ["$total", {"$sum": [1, "$VAT"]}]}]}}}).await;
    let d = |t: i32, v: i32, w: i32| doc! {"total": t, "VAT": v, "totalWithVAT": w};
    let r = run(
        &db,
        doc! {"insert": "orders", "documents": [d(141, 1, 169)]},
    )
    .await;
    let e = first_write_error(&r);
    assert_eq!(e.get_i32("code").unwrap(), 121);
    let details = e
        .get_document("errInfo")
        .unwrap()
        .get_document("details")
        .unwrap();
    assert_eq!(details.get_str("operatorName").unwrap(), "$expr");
    assert_eq!(
        details.get_str("reason").unwrap(),
        "expression did not match"
    );
    assert!(!details.get_bool("expressionResult").unwrap());
    let r = run(
        &db,
        doc! {"insert": "orders", "documents": [d(141, 1, 282)]},
    )
    .await;
    assert_eq!(r.get_i32("n").unwrap(), 1);
}

/// Sources: https://www.mongodb.com/docs/v8.0/core/schema-validation/specify-validation-level/
/// and .../handle-invalid-documents/
#[tokio::test]
async fn levels_and_actions() {
    let s = testkit::spawn().await;
    let db = s.client.database("lv");
    let c = db.collection::<Document>("contacts");
    c.insert_many([
        doc! {"_id": 1, "name": "Anne", "phone": "+1 555 555 5555"},
        doc! {"_id": 2, "name": "Ivan"},
    ])
    .await
    .unwrap();
    // Adding a validator leaves existing documents alone.
    run(&db, doc! {"collMod": "contacts", "validator": {"$jsonSchema": {"required": ["phone", "name"], "properties": {"phone": {"bsonType": "string"}, "name": {"bsonType": "string"}}}}, "validationLevel": "moderate"}).await;
    assert_eq!(c.count_documents(doc! {}).await.unwrap(), 2);
    // Moderate: an already-invalid document may stay invalid; a valid one may not become so.
    let r = run(
        &db,
        doc! {"update": "contacts", "updates": [{"q": {"_id": 2}, "u": {"$set": {"name": 1}}}]},
    )
    .await;
    assert!(!r.contains_key("writeErrors"), "{r}");
    let r = run(
        &db,
        doc! {"update": "contacts", "updates": [{"q": {"_id": 1}, "u": {"$set": {"name": 1}}}]},
    )
    .await;
    assert_eq!(first_write_error(&r).get_i32("code").unwrap(), 121);
    // Strict checks every update.
    run(
        &db,
        doc! {"collMod": "contacts", "validationLevel": "strict"},
    )
    .await;
    let r = run(
        &db,
        doc! {"update": "contacts", "updates": [{"q": {"_id": 2}, "u": {"$set": {"name": 2}}}]},
    )
    .await;
    assert_eq!(first_write_error(&r).get_i32("code").unwrap(), 121);
    // Warn accepts (and logs); off skips validation entirely.
    run(
        &db,
        doc! {"collMod": "contacts", "validationAction": "warn"},
    )
    .await;
    c.insert_one(doc! {"_id": 3, "name": "Amanda", "status": "Updated"})
        .await
        .unwrap();
    run(
        &db,
        doc! {"collMod": "contacts", "validationAction": "error", "validationLevel": "off"},
    )
    .await;
    c.insert_one(doc! {"_id": 4}).await.unwrap();
    let info = run(
        &db,
        doc! {"listCollections": 1, "filter": {"name": "contacts"}},
    )
    .await;
    let opts = info
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()[0]
        .as_document()
        .unwrap()
        .get_document("options")
        .unwrap()
        .clone();
    assert_eq!(opts.get_str("validationLevel").unwrap(), "off");
    assert_eq!(opts.get_str("validationAction").unwrap(), "error");
    // Bad values get MongoDB's enumeration error.
    let (code, _) = cmd_error(&db, doc! {"collMod": "contacts", "validationLevel": "nope"}).await;
    assert_eq!(code, 2);
    let (code, _) = cmd_error(
        &db,
        doc! {"collMod": "contacts", "validationAction": "errorAndLog"},
    )
    .await;
    assert_eq!(code, 2, "errorAndLog is 8.1");
    // An empty validator removes validation.
    run(
        &db,
        doc! {"collMod": "contacts", "validator": {}, "validationLevel": "strict"},
    )
    .await;
    c.insert_one(doc! {"_id": 5}).await.unwrap();
}

/// Source: https://www.mongodb.com/docs/upcoming/core/schema-validation/bypass-document-validation/
/// and the server's bypass_doc_validation.js.
#[tokio::test]
async fn every_write_path_validates_and_bypass_skips() {
    let s = testkit::spawn().await;
    let db = s.client.database("bp");
    run(
        &db,
        doc! {"create": "v", "validator": {"a": {"$exists": true}}},
    )
    .await;
    // insert
    let r = run(&db, doc! {"insert": "v", "documents": [{"_id": 1}]}).await;
    assert_eq!(first_write_error(&r).get_i32("code").unwrap(), 121);
    let r = run(
        &db,
        doc! {"insert": "v", "documents": [{"_id": 1}], "bypassDocumentValidation": true},
    )
    .await;
    assert_eq!(r.get_i32("n").unwrap(), 1);
    // update, upsert, replacement and pipeline update
    for u in [
        Bson::Document(doc! {"$set": {"x": 1}}),
        Bson::Array(vec![Bson::Document(doc! {"$set": {"x": 1}})]),
    ] {
        let r = run(
            &db,
            doc! {"update": "v", "updates": [{"q": {"_id": 1}, "u": u.clone()}]},
        )
        .await;
        assert_eq!(first_write_error(&r).get_i32("code").unwrap(), 121);
        let r = run(
            &db,
            doc! {"update": "v", "updates": [{"q": {"_id": 1}, "u": u}]},
        )
        .await;
        assert!(r.contains_key("writeErrors"));
    }
    let r = run(&db, doc! {"update": "v", "updates": [{"q": {"_id": 9}, "u": {"$set": {"x": 1}}, "upsert": true}]}).await;
    assert_eq!(first_write_error(&r).get_i32("code").unwrap(), 121);
    let r = run(&db, doc! {"update": "v", "updates": [{"q": {"_id": 1}, "u": {"$set": {"x": 2}}}], "bypassDocumentValidation": true}).await;
    assert_eq!(r.get_i32("nModified").unwrap(), 1);
    // findAndModify fails the command, with errInfo
    let e = db
        .run_command(doc! {"findAndModify": "v", "query": {"_id": 1}, "update": {"$set": {"y": 1}}})
        .await
        .unwrap_err();
    match *e.kind {
        mongodb::error::ErrorKind::Command(c) => assert_eq!(c.code, 121),
        other => panic!("{other:?}"),
    }
    let r = run(&db, doc! {"findAndModify": "v", "query": {"_id": 1}, "update": {"$set": {"y": 1}}, "bypassDocumentValidation": true}).await;
    assert_eq!(
        r.get_document("lastErrorObject")
            .unwrap()
            .get_i32("n")
            .unwrap(),
        1
    );
    // bulkWrite (8.0 client bulk write)
    let r = s.client.database("admin").run_command(doc! {
        "bulkWrite": 1, "ops": [{"insert": 0, "document": {"_id": 20}}], "nsInfo": [{"ns": "bp.v"}],
    }).await.unwrap();
    assert_eq!(r.get_i32("nErrors").unwrap(), 1);
    let item = r
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(item.get_i32("code").unwrap(), 121);
    assert!(item.contains_key("errInfo"));
    let r = s.client.database("admin").run_command(doc! {
        "bulkWrite": 1, "ops": [{"insert": 0, "document": {"_id": 20}}], "nsInfo": [{"ns": "bp.v"}], "bypassDocumentValidation": true,
    }).await.unwrap();
    assert_eq!(r.get_i32("nErrors").unwrap(), 0);
    // $out and $merge into a validated collection
    db.collection::<Document>("src")
        .insert_one(doc! {"_id": 1, "b": 1})
        .await
        .unwrap();
    for stage in [doc! {"$merge": {"into": "v"}}, doc! {"$out": "v"}] {
        let (code, _) = cmd_error(
            &db,
            doc! {"aggregate": "src", "pipeline": [stage.clone()], "cursor": {}},
        )
        .await;
        assert_eq!(code, 121);
        run(&db, doc! {"aggregate": "src", "pipeline": [stage], "cursor": {}, "bypassDocumentValidation": true}).await;
    }
    // $out kept the target's validator.
    let r = run(&db, doc! {"insert": "v", "documents": [{"_id": 30}]}).await;
    assert_eq!(first_write_error(&r).get_i32("code").unwrap(), 121);
}

#[tokio::test]
async fn refused_validators_and_namespaces() {
    let s = testkit::spawn().await;
    let db = s.client.database("rv");
    for (v, code) in [
        (doc! {"$where": "true"}, 2),
        (doc! {"$text": {"$search": "x"}}, 2),
        (doc! {"loc": {"$nearSphere": [0, 0]}}, 5626500),
        (doc! {"$jsonSchema": {"format": "email"}}, 9),
        (doc! {"$jsonSchema": {"bogus": 1}}, 9),
    ] {
        let (got, _) = cmd_error(&db, doc! {"create": "x", "validator": v.clone()}).await;
        assert_eq!(got, code, "{v}");
    }
    for d in ["admin", "local", "config"] {
        let (got, _) = cmd_error(
            &s.client.database(d),
            doc! {"create": "x", "validator": {"a": 1}},
        )
        .await;
        assert_eq!(got, 72, "{d}");
    }
    let (got, _) = cmd_error(&db, doc! {"create": "system.x", "validator": {"a": 1}}).await;
    assert_eq!(got, 72);
}
