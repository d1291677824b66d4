// embedded: the `eddy` library opens a data directory in-process, and its events and
// resume tokens are the server's: a stream moves from the server to the library and back
// without losing or repeating an event.

use bson::{Document, doc};
use futures_util::StreamExt;

use crate::crash::{free_port, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_moves_between_the_server_and_the_library() {
    let dir = tempfile::tempdir().unwrap();

    // 1. The server: five inserts, watched through the driver.
    let port = free_port();
    let mut server = start(dir.path(), port).await;
    let client = testkit::client_for(port).await;
    let coll = client.database("shop").collection::<Document>("orders");
    let mut cs = coll.watch().await.unwrap();
    for i in 0..5 {
        coll.insert_one(doc! {"_id": i, "qty": i}).await.unwrap();
    }
    let mut from_server = Vec::new();
    while from_server.len() < 5 {
        let ev = cs.next().await.unwrap().unwrap();
        from_server.push(bson::to_document(&ev).unwrap());
    }
    drop(cs);
    drop(client);
    server.start_kill().unwrap();
    server.wait().await.unwrap();

    // 2. The library on the same directory resumes after the server's second event and
    //    sees the last three with the very same tokens, then writes three more.
    let lib_tokens = {
        let db = eddy::Eddy::open(dir.path()).await.unwrap();
        let orders = db.database("shop").collection("orders");
        let token = from_server[1].get_document("_id").unwrap().clone();
        let mut s = orders
            .watch(
                vec![],
                eddy::WatchOptions {
                    resume_after: Some(token),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        for want in &from_server[2..] {
            let got = s.next().await.unwrap().unwrap();
            for k in [
                "_id",
                "operationType",
                "clusterTime",
                "wallTime",
                "ns",
                "documentKey",
                "fullDocument",
            ] {
                assert_eq!(got.get(k), want.get(k), "{k}: {got} vs {want}");
            }
        }
        assert_eq!(orders.count_documents(doc! {}).await.unwrap(), 5);
        for i in 5..8 {
            orders.insert_one(doc! {"_id": i, "qty": i}).await.unwrap();
        }
        orders
            .update_one(doc! {"_id": 7}, doc! {"$set": {"qty": 70}})
            .await
            .unwrap();
        let mut tokens = Vec::new();
        for _ in 0..4 {
            let ev = s.next().await.unwrap().unwrap();
            tokens.push(ev);
        }
        assert_eq!(
            orders
                .find_one(doc! {"_id": 7})
                .await
                .unwrap()
                .unwrap()
                .get_i32("qty")
                .unwrap(),
            70
        );
        assert!(orders.delete_one(doc! {"_id": "none"}).await.unwrap() == 0);
        s.close().await;
        tokens
    };

    // 3. The server again: a driver resumes after the library's first event.
    let mut server = None;
    for _ in 0..50 {
        // The library lets go of the directory once its background tasks have stopped.
        let p = free_port();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_eddy"))
            .args([
                "--port",
                &p.to_string(),
                "--dbpath",
                dir.path().to_str().unwrap(),
                "--quiet",
            ])
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut child = child;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if child.try_wait().unwrap().is_none() {
            server = Some((child, p));
            break;
        }
    }
    let (_child, port) = server.expect("the server opens the directory the library closed");
    let client = testkit::client_for(port).await;
    let coll = client.database("shop").collection::<Document>("orders");
    let token: mongodb::change_stream::event::ResumeToken = bson::from_bson(bson::Bson::Document(
        lib_tokens[0].get_document("_id").unwrap().clone(),
    ))
    .unwrap();
    let mut cs = coll.watch().resume_after(token).await.unwrap();
    for want in &lib_tokens[1..] {
        let ev = bson::to_document(&cs.next().await.unwrap().unwrap()).unwrap();
        for k in ["_id", "operationType", "clusterTime", "documentKey"] {
            assert_eq!(ev.get(k), want.get(k), "{k}: {ev} vs {want}");
        }
    }
    assert_eq!(coll.count_documents(doc! {}).await.unwrap(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_refuses_what_the_server_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let db = eddy::Eddy::open(dir.path()).await.unwrap();
    let c = db.collection("c");
    c.insert_one(doc! {"_id": 1}).await.unwrap();
    let e = c.insert_one(doc! {"_id": 1}).await.unwrap_err();
    assert_eq!(e.code, 11000);
    let e = c.find(doc! {"a": {"$bogus": 1}}, None).await.unwrap_err();
    assert_eq!((e.code, e.code_name.as_str()), (2, "BadValue"));
    let Err(e) = c.watch(vec![doc! {"$out": "x"}], Default::default()).await else {
        panic!("$out in a change stream is refused");
    };
    assert!(e.message.contains("$out"), "{}", e.message);
    // A second open of a directory in use is refused.
    assert!(eddy::Eddy::open(dir.path()).await.is_err());
}
