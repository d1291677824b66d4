//! Collation across the query language: filters, sorts, `$group`, accumulators and
//! aggregation expressions, table-driven over strengths, case ordering, numeric ordering,
//! accents and locales.

use std::sync::Arc;

use bson::{Bson, DateTime, Document, Timestamp, bson, doc};
use doc::Collation;
use errors::Result;

use crate::expr::{Expr, Vars};
use crate::filter::Filter;
use crate::pipeline::{Env, Pipeline};
use crate::sort::SortSpec;
use crate::update::{Update, UpdateCtx};

fn coll(spec: Document) -> Option<Arc<Collation>> {
    Collation::parse(&spec).unwrap()
}

struct NoEnv;

impl Env for NoEnv {
    fn collection_docs(&self, _db: &str, _coll: &str) -> Result<Vec<Document>> {
        Ok(Vec::new())
    }
    fn now(&self) -> DateTime {
        DateTime::from_millis(0)
    }
    fn cluster_time(&self) -> Timestamp {
        Timestamp {
            time: 0,
            increment: 0,
        }
    }
}

#[test]
fn filter_operators_follow_the_collation() {
    // (collation, filter, document, matches)
    let cases: Vec<(Document, Document, Document, bool)> = vec![
        // Strength 1: base letters only (case and accents ignored).
        (
            doc! {"locale": "en", "strength": 1},
            doc! {"x": "cafe"},
            doc! {"x": "Café"},
            true,
        ),
        // Strength 2: accents matter, case doesn't.
        (
            doc! {"locale": "en", "strength": 2},
            doc! {"x": "cafe"},
            doc! {"x": "CAFE"},
            true,
        ),
        (
            doc! {"locale": "en", "strength": 2},
            doc! {"x": "cafe"},
            doc! {"x": "café"},
            false,
        ),
        // Strength 3 (default): case matters too.
        (
            doc! {"locale": "en"},
            doc! {"x": "cafe"},
            doc! {"x": "CAFE"},
            false,
        ),
        // Simple collation: bytes.
        (
            doc! {"locale": "simple"},
            doc! {"x": "cafe"},
            doc! {"x": "CAFE"},
            false,
        ),
        (doc! {}, doc! {"x": {"$gt": "Z"}}, doc! {"x": "a"}, true),
        // Ranges: "a" < "B" under en, but not by bytes.
        (
            doc! {"locale": "en"},
            doc! {"x": {"$gt": "B"}},
            doc! {"x": "a"},
            false,
        ),
        (
            doc! {"locale": "en"},
            doc! {"x": {"$lt": "B"}},
            doc! {"x": "a"},
            true,
        ),
        (
            doc! {"locale": "en"},
            doc! {"x": {"$lte": "b"}},
            doc! {"x": "B"},
            false,
        ),
        // $ne, $in, $nin.
        (
            doc! {"locale": "en", "strength": 2},
            doc! {"x": {"$ne": "A"}},
            doc! {"x": "a"},
            false,
        ),
        (
            doc! {"locale": "en", "strength": 2},
            doc! {"x": {"$in": ["Q", "B"]}},
            doc! {"x": "b"},
            true,
        ),
        (
            doc! {"locale": "en", "strength": 2},
            doc! {"x": {"$nin": ["Q", "B"]}},
            doc! {"x": "b"},
            false,
        ),
        // Arrays, nested documents, $elemMatch, $all.
        (
            doc! {"locale": "en", "strength": 2},
            doc! {"x": "B"},
            doc! {"x": ["a", "b"]},
            true,
        ),
        (
            doc! {"locale": "en", "strength": 2},
            doc! {"x": {"k": "V"}},
            doc! {"x": {"k": "v"}},
            true,
        ),
        (
            doc! {"locale": "en", "strength": 2},
            doc! {"x": ["A", "B"]},
            doc! {"x": ["a", "b"]},
            true,
        ),
        (
            doc! {"locale": "en", "strength": 2},
            doc! {"x": {"$elemMatch": {"$eq": "B"}}},
            doc! {"x": ["a", "b"]},
            true,
        ),
        (
            doc! {"locale": "en", "strength": 2},
            doc! {"x": {"$elemMatch": {"k": "B"}}},
            doc! {"x": [{"k": "b"}]},
            true,
        ),
        (
            doc! {"locale": "en", "strength": 2},
            doc! {"x": {"$all": ["A", "B"]}},
            doc! {"x": ["b", "a"]},
            true,
        ),
        // $regex ignores the collation.
        (
            doc! {"locale": "en", "strength": 1},
            doc! {"x": {"$regex": "^A"}},
            doc! {"x": "abc"},
            false,
        ),
        // $expr comparisons use it too.
        (
            doc! {"locale": "en", "strength": 2},
            doc! {"$expr": {"$eq": ["$x", "ABC"]}},
            doc! {"x": "abc"},
            true,
        ),
        // numericOrdering: "10" > "9" as numbers, not as text.
        (
            doc! {"locale": "en", "numericOrdering": true},
            doc! {"x": {"$gt": "9"}},
            doc! {"x": "10"},
            true,
        ),
        (
            doc! {"locale": "en"},
            doc! {"x": {"$gt": "9"}},
            doc! {"x": "10"},
            false,
        ),
        // Field names never collate.
        (
            doc! {"locale": "en", "strength": 1},
            doc! {"X": "a"},
            doc! {"x": "a"},
            false,
        ),
        // Other types are untouched.
        (
            doc! {"locale": "en", "strength": 1},
            doc! {"x": 1},
            doc! {"x": "1"},
            false,
        ),
    ];
    for (spec, filter, d, want) in cases {
        let f = Filter::parse(&filter)
            .unwrap()
            .with_collation(coll(spec.clone()));
        assert_eq!(f.matches(&d), want, "{spec} {filter} on {d}");
        assert_eq!(f.try_matches(&d).unwrap(), want, "{spec} {filter} on {d}");
    }
}

fn sorted(spec: Document, sort: Document, values: &[&str]) -> Vec<String> {
    let s = SortSpec::parse(&sort).unwrap().with_collation(coll(spec));
    let mut docs: Vec<Document> = values.iter().map(|v| doc! {"s": *v}).collect();
    s.sort(&mut docs);
    docs.iter()
        .map(|d| d.get_str("s").unwrap().to_string())
        .collect()
}

#[test]
fn sorts_follow_case_first_locale_and_numeric_ordering() {
    let words = ["b", "B", "a", "A", "ä", "10", "9"];
    // (collation, expected ascending order)
    let cases: Vec<(Document, Vec<&str>)> = vec![
        (doc! {}, vec!["10", "9", "A", "B", "a", "b", "ä"]),
        (
            doc! {"locale": "en"},
            vec!["10", "9", "a", "A", "ä", "b", "B"],
        ),
        (
            doc! {"locale": "en", "caseFirst": "upper"},
            vec!["10", "9", "A", "a", "ä", "B", "b"],
        ),
        (
            doc! {"locale": "en", "numericOrdering": true},
            vec!["9", "10", "a", "A", "ä", "b", "B"],
        ),
        // Swedish sorts ä after z, so after every other letter here.
        (
            doc! {"locale": "sv"},
            vec!["10", "9", "a", "A", "b", "B", "ä"],
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(sorted(spec.clone(), doc! {"s": 1}, &words), want, "{spec}");
        let mut desc = want.clone();
        desc.reverse();
        assert_eq!(sorted(spec.clone(), doc! {"s": -1}, &words), desc, "{spec}");
    }
}

#[test]
fn french_accents_compare_from_the_end_in_canada() {
    // Backward secondary weights: the last accent decides in fr_CA, the first in fr.
    let words = ["cote", "côte", "coté", "côté"];
    assert_eq!(
        sorted(doc! {"locale": "fr"}, doc! {"s": 1}, &words),
        vec!["cote", "coté", "côte", "côté"]
    );
    assert_eq!(
        sorted(doc! {"locale": "fr_CA"}, doc! {"s": 1}, &words),
        vec!["cote", "côte", "coté", "côté"]
    );
}

#[test]
fn shifted_alternate_ignores_punctuation() {
    let f = |alternate: &str| {
        Filter::parse(&doc! {"x": "blackbird"})
            .unwrap()
            .with_collation(coll(
                doc! {"locale": "en", "strength": 3, "alternate": alternate},
            ))
    };
    let d = doc! {"x": "black-bird"};
    assert!(!f("non-ignorable").matches(&d));
    assert!(f("shifted").matches(&d));
}

fn agg(spec: Document, stages: Vec<Document>, input: Vec<Document>) -> Vec<Document> {
    Pipeline::parse(&stages, "db")
        .unwrap()
        .with_collation(coll(spec))
        .run(input, &(Arc::new(NoEnv) as crate::pipeline::SharedEnv))
        .unwrap()
}

#[test]
fn group_keys_and_accumulators_follow_the_collation() {
    let input = vec![
        doc! {"_id": 1, "k": "a", "v": "X"},
        doc! {"_id": 2, "k": "A", "v": "y"},
        doc! {"_id": 3, "k": "b", "v": "x"},
    ];
    let stages = vec![
        doc! {"$group": {
            "_id": "$k", "n": {"$sum": 1}, "min": {"$min": "$v"}, "max": {"$max": "$v"},
            "set": {"$addToSet": "$v"},
        }},
        doc! {"$sort": {"_id": 1}},
    ];
    let ci = agg(
        doc! {"locale": "en", "strength": 2},
        stages.clone(),
        input.clone(),
    );
    assert_eq!(
        ci,
        vec![
            doc! {"_id": "a", "n": 2, "min": "X", "max": "y", "set": ["X", "y"]},
            doc! {"_id": "b", "n": 1, "min": "x", "max": "x", "set": ["x"]},
        ]
    );
    let simple = agg(doc! {}, stages, input.clone());
    assert_eq!(simple.len(), 3);
    assert_eq!(simple[0].get_str("_id"), Ok("A"));

    let by_count = agg(
        doc! {"locale": "en", "strength": 1},
        vec![doc! {"$sortByCount": "$k"}],
        input.clone(),
    );
    assert_eq!(by_count[0].get_i32("count"), Ok(2));
    let matched = agg(
        doc! {"locale": "en", "strength": 2},
        vec![doc! {"$match": {"k": "A"}}, doc! {"$count": "n"}],
        input,
    );
    assert_eq!(matched, vec![doc! {"n": 2}]);
}

#[test]
fn bucket_boundaries_follow_the_collation() {
    let input = vec![
        doc! {"s": "apple"},
        doc! {"s": "Banana"},
        doc! {"s": "cherry"},
    ];
    let stages = vec![doc! {"$bucket": {
        "groupBy": "$s", "boundaries": ["a", "b", "c"], "default": "other",
    }}];
    let en = agg(doc! {"locale": "en"}, stages.clone(), input.clone());
    assert_eq!(
        en,
        vec![
            doc! {"_id": "a", "count": 1},
            doc! {"_id": "b", "count": 1},
            doc! {"_id": "other", "count": 1},
        ]
    );
    // By bytes "Banana" < "a", so it falls outside the boundaries.
    let simple = agg(doc! {}, stages, input);
    assert_eq!(
        simple
            .iter()
            .find(|d| d.get_str("_id") == Ok("other"))
            .unwrap()
            .get_i32("count"),
        Ok(2)
    );
}

#[test]
fn comparison_expressions_follow_the_collation() {
    let mut vars = Vars::default();
    vars.set_collation(coll(doc! {"locale": "en", "strength": 2}));
    let eval = |e: Bson| Expr::parse(&e).unwrap().eval(&doc! {}, &vars).unwrap();
    let cases = vec![
        (bson!({"$eq": ["abc", "ABC"]}), bson!(true)),
        (bson!({"$ne": ["abc", "ABC"]}), bson!(false)),
        (bson!({"$cmp": ["a", "B"]}), bson!(-1)),
        (bson!({"$lt": ["B", "a"]}), bson!(false)),
        (bson!({"$in": ["X", ["x", "y"]]}), bson!(true)),
        (bson!({"$indexOfArray": [["a", "B"], "b"]}), bson!(1)),
        (bson!({"$setUnion": [["a", "A"], ["b"]]}), bson!(["a", "b"])),
        (
            bson!({"$setIntersection": [["a", "B"], ["b"]]}),
            bson!(["B"]),
        ),
        (bson!({"$setDifference": [["a", "B"], ["b"]]}), bson!(["a"])),
        (bson!({"$setEquals": [["a", "B"], ["b", "A"]]}), bson!(true)),
        (bson!({"$setIsSubset": [["A"], ["a", "b"]]}), bson!(true)),
        (bson!({"$max": [["a", "B"]]}), bson!("B")),
        (bson!({"$min": ["b", "A"]}), bson!("A")),
        (bson!({"$eq": [{"k": ["Q"]}, {"k": ["q"]}]}), bson!(true)),
        (
            bson!({"$sortArray": {"input": ["b", "A", "c"], "sortBy": 1}}),
            bson!(["A", "b", "c"]),
        ),
    ];
    for (e, want) in cases {
        assert_eq!(eval(e.clone()), Some(want), "{e}");
    }
    // Without a collation, the same expressions compare bytes.
    let plain = Vars::default();
    let e = Expr::parse(&bson!({"$eq": ["abc", "ABC"]})).unwrap();
    assert_eq!(e.eval(&doc! {}, &plain).unwrap(), Some(bson!(false)));
}

#[test]
fn update_operators_follow_the_collation() {
    let ci = || coll(doc! {"locale": "en", "strength": 2});
    let apply = |u: Bson, af: Option<Vec<Document>>, d: Document, c: Option<Arc<Collation>>| {
        let ctx = UpdateCtx {
            is_upsert_insert: false,
            now: DateTime::from_millis(0),
            positional: None,
        };
        Update::parse(&u, af.as_deref())
            .unwrap()
            .with_collation(c)
            .apply(&d, &ctx, &NoEnv)
            .unwrap()
            .doc
    };
    let d = doc! {"_id": 1, "tags": ["Red", "green"], "s": "m", "objs": [{"k": "A"}, {"k": "b"}]};
    // (update, array filters, expected document under strength 2, expected by bytes)
    let cases: Vec<(Bson, Option<Vec<Document>>, Document, Document)> = vec![
        (
            bson!({"$addToSet": {"tags": {"$each": ["RED", "Blue", "blue"]}}}),
            None,
            doc! {"tags": ["Red", "green", "Blue"]},
            doc! {"tags": ["Red", "green", "RED", "Blue", "blue"]},
        ),
        (
            bson!({"$pull": {"tags": "red"}}),
            None,
            doc! {"tags": ["green"]},
            doc! {"tags": ["Red", "green"]},
        ),
        (
            bson!({"$pull": {"tags": {"$in": ["GREEN"]}}}),
            None,
            doc! {"tags": ["Red"]},
            doc! {"tags": ["Red", "green"]},
        ),
        (
            bson!({"$pullAll": {"tags": ["RED"]}}),
            None,
            doc! {"tags": ["green"]},
            doc! {"tags": ["Red", "green"]},
        ),
        (
            bson!({"$pull": {"objs": {"k": "a"}}}),
            None,
            doc! {"objs": [{"k": "b"}]},
            doc! {"objs": [{"k": "A"}, {"k": "b"}]},
        ),
        // "M" is below "m" by bytes, equal at strength 2.
        (
            bson!({"$min": {"s": "M"}}),
            None,
            doc! {"s": "m"},
            doc! {"s": "M"},
        ),
        // "N" is above "m" under the collation, below it by bytes.
        (
            bson!({"$max": {"s": "N"}}),
            None,
            doc! {"s": "N"},
            doc! {"s": "m"},
        ),
        (
            bson!({"$push": {"tags": {"$each": ["blue"], "$sort": 1}}}),
            None,
            doc! {"tags": ["blue", "green", "Red"]},
            doc! {"tags": ["Red", "blue", "green"]},
        ),
        (
            bson!({"$set": {"objs.$[o].hit": true}}),
            Some(vec![doc! {"o.k": "a"}]),
            doc! {"objs": [{"k": "A", "hit": true}, {"k": "b"}]},
            doc! {"objs": [{"k": "A"}, {"k": "b"}]},
        ),
    ];
    for (u, af, want_ci, want_bytes) in cases {
        for (c, want) in [(ci(), want_ci), (None, want_bytes)] {
            let got = apply(u.clone(), af.clone(), d.clone(), c.clone());
            for (k, v) in &want {
                assert_eq!(got.get(k), Some(v), "{u} with {c:?}: {got}");
            }
        }
    }
}
