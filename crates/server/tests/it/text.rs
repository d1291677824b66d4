// text: text indexes and `$text`, against the examples of MongoDB's manual and jstests
// (each with its source).

use bson::{Bson, Document, doc};
use futures_util::TryStreamExt;
use mongodb::{Collection, Database};

use crate::cmd_error;

/// The manual's `articles` collection with its text index.
/// Source: https://www.mongodb.com/docs/manual/reference/operator/query/text/ (Examples)
async fn articles(db: &Database) -> Collection<Document> {
    let c = db.collection::<Document>("articles");
    c.insert_many(vec![
        doc! {"_id": 1, "subject": "coffee", "author": "xyz", "views": 50},
        doc! {"_id": 2, "subject": "Coffee Shopping", "author": "efg", "views": 5},
        doc! {"_id": 3, "subject": "Baking a cake", "author": "abc", "views": 90},
        doc! {"_id": 4, "subject": "baking", "author": "xyz", "views": 100},
        doc! {"_id": 5, "subject": "Café Con Leche", "author": "abc", "views": 200},
        doc! {"_id": 6, "subject": "Сырники", "author": "jkl", "views": 80},
        doc! {"_id": 7, "subject": "coffee and cream", "author": "efg", "views": 10},
        doc! {"_id": 8, "subject": "Cafe con Leche", "author": "xyz", "views": 10},
    ])
    .await
    .unwrap();
    db.run_command(doc! {"createIndexes": "articles", "indexes": [{"key": {"subject": "text"}, "name": "subject_text"}]})
        .await
        .unwrap();
    c
}

async fn ids(c: &Collection<Document>, filter: Document) -> Vec<i32> {
    let mut v: Vec<i32> = c
        .find(filter)
        .await
        .unwrap()
        .try_collect::<Vec<Document>>()
        .await
        .unwrap()
        .iter()
        .map(|d| d.get_i32("_id").unwrap())
        .collect();
    v.sort_unstable();
    v
}

fn text(search: &str) -> Document {
    doc! {"$text": {"$search": search}}
}

/// Source: the `$text` manual page's examples (terms, phrases, negation, languages,
/// case and diacritic sensitivity, scores), with the scores mongod's formula gives.
#[tokio::test]
async fn text_search_matches_the_manual() {
    let s = testkit::spawn().await;
    let db = s.client.database("txt");
    let c = articles(&db).await;
    assert_eq!(ids(&c, text("coffee")).await, vec![1, 2, 7]);
    assert_eq!(ids(&c, text("bake coffee cake")).await, vec![1, 2, 3, 4, 7]);
    assert_eq!(ids(&c, text("\"coffee shop\"")).await, vec![2]);
    assert_eq!(ids(&c, text("coffee -shop")).await, vec![1, 7]);
    assert_eq!(
        ids(&c, doc! {"$text": {"$search": "leche", "$language": "es"}}).await,
        vec![5, 8]
    );
    assert_eq!(ids(&c, text("сы́рники CAFÉS")).await, vec![5, 6, 8]);
    assert_eq!(
        ids(
            &c,
            doc! {"$text": {"$search": "Coffee", "$caseSensitive": true}}
        )
        .await,
        vec![2]
    );
    assert_eq!(
        ids(
            &c,
            doc! {"$text": {"$search": "\"Café Con Leche\"", "$caseSensitive": true}}
        )
        .await,
        vec![5]
    );
    assert_eq!(
        ids(
            &c,
            doc! {"$text": {"$search": "Coffee -shop", "$caseSensitive": true}}
        )
        .await,
        vec![2]
    );
    assert_eq!(
        ids(
            &c,
            doc! {"$text": {"$search": "CAFÉ", "$diacriticSensitive": true}}
        )
        .await,
        vec![5]
    );
    assert_eq!(
        ids(
            &c,
            doc! {"$text": {"$search": "leches -cafés", "$diacriticSensitive": true}}
        )
        .await,
        vec![8]
    );
    assert_eq!(
        ids(&c, text("'coffee shop' 'Cafe con Leche'")).await,
        vec![1, 2, 5, 7, 8]
    );
    assert_eq!(
        ids(
            &c,
            doc! {"author": "xyz", "$text": {"$search": "coffee bake"}}
        )
        .await,
        vec![1, 4]
    );
    // Only negations or stop words: nothing.
    assert!(ids(&c, text("-coffee")).await.is_empty());
    assert!(ids(&c, text("the and")).await.is_empty());

    // Scores: "cake" in "Baking a cake" is 0.75 (the manual's figure); sorted by score.
    let docs: Vec<Document> = c
        .find(text("cake"))
        .projection(doc! {"score": {"$meta": "textScore"}})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].get_f64("score").unwrap(), 0.75);
    assert_eq!(docs[0].get_str("subject").unwrap(), "Baking a cake");
    assert!(!docs[0].keys().any(|k| k.starts_with('$')), "{:?}", docs[0]);
    let docs: Vec<Document> = c
        .find(text("bake coffee cake"))
        .projection(doc! {"score": {"$meta": "textScore"}, "subject": 0})
        .sort(doc! {"score": {"$meta": "textScore"}, "_id": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let got: Vec<(i32, f64)> = docs
        .iter()
        .map(|d| (d.get_i32("_id").unwrap(), d.get_f64("score").unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![(3, 1.5), (1, 1.0), (4, 1.0), (2, 0.75), (7, 0.75)]
    );
    assert!(!docs[0].contains_key("subject"));

    // The same through aggregation.
    let docs: Vec<Document> = c
        .aggregate(vec![
            doc! {"$match": {"$text": {"$search": "coffee"}}},
            doc! {"$sort": {"score": {"$meta": "textScore"}}},
            doc! {"$project": {"score": {"$meta": "textScore"}}},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let got: Vec<(i32, f64)> = docs
        .iter()
        .map(|d| (d.get_i32("_id").unwrap(), d.get_f64("score").unwrap()))
        .collect();
    assert_eq!(got[0], (1, 1.0));
    assert_eq!(got.len(), 3);
    let n = db
        .run_command(doc! {"count": "articles", "query": text("coffee")})
        .await
        .unwrap();
    assert_eq!(crate::doc_num(&n, "n"), 3);

    // The index serves the query; explain shows mongod's text stages.
    let e = db
        .run_command(doc! {"explain": {"find": "articles", "filter": text("coffee")}})
        .await
        .unwrap();
    let plan = e
        .get_document("queryPlanner")
        .unwrap()
        .get_document("winningPlan")
        .unwrap();
    assert_eq!(plan.get_str("stage").unwrap(), "TEXT_MATCH", "{plan}");

    // Writes keep the index current.
    c.update_one(doc! {"_id": 4}, doc! {"$set": {"subject": "coffee beans"}})
        .await
        .unwrap();
    c.delete_one(doc! {"_id": 1}).await.unwrap();
    assert_eq!(ids(&c, text("coffee")).await, vec![2, 4, 7]);
    assert_eq!(ids(&c, text("baking")).await, vec![3]);
    let r = c.delete_many(text("coffee")).await.unwrap();
    assert_eq!(r.deleted_count, 3);
}

/// Source: https://www.mongodb.com/docs/manual/core/indexes/index-types/index-text/control-text-search-results/
/// (the `blog` collection, weights content 10, keywords 5). The manual prints 6 for the
/// third document's "coffee" score, for a sentence with one more word than the document it
/// inserts; mongod's formula over the inserted text gives 6.25.
#[tokio::test]
async fn weights_and_scores_match_the_manual() {
    let s = testkit::spawn().await;
    let db = s.client.database("txt");
    let c = db.collection::<Document>("blog");
    c.insert_many(vec![
        doc! {"_id": 1, "content": "This morning I had a cup of coffee.", "about": "beverage", "keywords": ["coffee"]},
        doc! {"_id": 2, "content": "Who likes chocolate ice cream for dessert?", "about": "food", "keywords": ["poll"]},
        doc! {"_id": 3, "content": "My favorite flavors are strawberry and coffee", "about": "ice cream", "keywords": ["food", "dessert"]},
    ])
    .await
    .unwrap();
    db.run_command(doc! {"createIndexes": "blog", "indexes": [{
        "key": {"content": "text", "keywords": "text", "about": "text"},
        "weights": {"content": 10, "keywords": 5},
        "name": "BlogTextIndex",
    }]})
    .await
    .unwrap();
    let scores = |q: &'static str| {
        let c = c.clone();
        async move {
            c.find(text(q))
                .projection(doc! {"score": {"$meta": "textScore"}})
                .sort(doc! {"score": {"$meta": "textScore"}})
                .await
                .unwrap()
                .try_collect::<Vec<Document>>()
                .await
                .unwrap()
                .iter()
                .map(|d| (d.get_i32("_id").unwrap(), d.get_f64("score").unwrap()))
                .collect::<Vec<_>>()
        }
    };
    // ice/cream: "ice" is "ic" after stemming in neither case; the score is what matters.
    assert_eq!(scores("ice cream").await, vec![(2, 12.0), (3, 1.5)]);
    assert_eq!(scores("food").await, vec![(3, 5.5), (2, 1.1)]);
    let coffee = scores("coffee").await;
    assert_eq!(coffee[0].0, 1);
    assert!(
        (coffee[0].1 - 11.666666666666666).abs() < 1e-12,
        "{coffee:?}"
    );
    assert_eq!(coffee[1], (3, 6.25));

    // listIndexes shows the index as mongod stores it.
    let r = db.run_command(doc! {"listIndexes": "blog"}).await.unwrap();
    let specs = r
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap();
    let ix = specs[1].as_document().unwrap();
    assert_eq!(
        ix.get_document("key").unwrap(),
        &doc! {"_fts": "text", "_ftsx": 1}
    );
    assert_eq!(
        ix.get_document("weights").unwrap(),
        &doc! {"about": 1, "content": 10, "keywords": 5}
    );
    assert_eq!(ix.get_str("default_language").unwrap(), "english");
    assert_eq!(ix.get_str("language_override").unwrap(), "language");
    assert_eq!(ix.get_i32("textIndexVersion").unwrap(), 3);
}

/// Sources: jstests/core/index/fts/fts_score_sort.js (scores 1.5 and 0.75; 40218 without
/// $text), fts_casesensitive.js, fts_index.js (one text index per collection; languages),
/// and the $text page's errors.
#[tokio::test]
async fn text_errors_and_edge_cases() {
    let s = testkit::spawn().await;
    let db = s.client.database("txt");
    let c = db.collection::<Document>("t");
    c.insert_many(vec![
        doc! {"_id": 0, "a": "textual content"},
        doc! {"_id": 1, "a": "additional content"},
        doc! {"_id": 2, "a": "irrelevant content"},
    ])
    .await
    .unwrap();
    // No text index yet.
    let find = |f: Document| doc! {"find": "t", "filter": f};
    assert_eq!(cmd_error(&db, find(text("content"))).await.0, 27);
    db.run_command(
        doc! {"createIndexes": "t", "indexes": [{"key": {"a": "text"}, "name": "a_text"}]},
    )
    .await
    .unwrap();
    let docs: Vec<Document> = c
        .find(text("textual content -irrelevant"))
        .projection(doc! {"score": {"$meta": "textScore"}})
        .sort(doc! {"score": {"$meta": "textScore"}})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        docs,
        vec![
            doc! {"_id": 0, "a": "textual content", "score": 1.5},
            doc! {"_id": 1, "a": "additional content", "score": 0.75}
        ]
    );
    let sorted = doc! {"find": "t", "filter": {}, "sort": {"s": {"$meta": "textScore"}}};
    assert_eq!(cmd_error(&db, sorted).await.0, 40218);
    let projected = doc! {"find": "t", "filter": {}, "projection": {"s": {"$meta": "textScore"}}};
    assert_eq!(cmd_error(&db, projected).await.0, 40218);

    // A second text index, of another key pattern, is refused; the same pattern under
    // another name is an options conflict.
    let create = |key: Document, name: &str| doc! {"createIndexes": "t", "indexes": [{"key": key, "name": name}]};
    assert_eq!(
        cmd_error(&db, create(doc! {"b": "text"}, "b_text")).await.0,
        85
    );
    assert_eq!(
        cmd_error(&db, create(doc! {"x": 1, "b": "text"}, "x_b"))
            .await
            .0,
        67
    );
    let bad_lang = doc! {"createIndexes": "u", "indexes": [{"key": {"a": "text"}, "name": "a", "default_language": "spanglish"}]};
    assert_eq!(cmd_error(&db, bad_lang).await.0, 67);
    let bad_weight = doc! {"createIndexes": "u", "indexes": [{"key": {"a": "text"}, "name": "a", "weights": {"a": 0}}]};
    assert_eq!(cmd_error(&db, bad_weight).await.0, 67);
    let weights_elsewhere = doc! {"createIndexes": "u", "indexes": [{"key": {"a": 1}, "name": "a", "weights": {"a": 2}}]};
    assert_eq!(cmd_error(&db, weights_elsewhere).await.0, 67);
    // A document with an unsupported language override is refused, and nothing is written.
    let w = c
        .insert_one(doc! {"_id": 9, "a": "hola", "language": "spanglish"})
        .await
        .unwrap_err();
    assert!(w.to_string().contains("17262"), "{w}");
    assert!(c.find_one(doc! {"_id": 9}).await.unwrap().is_none());

    // Where $text may not stand.
    for (f, code) in [
        (doc! {"$text": "x"}, 2),
        (doc! {"$text": {"$search": 1}}, 14),
        (doc! {"$text": {}}, 4),
        (doc! {"$text": {"$search": "x", "$language": "klingon"}}, 2),
        (doc! {"$text": {"$search": "x", "bogus": 1}}, 2),
        (doc! {"$nor": [{"$text": {"$search": "x"}}]}, 2),
        (
            doc! {"$and": [{"$text": {"$search": "x"}}, {"$text": {"$search": "y"}}]},
            2,
        ),
        (doc! {"r": {"$elemMatch": {"$text": {"$search": "x"}}}}, 2),
        (doc! {"$or": [{"$text": {"$search": "x"}}, {"b": 1}]}, 291),
    ] {
        assert_eq!(cmd_error(&db, find(f.clone())).await.0, code, "{f}");
    }
    let late = doc! {"aggregate": "t", "pipeline": [{"$match": {}}, {"$match": {"$text": {"$search": "x"}}}], "cursor": {}};
    assert_eq!(cmd_error(&db, late).await.0, 17313);

    // Case-sensitive matching (fts_casesensitive.js).
    let f = db.collection::<Document>("fox");
    f.insert_one(doc! {"_id": 0, "a": "The Quick Brown Fox Jumps Over The Lazy Dog"})
        .await
        .unwrap();
    db.run_command(
        doc! {"createIndexes": "fox", "indexes": [{"key": {"a": "text"}, "name": "a_text"}]},
    )
    .await
    .unwrap();
    let cs = |q: &str| doc! {"$text": {"$search": q, "$caseSensitive": true}};
    for q in [
        "The quick Brown",
        "Jumped",
        "\"Quick\"",
        "\"Fox\" Jumped",
        "\"Fox Jumps\" \"Over The\"",
        "\"Fox Jumps\" -\"over the\"",
    ] {
        assert_eq!(ids(&f, cs(q)).await, vec![0], "{q}");
    }
    for q in [
        "The",
        "quick",
        "The quick brown",
        "The -quick -brown",
        "The quick -brown",
        "he Quic",
        "\"over the\"",
        "\"Fox Jumps\" -\"Over The\"",
    ] {
        assert!(ids(&f, cs(q)).await.is_empty(), "{q}");
    }

    // A compound text index needs equality on its prefix fields.
    let p = db.collection::<Document>("pre");
    p.insert_many(vec![
        doc! {"_id": 1, "k": 1, "s": "red apple"},
        doc! {"_id": 2, "k": 2, "s": "red car"},
    ])
    .await
    .unwrap();
    db.run_command(
        doc! {"createIndexes": "pre", "indexes": [{"key": {"k": 1, "s": "text"}, "name": "k_s"}]},
    )
    .await
    .unwrap();
    assert_eq!(
        ids(&p, doc! {"k": 2, "$text": {"$search": "red"}}).await,
        vec![2]
    );
    let no_prefix = doc! {"find": "pre", "filter": text("red")};
    assert_eq!(cmd_error(&db, no_prefix).await.0, 291);
    let _ = Bson::Null;
}
