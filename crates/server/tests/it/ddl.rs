// ddl: create, drop, rename, collMod, listings, handshake and admin commands, errors.

use bson::{Bson, doc};

use crate::cmd_error;

#[tokio::test]
async fn catalog_commands() {
    let s = testkit::spawn().await;
    let db = s.client.database("shop");
    db.create_collection("orders").await.unwrap();
    let (code, name) = cmd_error(&db, doc! {"create": "orders", "validator": {"a": 1}}).await;
    assert_eq!((code, name.as_str()), (48, "NamespaceExists"));
    let (code, _) = cmd_error(&db, doc! {"create": "bad$name"}).await;
    assert_eq!(code, 73);
    db.run_command(doc! {"create": "img", "changeStreamPreAndPostImages": {"enabled": true}})
        .await
        .unwrap();
    let r = db
        .run_command(doc! {"listCollections": 1, "filter": {"name": "img"}})
        .await
        .unwrap();
    let info = r
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(
        info.get_document("options").unwrap(),
        &doc! {"changeStreamPreAndPostImages": {"enabled": true}}
    );
    assert!(matches!(
        info.get_document("info").unwrap().get("uuid"),
        Some(Bson::Binary(_))
    ));
    assert_eq!(
        info.get_document("idIndex")
            .unwrap()
            .get_str("name")
            .unwrap(),
        "_id_"
    );
    let names = db.list_collection_names().await.unwrap();
    assert_eq!(names.len(), 2);

    db.collection::<bson::Document>("orders")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    s.client
        .database("admin")
        .run_command(doc! {"renameCollection": "shop.orders", "to": "shop.old"})
        .await
        .unwrap();
    let (code, _) = cmd_error(
        &s.client.database("admin"),
        doc! {"renameCollection": "shop.orders", "to": "shop.x"},
    )
    .await;
    assert_eq!(code, 26);
    let (code, _) = cmd_error(
        &s.client.database("admin"),
        doc! {"renameCollection": "shop.old", "to": "shop.img"},
    )
    .await;
    assert_eq!(code, 48);
    s.client
        .database("admin")
        .run_command(doc! {"renameCollection": "shop.old", "to": "shop.img", "dropTarget": true})
        .await
        .unwrap();
    assert_eq!(
        db.collection::<bson::Document>("img")
            .count_documents(doc! {})
            .await
            .unwrap(),
        1
    );

    db.run_command(doc! {"collMod": "img", "changeStreamPreAndPostImages": {"enabled": false}})
        .await
        .unwrap();
    let (code, _) = cmd_error(&db, doc! {"collMod": "nope"}).await;
    assert_eq!(code, 26);
    let dbs = s.client.list_database_names().await.unwrap();
    assert!(dbs.contains(&"shop".to_string()));
    db.collection::<bson::Document>("img").drop().await.unwrap();
    db.collection::<bson::Document>("never")
        .drop()
        .await
        .unwrap();
    db.drop().await.unwrap();
    assert!(
        !s.client
            .list_database_names()
            .await
            .unwrap()
            .contains(&"shop".to_string())
    );
}

#[tokio::test]
async fn handshake_and_admin() {
    let s = testkit::spawn().await;
    let admin = s.client.database("admin");
    let h = admin.run_command(doc! {"hello": 1}).await.unwrap();
    assert!(h.get_bool("isWritablePrimary").unwrap());
    assert_eq!(h.get_str("setName").unwrap(), "rs0");
    assert_eq!(h.get_i32("maxWireVersion").unwrap(), 25);
    assert_eq!(
        h.get_array("hosts").unwrap()[0].as_str().unwrap(),
        format!("localhost:{}", s.port)
    );
    let legacy = admin.run_command(doc! {"ismaster": 1}).await.unwrap();
    assert!(legacy.get_bool("ismaster").unwrap());
    let ping = admin.run_command(doc! {"ping": 1}).await.unwrap();
    assert!(ping.get_timestamp("operationTime").is_ok());
    assert!(ping.get_document("$clusterTime").is_ok());
    let bi = admin.run_command(doc! {"buildinfo": 1}).await.unwrap();
    assert_eq!(bi.get_str("version").unwrap(), "8.0.4");
    let ss = admin.run_command(doc! {"serverStatus": 1}).await.unwrap();
    assert_eq!(
        ss.get_document("storageEngine")
            .unwrap()
            .get_str("name")
            .unwrap(),
        "redb"
    );
    assert!(
        ss.get_document("connections")
            .unwrap()
            .get_i64("current")
            .unwrap()
            >= 1
    );
    let params = admin.run_command(doc! {"getParameter": "*"}).await.unwrap();
    assert!(params.get_bool("enableTestCommands").unwrap());
    assert!(params.get_document("featureCompatibilityVersion").is_ok());
    let opts = admin.run_command(doc! {"getCmdLineOpts": 1}).await.unwrap();
    assert!(opts.get_document("parsed").is_ok());
    for c in [
        "hostInfo",
        "whatsmyuri",
        "connectionStatus",
        "listCommands",
        "replSetGetStatus",
        "replSetGetConfig",
        "endSessions",
        "killAllSessions",
        "refreshSessions",
    ] {
        let mut cmd = doc! {c: 1};
        if c == "endSessions" || c == "killAllSessions" || c == "refreshSessions" {
            cmd = doc! {c: []};
        }
        admin
            .run_command(cmd)
            .await
            .unwrap_or_else(|e| panic!("{c}: {e}"));
    }
    let (code, name) = cmd_error(&admin, doc! {"frobnicate": 1}).await;
    assert_eq!((code, name.as_str()), (59, "CommandNotFound"));
    // A fail point makes the next insert fail with the asked-for code and labels.
    admin
        .run_command(doc! {"configureFailPoint": "failCommand", "mode": {"times": 1}, "data": {"failCommands": ["insert"], "errorCode": 72, "errorLabels": ["X"]}})
        .await
        .unwrap();
    let db = s.client.database("t");
    let (code, _) = cmd_error(&db, doc! {"insert": "c", "documents": [{"a": 1}]}).await;
    assert_eq!(code, 72);
    db.run_command(doc! {"insert": "c", "documents": [{"a": 1}]})
        .await
        .unwrap();
}

#[tokio::test]
async fn fail_points_need_test_commands() {
    let s = testkit::spawn_with(|c| {
        c.parameters = bson::Document::new();
    })
    .await;
    let (code, _) = cmd_error(
        &s.client.database("admin"),
        doc! {"configureFailPoint": "failCommand", "mode": "alwaysOn"},
    )
    .await;
    assert_eq!(code, 59);
}

#[tokio::test]
async fn more_admin_and_cursor_commands() {
    let s = testkit::spawn().await;
    let admin = s.client.database("admin");
    let db = s.client.database("m");
    db.collection::<bson::Document>("c")
        .insert_many((0..30).map(|i| doc! {"_id": i, "even": i % 2 == 0}))
        .await
        .unwrap();
    let r = db
        .run_command(doc! {"count": "c", "query": {"even": true}})
        .await
        .unwrap();
    assert_eq!(r.get_i64("n").unwrap(), 15);
    let r = db
        .run_command(doc! {"count": "c", "query": {}, "skip": 10, "limit": 5})
        .await
        .unwrap();
    assert_eq!(r.get_i64("n").unwrap(), 5);
    // A find cursor: first batch, getMore, killCursors, then CursorNotFound.
    let r = db
        .run_command(doc! {"find": "c", "batchSize": 4})
        .await
        .unwrap();
    let cur = r.get_document("cursor").unwrap();
    assert_eq!(cur.get_array("firstBatch").unwrap().len(), 4);
    let id = cur.get_i64("id").unwrap();
    let r = db
        .run_command(doc! {"getMore": id, "collection": "c", "batchSize": 6})
        .await
        .unwrap();
    assert_eq!(
        r.get_document("cursor")
            .unwrap()
            .get_array("nextBatch")
            .unwrap()
            .len(),
        6
    );
    let r = db
        .run_command(doc! {"killCursors": "c", "cursors": [id]})
        .await
        .unwrap();
    assert_eq!(
        r.get_array("cursorsKilled").unwrap(),
        &vec![Bson::Int64(id)]
    );
    let (code, _) = cmd_error(&db, doc! {"getMore": id, "collection": "c"}).await;
    assert_eq!(code, 43);
    // The rest of a cursor drained by getMore ends with id 0.
    let r = db
        .run_command(doc! {"find": "c", "batchSize": 20})
        .await
        .unwrap();
    let id = r.get_document("cursor").unwrap().get_i64("id").unwrap();
    let r = db
        .run_command(doc! {"getMore": id, "collection": "c"})
        .await
        .unwrap();
    assert_eq!(r.get_document("cursor").unwrap().get_i64("id").unwrap(), 0);
    // Parameters.
    let r = admin
        .run_command(doc! {"setParameter": 1, "cursorTimeoutMillis": 1000i64})
        .await
        .unwrap();
    assert_eq!(r.get_i64("was").unwrap(), 600_000);
    let r = admin
        .run_command(doc! {"getParameter": 1, "cursorTimeoutMillis": 1})
        .await
        .unwrap();
    assert_eq!(r.get_i64("cursorTimeoutMillis").unwrap(), 1000);
    let (code, _) = cmd_error(&admin, doc! {"setParameter": 1, "noSuchThing": 1}).await;
    assert_eq!(code, 72);
    admin.run_command(doc! {"killSessions": []}).await.unwrap();
    let r = admin
        .run_command(doc! {"listDatabases": 1, "nameOnly": true})
        .await
        .unwrap();
    // admin, config and local are always listed, as on any replica set member.
    assert_eq!(
        r.get_array("databases").unwrap(),
        &vec![
            Bson::Document(doc! {"name": "admin"}),
            Bson::Document(doc! {"name": "config"}),
            Bson::Document(doc! {"name": "local"}),
            Bson::Document(doc! {"name": "m"}),
        ]
    );
    // A views reads through its pipeline.
    db.run_command(
        doc! {"create": "evens", "viewOn": "c", "pipeline": [{"$match": {"even": true}}]},
    )
    .await
    .unwrap();
    let r = db
        .run_command(doc! {"find": "evens", "filter": {"_id": {"$lt": 6}}})
        .await
        .unwrap();
    assert_eq!(
        r.get_document("cursor")
            .unwrap()
            .get_array("firstBatch")
            .unwrap()
            .len(),
        3
    );
    // shutdown on a database other than admin is refused; on admin it stops the server.
    let (code, _) = cmd_error(&db, doc! {"shutdown": 1}).await;
    assert_eq!(code, 13);
    let _ = admin.run_command(doc! {"shutdown": 1}).await;
    tokio::time::timeout(std::time::Duration::from_secs(5), s.running.stopped())
        .await
        .expect("server stops");
}
