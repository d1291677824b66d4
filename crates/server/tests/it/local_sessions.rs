// local_sessions: the logical session cache and `$listLocalSessions`.

use bson::{Bson, Document, doc};

use crate::raw_command;

fn listed(r: &Document) -> Vec<Bson> {
    r.get_document("cursor")
        .unwrap_or_else(|_| panic!("no cursor in {r}"))
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|d| {
            d.as_document()
                .unwrap()
                .get_document("_id")
                .unwrap()
                .get("id")
                .unwrap()
                .clone()
        })
        .collect()
}

#[tokio::test]
async fn list_local_sessions_shows_used_sessions_until_they_end() {
    let s = testkit::spawn().await;
    let (a, b) = (bson::Uuid::new(), bson::Uuid::new());
    raw_command(s.port, doc! {"ping": 1, "lsid": {"id": a}, "$db": "admin"}).await;
    let list = |lsid: bson::Uuid, spec: Document| {
        doc! {
            "aggregate": 1,
            "pipeline": [{"$listLocalSessions": spec}, {"$sort": {"lastUse": 1}}],
            "cursor": {},
            "lsid": {"id": lsid},
            "$db": "admin",
        }
    };
    // The listing command's own session counts as used.
    let r = raw_command(s.port, list(b, doc! {})).await;
    // Two sessions used within one millisecond have no defined `lastUse` order.
    let mut ids = listed(&r);
    ids.sort_by_key(|b| b.to_string());
    let mut want = vec![Bson::from(a), Bson::from(b)];
    want.sort_by_key(|b| b.to_string());
    assert_eq!(ids, want);
    let r = raw_command(s.port, list(b, doc! {"allUsers": true})).await;
    assert_eq!(listed(&r).len(), 2);
    let r = raw_command(
        s.port,
        list(b, doc! {"users": [{"user": "u", "db": "admin"}]}),
    )
    .await;
    assert!(listed(&r).is_empty());

    raw_command(s.port, doc! {"endSessions": [{"id": a}], "$db": "admin"}).await;
    let r = raw_command(s.port, list(b, doc! {})).await;
    assert_eq!(listed(&r), vec![Bson::from(b)]);

    // Only on {aggregate: 1}.
    let r = raw_command(
        s.port,
        doc! {"aggregate": "c", "pipeline": [{"$listLocalSessions": {}}], "cursor": {}, "$db": "x"},
    )
    .await;
    assert_eq!(r.get_i32("code").unwrap(), 73, "{r}");
}
