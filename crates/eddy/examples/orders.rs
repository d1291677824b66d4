//! Eddy embedded, end to end: open a data directory in-process, watch a collection, write
//! to it, and print each change with its resume token; run it again and it resumes from
//! the token it saved, missing nothing.
//!
//! cargo run -p eddy --example orders -- ./orders-data

use bson::doc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./orders-data".into());
    let token_file = std::path::Path::new(&dir).join("orders.token");
    let db = eddy::Eddy::open(&dir).await?;
    let orders = db.database("shop").collection("orders");

    // Resume where the last run stopped, if it saved a token.
    let resume_after = std::fs::read(&token_file)
        .ok()
        .and_then(|b| bson::Document::from_reader(b.as_slice()).ok());
    let mut stream = orders
        .watch(
            vec![doc! {"$match": {"operationType": {"$in": ["insert", "update"]}}}],
            eddy::WatchOptions {
                full_document: Some("updateLookup".into()),
                resume_after,
                ..Default::default()
            },
        )
        .await?;

    let n = orders.count_documents(doc! {}).await?;
    let id = orders
        .insert_one(doc! {"item": "tea", "qty": 2, "seq": n})
        .await?;
    orders
        .update_one(doc! {"_id": &id}, doc! {"$inc": {"qty": 1}})
        .await?;
    println!("orders now: {}", orders.count_documents(doc! {}).await?);

    // Every change since the last run (or since the stream opened), then stop when idle.
    while let Some(ev) = stream.try_next().await? {
        let full = ev.get_document("fullDocument").ok();
        println!(
            "{:<7} {} -> {}",
            ev.get_str("operationType")?,
            full.and_then(|d| d.get("item"))
                .map_or("?".into(), |v| v.to_string()),
            full.and_then(|d| d.get("qty"))
                .map_or("?".into(), |v| v.to_string()),
        );
        if let Some(t) = stream.resume_token() {
            let mut buf = Vec::new();
            t.to_writer(&mut buf)?;
            std::fs::write(&token_file, buf)?;
        }
    }
    Ok(())
}
