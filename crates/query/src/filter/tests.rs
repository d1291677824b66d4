use super::*;
use bson::{Binary, Regex, bson, doc, spec::BinarySubtype};

fn m(filter: Document, d: Document) -> bool {
    Filter::parse(&filter)
        .unwrap_or_else(|e| panic!("{filter}: {e}"))
        .matches(&d)
}

/// (filter, document, expected)
fn table(cases: &[(Document, Document, bool)]) {
    for (f, d, want) in cases {
        assert_eq!(m(f.clone(), d.clone()), *want, "filter {f} on {d}");
    }
}

#[test]
fn equality_and_arrays() {
    table(&[
        (doc! {"a": 1}, doc! {"a": 1}, true),
        (doc! {"a": 1}, doc! {"a": 1.0}, true),
        (doc! {"a": 1}, doc! {"a": 1i64}, true),
        (doc! {"a": 1}, doc! {"a": "1"}, false),
        (doc! {"a": 1}, doc! {"a": [2, 1]}, true),
        (doc! {"a": [2, 1]}, doc! {"a": [2, 1]}, true),
        (doc! {"a": [2, 1]}, doc! {"a": [1, 2]}, false),
        (doc! {"a": [1]}, doc! {"a": [[1], 2]}, true),
        (doc! {"a": 1}, doc! {"a": [[1]]}, false),
        (doc! {"a": {"b": 1}}, doc! {"a": {"b": 1}}, true),
        (doc! {"a": {"b": 1}}, doc! {"a": {"b": 1, "c": 1}}, false),
        (doc! {"a.b": 1}, doc! {"a": [{"b": 2}, {"b": 1}]}, true),
        (doc! {"a.b": 1}, doc! {"a": [{"b": [0, 1]}]}, true),
        (doc! {"a.1": 5}, doc! {"a": [4, 5]}, true),
        (doc! {"a.1": 5}, doc! {"a": [{"1": 5}]}, true),
        (doc! {"a.b.c": 1}, doc! {"a": [{"b": [{"c": 1}]}]}, true),
        (doc! {"a": -0.0}, doc! {"a": 0}, true),
        (doc! {"a": f64::NAN}, doc! {"a": f64::NAN}, true),
        (doc! {}, doc! {"a": 1}, true),
    ]);
}

#[test]
fn null_and_missing() {
    table(&[
        (doc! {"a": null}, doc! {}, true),
        (doc! {"a": null}, doc! {"a": null}, true),
        (doc! {"a": null}, doc! {"a": 0}, false),
        (doc! {"a": null}, doc! {"a": [1, null]}, true),
        (doc! {"a": null}, doc! {"a": []}, false),
        (doc! {"a.b": null}, doc! {"a": 5}, true),
        (doc! {"a.b": null}, doc! {"a": [{"b": 1}, {"c": 1}]}, true),
        (doc! {"a.b": null}, doc! {"a": [{"b": 1}]}, false),
        (doc! {"a": {"$ne": null}}, doc! {}, false),
        (doc! {"a": {"$ne": null}}, doc! {"a": 1}, true),
        (doc! {"a": {"$gte": null}}, doc! {}, true),
        (doc! {"a": {"$gt": null}}, doc! {}, false),
        (doc! {"a": {"$in": [null]}}, doc! {}, true),
        (doc! {"a": {"$nin": [null]}}, doc! {}, false),
        (doc! {"a": {"$exists": true}}, doc! {"a": null}, true),
        (doc! {"a": {"$exists": false}}, doc! {"b": 1}, true),
        (doc! {"a": {"$exists": 0}}, doc! {"a": 1}, false),
        (
            doc! {"a.b": {"$exists": true}},
            doc! {"a": [1, {"b": 2}]},
            true,
        ),
        (doc! {"a.b": {"$exists": true}}, doc! {"a": [1, 2]}, false),
        (doc! {"a": {"$type": "null"}}, doc! {}, false),
    ]);
}

#[test]
fn comparisons_and_type_bracketing() {
    table(&[
        (doc! {"a": {"$gt": 5}}, doc! {"a": 6}, true),
        (doc! {"a": {"$gt": 5}}, doc! {"a": "6"}, false),
        (doc! {"a": {"$gt": 5}}, doc! {"a": [1, 7]}, true),
        (doc! {"a": {"$gt": 5, "$lt": 7}}, doc! {"a": [1, 8]}, true),
        (
            doc! {"a": {"$elemMatch": {"$gt": 5, "$lt": 7}}},
            doc! {"a": [1, 8]},
            false,
        ),
        (
            doc! {"a": {"$elemMatch": {"$gt": 5, "$lt": 7}}},
            doc! {"a": [1, 6]},
            true,
        ),
        (doc! {"a": {"$gte": 5.5}}, doc! {"a": 5i64}, false),
        (doc! {"a": {"$lt": "b"}}, doc! {"a": "a"}, true),
        (doc! {"a": {"$lt": "b"}}, doc! {"a": 1}, false),
        (doc! {"a": {"$lte": 5}}, doc! {"a": f64::NAN}, false),
        (doc! {"a": {"$gte": f64::NAN}}, doc! {"a": f64::NAN}, true),
        (doc! {"a": {"$gt": f64::NAN}}, doc! {"a": 5}, false),
        (doc! {"a": {"$gt": Bson::MinKey}}, doc! {"a": "x"}, true),
        (
            doc! {"a": {"$lt": Bson::MaxKey}},
            doc! {"a": {"x": 1}},
            true,
        ),
        (doc! {"a": {"$gt": [1]}}, doc! {"a": [2]}, true),
        (doc! {"a": {"$eq": [1]}}, doc! {"a": [[1]]}, true),
        (doc! {"a": {"$ne": 1}}, doc! {"a": [1, 2]}, false),
        (doc! {"a": {"$ne": 1}}, doc! {"a": [2]}, true),
        (
            doc! {"a": {"$gt": bson::DateTime::from_millis(0)}},
            doc! {"a": bson::DateTime::from_millis(5)},
            true,
        ),
        (
            doc! {"a": {"$gt": bson::DateTime::from_millis(0)}},
            doc! {"a": 5},
            false,
        ),
    ]);
}

#[test]
fn logical() {
    table(&[
        (doc! {"$or": [{"a": 1}, {"b": 1}]}, doc! {"b": 1}, true),
        (doc! {"$or": [{"a": 1}, {"b": 1}]}, doc! {"c": 1}, false),
        (
            doc! {"$and": [{"a": 1}, {"b": 1}]},
            doc! {"a": 1, "b": 1},
            true,
        ),
        (doc! {"$nor": [{"a": 1}, {"b": 1}]}, doc! {"c": 1}, true),
        (doc! {"$nor": [{"a": 1}]}, doc! {"a": [1]}, false),
        (doc! {"a": {"$not": {"$gt": 5}}}, doc! {"a": 3}, true),
        (doc! {"a": {"$not": {"$gt": 5}}}, doc! {}, true),
        (doc! {"a": {"$not": {"$gt": 5}}}, doc! {"a": [3, 6]}, false),
        (
            doc! {"a": {"$not": Regex { pattern: "^x".into(), options: String::new() }}},
            doc! {"a": "y"},
            true,
        ),
        (doc! {"$alwaysFalse": 1}, doc! {}, false),
        (doc! {"a": 1, "$comment": "hi"}, doc! {"a": 1}, true),
    ]);
}

#[test]
fn in_all_size_mod() {
    table(&[
        (doc! {"a": {"$in": [1, 2]}}, doc! {"a": 2}, true),
        (doc! {"a": {"$in": [1, 2]}}, doc! {"a": [3, 2]}, true),
        (doc! {"a": {"$in": []}}, doc! {"a": 1}, false),
        (doc! {"a": {"$nin": [1, 2]}}, doc! {"a": 3}, true),
        (doc! {"a": {"$nin": [1, 2]}}, doc! {}, true),
        (
            doc! {"a": {"$in": [Regex { pattern: "^a".into(), options: "i".into() }]}},
            doc! {"a": "ABC"},
            true,
        ),
        (doc! {"a": {"$in": [[1, 2]]}}, doc! {"a": [1, 2]}, true),
        (doc! {"a": {"$all": [1, 2]}}, doc! {"a": [2, 3, 1]}, true),
        (doc! {"a": {"$all": [1, 2]}}, doc! {"a": [2, 3]}, false),
        (doc! {"a": {"$all": []}}, doc! {"a": [1]}, false),
        (doc! {"a": {"$all": [1]}}, doc! {"a": 1}, true),
        (doc! {"a": {"$all": [[1, 2]]}}, doc! {"a": [1, 2]}, true),
        (
            doc! {"a": {"$all": [{"$elemMatch": {"b": 1}}, {"$elemMatch": {"c": 1}}]}},
            doc! {"a": [{"b": 1}, {"c": 1}]},
            true,
        ),
        (doc! {"a": {"$size": 2}}, doc! {"a": [1, [2, 3]]}, true),
        (doc! {"a": {"$size": 0}}, doc! {"a": []}, true),
        (doc! {"a": {"$size": 1}}, doc! {"a": [[1, 2]]}, true),
        (doc! {"a": {"$size": 1}}, doc! {"a": 1}, false),
        (doc! {"a": {"$mod": [4, 1]}}, doc! {"a": 5}, true),
        (doc! {"a": {"$mod": [4, 1]}}, doc! {"a": 5.9}, true),
        (doc! {"a": {"$mod": [4, -1]}}, doc! {"a": -5}, true),
        (doc! {"a": {"$mod": [4, 1]}}, doc! {"a": f64::NAN}, false),
        (doc! {"a": {"$mod": [-1, 0]}}, doc! {"a": i64::MIN}, true),
    ]);
}

#[test]
fn regex_type_bits() {
    let bin = |b: Vec<u8>| {
        Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes: b,
        })
    };
    table(&[
        (doc! {"a": {"$regex": "^ab"}}, doc! {"a": "abc"}, true),
        (
            doc! {"a": {"$regex": "^AB", "$options": "i"}},
            doc! {"a": "abc"},
            true,
        ),
        (
            doc! {"a": {"$regex": "^b", "$options": "m"}},
            doc! {"a": "a\nb"},
            true,
        ),
        (
            doc! {"a": {"$regex": "a.b", "$options": "s"}},
            doc! {"a": "a\nb"},
            true,
        ),
        (
            doc! {"a": {"$regex": "a b # c", "$options": "x"}},
            doc! {"a": "ab"},
            true,
        ),
        (doc! {"a": {"$regex": "(?<=x)y"}}, doc! {"a": "xy"}, true),
        (doc! {"a": {"$regex": "(a)\\1"}}, doc! {"a": "aa"}, true),
        (
            doc! {"a": Regex { pattern: "b".into(), options: String::new() }},
            doc! {"a": ["a", "b"]},
            true,
        ),
        (
            doc! {"a": Regex { pattern: "1".into(), options: String::new() }},
            doc! {"a": 1},
            false,
        ),
        (
            doc! {"a": {"$eq": Regex { pattern: "b".into(), options: String::new() }}},
            doc! {"a": "b"},
            false,
        ),
        (doc! {"a": {"$type": "string"}}, doc! {"a": "x"}, true),
        (doc! {"a": {"$type": 2}}, doc! {"a": "x"}, true),
        (doc! {"a": {"$type": "number"}}, doc! {"a": 1.5}, true),
        (
            doc! {"a": {"$type": ["int", "long"]}},
            doc! {"a": 1i64},
            true,
        ),
        (doc! {"a": {"$type": "array"}}, doc! {"a": []}, true),
        (doc! {"a": {"$type": "array"}}, doc! {"a": 1}, false),
        (doc! {"a": {"$type": "int"}}, doc! {"a": [1.5, 2]}, true),
        (
            doc! {"a": {"$type": "minKey"}},
            doc! {"a": Bson::MinKey},
            true,
        ),
        (doc! {"a": {"$bitsAllSet": 5}}, doc! {"a": 7}, true),
        (doc! {"a": {"$bitsAllSet": [0, 2]}}, doc! {"a": 6}, false),
        (doc! {"a": {"$bitsAnySet": [1]}}, doc! {"a": 6}, true),
        (doc! {"a": {"$bitsAllClear": 9}}, doc! {"a": 6}, true),
        (doc! {"a": {"$bitsAnyClear": [1, 2]}}, doc! {"a": 6}, false),
        (doc! {"a": {"$bitsAllSet": [63, 100]}}, doc! {"a": -1}, true),
        (doc! {"a": {"$bitsAllSet": 1}}, doc! {"a": 1.5}, false),
        (
            doc! {"a": {"$bitsAllSet": [8]}},
            doc! {"a": bin(vec![0, 1])},
            true,
        ),
        (
            doc! {"a": {"$bitsAnySet": bin(vec![2])}},
            doc! {"a": 2},
            true,
        ),
    ]);
}

#[test]
fn elem_match() {
    table(&[
        (
            doc! {"a": {"$elemMatch": {"b": 1, "c": 2}}},
            doc! {"a": [{"b": 1}, {"c": 2}]},
            false,
        ),
        (
            doc! {"a": {"$elemMatch": {"b": 1, "c": 2}}},
            doc! {"a": [{"b": 1, "c": 2}]},
            true,
        ),
        (
            doc! {"a.b": 1, "a.c": 2},
            doc! {"a": [{"b": 1}, {"c": 2}]},
            true,
        ),
        (
            doc! {"a": {"$elemMatch": {"b": 1}}},
            doc! {"a": {"b": 1}},
            false,
        ),
        (
            doc! {"a": {"$elemMatch": {"$in": [3]}}},
            doc! {"a": [1, 3]},
            true,
        ),
        (
            doc! {"a": {"$elemMatch": {"$not": {"$gt": 2}}}},
            doc! {"a": [3, 1]},
            true,
        ),
        (
            doc! {"a": {"$elemMatch": {"$or": [{"b": 1}, {"c": 1}]}}},
            doc! {"a": [{"c": 1}]},
            true,
        ),
        (
            doc! {"a": {"$elemMatch": {"0": 1}}},
            doc! {"a": [[1, 2]]},
            true,
        ),
    ]);
}

#[test]
fn expr_and_schema() {
    table(&[
        (
            doc! {"$expr": {"$gt": ["$a", "$b"]}},
            doc! {"a": 2, "b": 1},
            true,
        ),
        (
            doc! {"$expr": {"$gt": ["$a", "$b"]}},
            doc! {"a": 1, "b": 1},
            false,
        ),
        (doc! {"$expr": "$a"}, doc! {"a": 0}, false),
        (
            doc! {"$jsonSchema": {"required": ["a"]}},
            doc! {"a": 1},
            true,
        ),
        (
            doc! {"$jsonSchema": {"required": ["a"]}},
            doc! {"b": 1},
            false,
        ),
        (
            doc! {"$jsonSchema": {"properties": {"a": {"bsonType": "int", "minimum": 2}}}},
            doc! {"a": 1},
            false,
        ),
        (
            doc! {"$jsonSchema": {"properties": {"a": {"bsonType": "int", "minimum": 2}}}},
            doc! {"a": 3},
            true,
        ),
        (
            doc! {"$jsonSchema": {"properties": {"a": {"bsonType": "int"}}}},
            doc! {},
            true,
        ),
        (
            doc! {"$jsonSchema": {"properties": {"a": {"type": "string", "maxLength": 2}}}},
            doc! {"a": "abc"},
            false,
        ),
        (
            doc! {"$jsonSchema": {"properties": {"a": {"enum": [1, "x"]}}}},
            doc! {"a": "x"},
            true,
        ),
        (
            doc! {"$jsonSchema": {"properties": {"a": {"items": {"bsonType": "int"}}}}},
            doc! {"a": [1, "x"]},
            false,
        ),
        (
            doc! {"$jsonSchema": {"properties": {"_id": {}}, "additionalProperties": false}},
            doc! {"_id": 1, "b": 1},
            false,
        ),
        (
            doc! {"$jsonSchema": {"properties": {"a": {"maximum": 5, "exclusiveMaximum": true}}}},
            doc! {"a": 5},
            false,
        ),
        (
            doc! {"$jsonSchema": {"bsonType": "object", "properties": {"a": {"bsonType": ["string", "null"]}}}},
            doc! {"a": null},
            true,
        ),
    ]);
    let f = Filter::parse(&doc! {"$expr": {"$divide": [1, 0]}}).unwrap();
    assert!(f.try_matches(&doc! {}).is_err());
    assert!(!f.matches(&doc! {}));
}

#[test]
fn parse_errors() {
    let cases: Vec<(Document, &str)> = vec![
        (doc! {"$foo": 1}, "unknown top level operator: $foo"),
        (doc! {"a": {"$foo": 1}}, "unknown operator: $foo"),
        (doc! {"a": {"$in": 1}}, "$in needs an array"),
        (doc! {"a": {"$nin": 1}}, "$nin needs an array"),
        (doc! {"$and": []}, "$and/$or/$nor must be a nonempty array"),
        (
            doc! {"$or": [1]},
            "$or/$and/$nor entries need to be full objects",
        ),
        (doc! {"a": {"$size": -1}}, "Failed to parse $size"),
        (doc! {"a": {"$mod": [0, 1]}}, "divisor cannot be 0"),
        (
            doc! {"a": {"$mod": [1]}},
            "malformed mod, not enough elements",
        ),
        (doc! {"a": {"$not": {}}}, "$not cannot be empty"),
        (doc! {"a": {"$not": 1}}, "$not needs a regex or a document"),
        (doc! {"a": {"$type": "foo"}}, "Unknown type name alias: foo"),
        (doc! {"a": {"$elemMatch": 1}}, "$elemMatch needs an Object"),
        (doc! {"a": {"$options": "i"}}, "$options needs a $regex"),
        (
            doc! {"a": {"$regex": "(", "$options": ""}},
            "Regular expression is invalid",
        ),
        (
            doc! {"a": {"$regex": "a", "$options": "z"}},
            "invalid flag in regex options",
        ),
        (
            doc! {"a": {"$all": [{"$elemMatch": {"b": 1}}, 1]}},
            "$all/$elemMatch has to be consistent",
        ),
        (doc! {"$where": "true"}, "$where"),
        (doc! {"a": {"$bitsAllSet": -1}}, "negative"),
        (doc! {"a": {"$gt": 1, "b": 1}}, "unknown operator: b"),
    ];
    for (f, msg) in cases {
        let e = Filter::parse(&f).unwrap_err();
        assert!(e.message.contains(msg), "{f}: {e}");
    }
    assert_eq!(Filter::parse(&doc! {"a": {"$foo": 1}}).unwrap_err().code, 2);
}

#[test]
fn positions() {
    let f = Filter::parse(&doc! {"a.b": {"$gt": 1}}).unwrap();
    assert_eq!(f.match_position(&doc! {"a": [{"b": 0}, {"b": 5}]}), Some(1));
    let f = Filter::parse(&doc! {"a": 3}).unwrap();
    assert_eq!(f.match_position(&doc! {"a": [1, 2, 3]}), Some(2));
    assert_eq!(f.match_position(&doc! {"a": 3}), None);
    let f = Filter::parse(&doc! {"x": 1, "a": {"$elemMatch": {"b": 2}}}).unwrap();
    assert_eq!(
        f.match_position(&doc! {"x": 1, "a": [{"b": 1}, {"b": 2}]}),
        Some(1)
    );
    let f = Filter::parse(&doc! {"a": {"$elemMatch": {"$gte": 2}}}).unwrap();
    assert_eq!(f.match_position(&doc! {"a": [1, 2, 3]}), Some(1));
    let f = Filter::parse(&doc! {"a": {"$ne": 1}}).unwrap();
    assert_eq!(f.match_position(&doc! {"a": [2, 3]}), None);
}

#[test]
fn planning_and_upsert_fields() {
    let f = Filter::parse(&doc! {"a": 1, "b.c": 2, "$and": [{"d": 3}], "e": {"$gt": 1, "$lte": 5}, "f": {"$in": [1, 2]}, "g": /*regex*/ Regex { pattern: "x".into(), options: String::new() }}).unwrap();
    let eq = f.equality_fields();
    let names: Vec<&str> = eq.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, vec!["a", "b.c", "d"]);
    let preds = f.predicates();
    assert!(matches!(&preds[0], (p, Predicate::Eq(Bson::Int32(1))) if p == "a"));
    assert!(preds.iter().any(|(p, pr)| p == "e"
        && matches!(
            pr,
            Predicate::Range {
                lower: Some((Bson::Int32(1), false)),
                upper: Some((Bson::Int32(5), true))
            }
        )));
    assert!(
        preds
            .iter()
            .any(|(p, pr)| p == "f" && matches!(pr, Predicate::In(v) if v.len() == 2))
    );
    assert!(!preds.iter().any(|(p, _)| p == "g"));
    let f = Filter::parse(&doc! {"a": {"$eq": 1}, "b": {"$in": [5]}, "$or": [{"c": 1}]}).unwrap();
    assert_eq!(
        f.equality_fields(),
        vec![
            ("a".to_string(), bson!(1)),
            ("b".to_string(), bson!(5)),
            ("c".to_string(), bson!(1))
        ]
    );
}

#[test]
fn bound_variables_reach_expr() {
    let f = Filter::parse(&doc! {"$expr": {"$eq": ["$_id", "$$id"]}}).unwrap();
    // Unbound, the variable is undefined: no match, and try_matches reports why.
    assert!(!f.matches(&doc! {"_id": 1}));
    assert_eq!(f.try_matches(&doc! {"_id": 1}).unwrap_err().code, 17276);
    let mut vars = Vars::default();
    vars.set("id", Bson::Int32(1));
    let f = f.bind(&vars);
    assert!(f.matches(&doc! {"_id": 1}));
    assert!(!f.matches(&doc! {"_id": 2}));
    assert!(f.try_matches(&doc! {"_id": 1}).unwrap());
    // Explicit variables win over bound ones.
    let other = Vars::default().with("id", Bson::Int32(2));
    assert!(f.try_matches_with(&doc! {"_id": 2}, Some(&other)).unwrap());
}
