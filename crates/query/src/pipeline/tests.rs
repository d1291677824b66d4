use super::*;
use bson::{bson, doc};
use std::collections::HashMap;

struct TestEnv(HashMap<String, Vec<Document>>);

impl Env for TestEnv {
    fn collection_docs(&self, _db: &str, coll: &str) -> Result<Vec<Document>> {
        Ok(self.0.get(coll).cloned().unwrap_or_default())
    }
    fn now(&self) -> DateTime {
        DateTime::from_millis(1_000)
    }
    fn cluster_time(&self) -> Timestamp {
        Timestamp {
            time: 1,
            increment: 1,
        }
    }
}

fn env() -> SharedEnv {
    Arc::new(test_env())
}

fn test_env() -> TestEnv {
    let mut m = HashMap::new();
    m.insert(
        "inv".to_string(),
        vec![
            doc! {"_id": 1, "sku": "a", "qty": 10},
            doc! {"_id": 2, "sku": "b", "qty": 0},
            doc! {"_id": 3, "sku": null},
            doc! {"_id": 4},
        ],
    );
    m.insert("other".to_string(), vec![doc! {"_id": 100}]);
    TestEnv(m)
}

fn run(stages: Vec<Document>, input: Vec<Document>) -> Result<Vec<Document>> {
    Pipeline::parse(&stages, "db")?.run(input, &env())
}

fn ok(stages: Vec<Document>, input: Vec<Document>) -> Vec<Document> {
    run(stages.clone(), input).unwrap_or_else(|e| panic!("{stages:?}: {e}"))
}

fn code(stages: Vec<Document>) -> i32 {
    match Pipeline::parse(&stages, "db") {
        Err(e) => e.code,
        Ok(p) => p
            .run(vec![doc! {"a": 1}], &env())
            .map(|_| 0)
            .unwrap_or_else(|e| e.code),
    }
}

fn nums() -> Vec<Document> {
    (1..=5)
        .map(|i| doc! {"_id": i, "g": i % 2, "v": i * 10})
        .collect()
}

#[test]
fn parse_errors() {
    assert_eq!(code(vec![doc! {"$foo": 1}]), 40324);
    assert_eq!(code(vec![doc! {"$match": {}, "$sort": {"a": 1}}]), 40323);
    assert_eq!(code(vec![doc! {"$out": "x"}, doc! {"$match": {}}]), 40601);
    assert_eq!(code(vec![doc! {"$limit": 0}]), 15958);
    assert_eq!(code(vec![doc! {"$skip": -1}]), 15956);
    assert_eq!(code(vec![doc! {"$sort": {}}]), 15976);
    assert_eq!(code(vec![doc! {"$group": {"n": {"$sum": 1}}}]), 15955);
    assert_eq!(
        code(vec![doc! {"$group": {"_id": null, "n": {"$foo": 1}}}]),
        15952
    );
    assert_eq!(code(vec![doc! {"$group": {"_id": null, "n": 1}}]), 40234);
    assert_eq!(code(vec![doc! {"$unwind": "a"}]), 28818);
    assert_eq!(code(vec![doc! {"$count": "$x"}]), 40158);
    assert_eq!(code(vec![doc! {"$project": {}}]), 51272);
    assert_eq!(code(vec![doc! {"$project": {"a": 1, "b": 0}}]), 31254);
    assert_eq!(code(vec![doc! {"$match": {"$foo": 1}}]), 2);
    assert_eq!(
        code(vec![doc! {"$replaceRoot": {"newRoot": "$missing"}}]),
        40228
    );
    assert_eq!(
        code(vec![doc! {"$match": {}}, doc! {"$documents": []}]),
        40602
    );
    assert_eq!(
        code(vec![
            doc! {"$bucket": {"groupBy": "$a", "boundaries": [3, 1]}}
        ]),
        40194
    );
    assert_eq!(
        code(vec![
            doc! {"$bucket": {"groupBy": "$a", "boundaries": [0, 5]}}
        ]),
        0
    );
    assert_eq!(
        code(vec![
            doc! {"$bucket": {"groupBy": "$a", "boundaries": [5, 9]}}
        ]),
        40066
    );
    assert_eq!(code(vec![doc! {"$facet": {"x": [{"$out": "y"}]}}]), 40600);
}

#[test]
fn names_out_and_leading_match() {
    let p = Pipeline::parse(
        &[
            doc! {"$match": {"a": 1}},
            doc! {"$set": {"b": 1}},
            doc! {"$merge": {"into": "c", "on": "k"}},
        ],
        "db",
    )
    .unwrap();
    assert_eq!(p.stage_names(), vec!["$match", "$set", "$merge"]);
    assert!(p.leading_match().is_some());
    assert!(
        matches!(p.out_stage(), Some(OutStage::Merge { coll, on, when_not_matched, .. }) if coll == "c" && on == &vec!["k".to_string()] && when_not_matched == "insert")
    );
    let p = Pipeline::parse(&[doc! {"$out": {"db": "x", "coll": "y"}}], "db").unwrap();
    assert!(matches!(p.out_stage(), Some(OutStage::Out { db, coll }) if db == "x" && coll == "y"));
}

#[test]
fn per_document_stages() {
    let d = doc! {"_id": 1, "a": {"b": 1, "c": 2}, "arr": [{"x": 1}, 2], "s": "x"};
    let out = ok(
        vec![doc! {"$addFields": {"a.d": 3, "n": {"$add": ["$a.b", 1]}, "s": "$$REMOVE"}}],
        vec![d.clone()],
    );
    assert_eq!(
        out,
        vec![doc! {"_id": 1, "a": {"b": 1, "c": 2, "d": 3}, "arr": [{"x": 1}, 2], "n": 2}]
    );
    let out = ok(vec![doc! {"$set": {"arr.y": 5}}], vec![d.clone()]);
    assert_eq!(
        out[0].get("arr"),
        Some(&bson!([{"x": 1, "y": 5}, {"y": 5}]))
    );
    let out = ok(vec![doc! {"$set": {"a": {"z": 1}}}], vec![d.clone()]);
    assert_eq!(out[0].get("a"), Some(&bson!({"b": 1, "c": 2, "z": 1})));
    let out = ok(
        vec![doc! {"$project": {"a.b": 1, "t": {"$toUpper": "$s"}}}],
        vec![d.clone()],
    );
    assert_eq!(out, vec![doc! {"_id": 1, "a": {"b": 1}, "t": "X"}]);
    let out = ok(vec![doc! {"$unset": ["a.c", "arr", "s"]}], vec![d.clone()]);
    assert_eq!(out, vec![doc! {"_id": 1, "a": {"b": 1}}]);
    let out = ok(
        vec![doc! {"$replaceRoot": {"newRoot": "$a"}}],
        vec![d.clone()],
    );
    assert_eq!(out, vec![doc! {"b": 1, "c": 2}]);
    let out = ok(
        vec![doc! {"$replaceWith": {"$mergeObjects": ["$a", {"k": "$$NOW"}]}}],
        vec![d.clone()],
    );
    assert_eq!(
        out,
        vec![doc! {"b": 1, "c": 2, "k": DateTime::from_millis(1000)}]
    );
    let out = ok(
        vec![
            doc! {"$match": {"a.b": 1}},
            doc! {"$match": {"$expr": {"$eq": ["$s", "y"]}}},
        ],
        vec![d.clone()],
    );
    assert!(out.is_empty());
    let p = Pipeline::parse(
        &[doc! {"$match": {"a.b": 1}}, doc! {"$project": {"s": 1}}],
        "db",
    )
    .unwrap();
    assert!(p.is_per_document());
    assert_eq!(
        p.apply_one(d.clone(), &test_env()).unwrap(),
        Some(doc! {"_id": 1, "s": "x"})
    );
    let p = Pipeline::parse(&[doc! {"$match": {"a.b": 2}}], "db").unwrap();
    assert_eq!(p.apply_one(d, &test_env()).unwrap(), None);
    let p = Pipeline::parse(&[doc! {"$sort": {"a": 1}}], "db").unwrap();
    assert!(p.apply_one(doc! {}, &test_env()).is_err());
}

#[test]
fn redact() {
    let d = doc! {"_id": 1, "level": 1, "sub": {"level": 5, "x": 1}, "list": [{"level": 1, "y": 1}, {"level": 9}, 3]};
    let out = ok(
        vec![doc! {"$redact": {"$cond": [{"$gt": ["$level", 3]}, "$$PRUNE", "$$DESCEND"]}}],
        vec![d],
    );
    assert_eq!(
        out,
        vec![doc! {"_id": 1, "level": 1, "list": [{"level": 1, "y": 1}, 3]}]
    );
    assert_eq!(code(vec![doc! {"$redact": "x"}]), 17053);
}

#[test]
fn sort_limit_skip_count_sample() {
    let out = ok(
        vec![
            doc! {"$sort": {"v": -1}},
            doc! {"$skip": 1},
            doc! {"$limit": 2},
        ],
        nums(),
    );
    assert_eq!(
        out.iter()
            .map(|d| d.get_i32("_id").unwrap())
            .collect::<Vec<_>>(),
        vec![4, 3]
    );
    assert_eq!(ok(vec![doc! {"$count": "n"}], nums()), vec![doc! {"n": 5}]);
    assert!(ok(vec![doc! {"$count": "n"}], vec![]).is_empty());
    assert_eq!(ok(vec![doc! {"$sample": {"size": 3}}], nums()).len(), 3);
    assert_eq!(ok(vec![doc! {"$sample": {"size": 30}}], nums()).len(), 5);
}

#[test]
fn group() {
    let out = ok(
        vec![
            doc! {"$group": {"_id": "$g", "sum": {"$sum": "$v"}, "avg": {"$avg": "$v"}, "min": {"$min": "$v"}, "max": {"$max": "$v"}, "first": {"$first": "$v"}, "last": {"$last": "$v"}, "push": {"$push": "$v"}, "set": {"$addToSet": "$g"}, "n": {"$count": {}}, "sd": {"$stdDevPop": "$v"}, "ss": {"$stdDevSamp": "$missing"}}},
            doc! {"$sort": {"_id": 1}},
        ],
        nums(),
    );
    assert_eq!(
        out[0],
        doc! {"_id": 0, "sum": 60, "avg": 30.0, "min": 20, "max": 40, "first": 20, "last": 40, "push": [20, 40], "set": [0], "n": 2, "sd": 10.0, "ss": null}
    );
    assert_eq!(out[1].get("sum"), Some(&bson!(90)));
    let out = ok(
        vec![doc! {"$group": {"_id": null, "n": {"$sum": 1}}}],
        nums(),
    );
    assert_eq!(out, vec![doc! {"_id": null, "n": 5}]);
    let out = ok(
        vec![doc! {"$group": {"_id": "$k"}}],
        vec![
            doc! {"k": 1},
            doc! {"k": 1.0},
            doc! {"k": 1i64},
            doc! {},
            doc! {"k": null},
            doc! {"k": "1"},
        ],
    );
    assert_eq!(
        out,
        vec![doc! {"_id": 1}, doc! {"_id": null}, doc! {"_id": "1"}]
    );
    let out = ok(
        vec![
            doc! {"$group": {"_id": {"g": "$g", "x": "$x"}, "m": {"$mergeObjects": {"v": "$v"}}}},
            doc! {"$sort": {"_id.g": 1}},
        ],
        nums(),
    );
    assert_eq!(out[0], doc! {"_id": {"g": 0}, "m": {"v": 40}});
    let out = ok(
        vec![
            doc! {"$group": {"_id": null, "f": {"$first": "$missing"}, "s": {"$sum": "$missing"}, "a": {"$avg": "$missing"}, "mx": {"$max": "$missing"}}},
        ],
        nums(),
    );
    assert_eq!(
        out,
        vec![doc! {"_id": null, "f": null, "s": 0, "a": null, "mx": null}]
    );
}

#[test]
fn unwind() {
    let input = vec![
        doc! {"_id": 1, "a": [1, 2]},
        doc! {"_id": 2, "a": []},
        doc! {"_id": 3, "a": null},
        doc! {"_id": 4},
        doc! {"_id": 5, "a": 7},
        doc! {"_id": 6, "b": {"c": [8]}},
    ];
    let out = ok(vec![doc! {"$unwind": "$a"}], input.clone());
    assert_eq!(
        out,
        vec![
            doc! {"_id": 1, "a": 1},
            doc! {"_id": 1, "a": 2},
            doc! {"_id": 5, "a": 7}
        ]
    );
    let out = ok(
        vec![
            doc! {"$unwind": {"path": "$a", "includeArrayIndex": "i", "preserveNullAndEmptyArrays": true}},
        ],
        input.clone(),
    );
    assert_eq!(
        out,
        vec![
            doc! {"_id": 1, "a": 1, "i": 0i64},
            doc! {"_id": 1, "a": 2, "i": 1i64},
            doc! {"_id": 2, "a": [], "i": null},
            doc! {"_id": 3, "a": null, "i": null},
            doc! {"_id": 4, "i": null},
            doc! {"_id": 5, "a": 7, "i": null},
            doc! {"_id": 6, "b": {"c": [8]}, "i": null},
        ]
    );
    let out = ok(vec![doc! {"$unwind": "$b.c"}], input);
    assert_eq!(out, vec![doc! {"_id": 6, "b": {"c": 8}}]);
}

#[test]
fn lookup() {
    let orders = vec![
        doc! {"_id": 1, "item": "a"},
        doc! {"_id": 2, "item": ["a", "b"]},
        doc! {"_id": 3},
    ];
    let out = ok(
        vec![
            doc! {"$lookup": {"from": "inv", "localField": "item", "foreignField": "sku", "as": "inv"}},
        ],
        orders.clone(),
    );
    let ids = |d: &Document| -> Vec<i32> {
        d.get_array("inv")
            .unwrap()
            .iter()
            .map(|x| x.as_document().unwrap().get_i32("_id").unwrap())
            .collect()
    };
    assert_eq!(ids(&out[0]), vec![1]);
    assert_eq!(ids(&out[1]), vec![1, 2]);
    assert_eq!(ids(&out[2]), vec![3, 4]);
    let out = ok(
        vec![
            doc! {"$lookup": {"from": "inv", "let": {"it": "$item"}, "pipeline": [{"$match": {"$expr": {"$eq": ["$sku", "$$it"]}}}, {"$project": {"_id": 1}}], "as": "inv"}},
        ],
        orders.clone(),
    );
    assert_eq!(out[0].get("inv"), Some(&bson!([{"_id": 1}])));
    let out = ok(
        vec![
            doc! {"$lookup": {"from": "inv", "localField": "item", "foreignField": "sku", "pipeline": [{"$match": {"qty": {"$gt": 5}}}], "as": "x.y"}},
        ],
        orders,
    );
    assert_eq!(
        out[1]
            .get_document("x")
            .unwrap()
            .get_array("y")
            .unwrap()
            .len(),
        1
    );
    let out = ok(
        vec![doc! {"$lookup": {"pipeline": [{"$documents": [{"z": 1}]}], "as": "d"}}],
        vec![doc! {}],
    );
    assert_eq!(out, vec![doc! {"d": [{"z": 1}]}]);
    assert_eq!(code(vec![doc! {"$lookup": {"from": "inv", "as": "x"}}]), 9);
}

#[test]
fn facet_bucket_sort_by_count() {
    let out = ok(
        vec![
            doc! {"$facet": {"n": [{"$count": "c"}], "top": [{"$sort": {"v": -1}}, {"$limit": 1}, {"$project": {"_id": 1}}]}},
        ],
        nums(),
    );
    assert_eq!(out, vec![doc! {"n": [{"c": 5}], "top": [{"_id": 5}]}]);
    let out = ok(
        vec![
            doc! {"$bucket": {"groupBy": "$v", "boundaries": [0, 25, 100], "default": "other", "output": {"c": {"$sum": 1}, "ids": {"$push": "$_id"}}}},
        ],
        {
            let mut v = nums();
            v.push(doc! {"_id": 9, "v": "x"});
            v
        },
    );
    assert_eq!(
        out,
        vec![
            doc! {"_id": 0, "c": 2, "ids": [1, 2]},
            doc! {"_id": 25, "c": 3, "ids": [3, 4, 5]},
            doc! {"_id": "other", "c": 1, "ids": [9]}
        ]
    );
    let out = ok(
        vec![doc! {"$bucketAuto": {"groupBy": "$v", "buckets": 2}}],
        nums(),
    );
    assert_eq!(
        out,
        vec![
            doc! {"_id": {"min": 10, "max": 40}, "count": 3},
            doc! {"_id": {"min": 40, "max": 50}, "count": 2}
        ]
    );
    let out = ok(vec![doc! {"$sortByCount": "$g"}], nums());
    assert_eq!(
        out,
        vec![doc! {"_id": 1, "count": 3}, doc! {"_id": 0, "count": 2}]
    );
}

#[test]
fn documents_and_union() {
    let out = ok(
        vec![
            doc! {"$documents": [{"a": 1}, {"a": 2}]},
            doc! {"$match": {"a": 2}},
        ],
        vec![],
    );
    assert_eq!(out, vec![doc! {"a": 2}]);
    let out = ok(vec![doc! {"$unionWith": "other"}], vec![doc! {"_id": 1}]);
    assert_eq!(out, vec![doc! {"_id": 1}, doc! {"_id": 100}]);
    let out = ok(
        vec![
            doc! {"$unionWith": {"coll": "inv", "pipeline": [{"$match": {"qty": 10}}, {"$project": {"sku": 1, "_id": 0}}]}},
        ],
        vec![],
    );
    assert_eq!(out, vec![doc! {"sku": "a"}]);
}

/// An environment with tight memory limits, spilling under a temporary directory.
struct Tight {
    allow: bool,
    dir: std::path::PathBuf,
}

impl Env for Tight {
    fn collection_docs(&self, _db: &str, _coll: &str) -> Result<Vec<Document>> {
        Ok(Vec::new())
    }
    fn now(&self) -> DateTime {
        DateTime::from_millis(1_000)
    }
    fn cluster_time(&self) -> Timestamp {
        Timestamp {
            time: 1,
            increment: 1,
        }
    }
    fn limits(&self) -> crate::spill::Limits {
        crate::spill::Limits {
            sort_bytes: 64 * 1024,
            group_bytes: 16 * 1024,
            allow_disk_use: self.allow,
            spill_dir: Some(self.dir.clone()),
            ..crate::spill::Limits::default()
        }
    }
}

fn tight(allow: bool) -> SharedEnv {
    let dir = std::env::temp_dir().join(format!("eddy-spill-test-{}", std::process::id()));
    Arc::new(Tight { allow, dir })
}

fn input(n: i64) -> Vec<Document> {
    // A scrambled order with many ties (k), and a sequence number to check stability.
    (0..n)
        .map(|i| doc! {"_id": i, "k": (i * 7919) % 97, "g": i % 37, "pad": "x".repeat(40), "o": {"a": i}})
        .collect()
}

#[test]
fn sorts_past_the_memory_limit_spill_and_merge_stably() {
    let stages = vec![doc! {"$sort": {"k": 1}}];
    let before = crate::spill::SPILLED_RUNS.load(std::sync::atomic::Ordering::Relaxed);
    let p = Pipeline::parse(&stages, "db").unwrap();
    let out = p.run(input(3000), &tight(true)).unwrap();
    let expect = p.run(input(3000), &env()).unwrap();
    assert_eq!(out, expect);
    assert!(out.windows(2).all(|w| {
        let (a, b) = (&w[0], &w[1]);
        let (ka, kb) = (a.get_i64("k").unwrap(), b.get_i64("k").unwrap());
        ka < kb || (ka == kb && a.get_i64("_id").unwrap() < b.get_i64("_id").unwrap())
    }));
    assert!(crate::spill::SPILLED_RUNS.load(std::sync::atomic::Ordering::Relaxed) > before);
    // Top-k keeps only k documents, so it never needs the disk.
    let p = Pipeline::parse(&[doc! {"$sort": {"k": -1}}, doc! {"$limit": 5}], "db").unwrap();
    let out = p.run(input(3000), &tight(false)).unwrap();
    assert_eq!(out.len(), 5);
    assert!(out.iter().all(|d| d.get_i64("k").unwrap() == 96));
}

#[test]
fn sorts_past_the_memory_limit_fail_without_allow_disk_use() {
    let p = Pipeline::parse(&[doc! {"$sort": {"k": 1}}], "db").unwrap();
    let e = p.run(input(3000), &tight(false)).unwrap_err();
    assert_eq!(e.code, 292);
    assert!(
        e.message
            .contains("Sort exceeded memory limit of 65536 bytes")
    );
    let p = Pipeline::parse(&[doc! {"$group": {"_id": "$_id"}}], "db").unwrap();
    let e = p.run(input(3000), &tight(false)).unwrap_err();
    assert_eq!(e.code, 292);
    assert!(e.message.contains("$group"));
}

#[test]
fn groups_past_the_memory_limit_merge_partial_states() {
    let stages = vec![
        doc! {"$group": {
            "_id": "$g",
            "sum": {"$sum": "$k"}, "avg": {"$avg": "$k"}, "n": {"$count": {}},
            "first": {"$first": "$_id"}, "last": {"$last": "$_id"},
            "min": {"$min": "$k"}, "max": {"$max": "$k"},
            "push": {"$push": "$_id"}, "set": {"$addToSet": "$k"},
            "sd": {"$stdDevPop": "$k"}, "sds": {"$stdDevSamp": "$k"},
            "merged": {"$mergeObjects": "$o"},
        }},
        doc! {"$sort": {"_id": 1}},
    ];
    let p = Pipeline::parse(&stages, "db").unwrap();
    let out = p.run(input(3000), &tight(true)).unwrap();
    let expect = p.run(input(3000), &env()).unwrap();
    assert_eq!(out.len(), 37);
    for (a, b) in out.iter().zip(&expect) {
        let mut a = a.clone();
        let mut b = b.clone();
        for f in ["sd", "sds"] {
            let (x, y) = (a.get_f64(f).unwrap(), b.get_f64(f).unwrap());
            assert!((x - y).abs() < 1e-9, "{f}: {x} vs {y}");
            a.remove(f);
            b.remove(f);
        }
        // $addToSet's order is unspecified.
        for d in [&mut a, &mut b] {
            let mut set = d.get_array("set").unwrap().clone();
            set.sort_by(doc::compare::cmp_values);
            d.insert("set", set);
        }
        assert_eq!(a, b);
    }
}

#[test]
fn bucket_auto_sorts_through_the_external_sorter() {
    let stages = vec![
        doc! {"$bucketAuto": {"groupBy": "$k", "buckets": 7, "output": {"n": {"$sum": 1}, "first": {"$first": "$_id"}}}},
    ];
    let p = Pipeline::parse(&stages, "db").unwrap();
    let expect = p.run(input(3000), &env()).unwrap();
    assert_eq!(p.run(input(3000), &tight(true)).unwrap(), expect);
    assert_eq!(expect.len(), 7);
    let total: i32 = expect.iter().map(|d| d.get_i32("n").unwrap()).sum();
    assert_eq!(total, 3000);
    assert_eq!(p.run(input(3000), &tight(false)).unwrap_err().code, 292);
}
