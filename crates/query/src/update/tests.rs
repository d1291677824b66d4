//! Table-driven tests: each operator, the delta rules of the change-events reference, the
//! pipeline diff heuristic, and parse/apply errors.

use bson::{Bson, Document, Timestamp, bson, doc};

use super::*;

struct TestEnv;

impl Env for TestEnv {
    fn collection_docs(&self, _db: &str, _coll: &str) -> Result<Vec<Document>> {
        Ok(Vec::new())
    }

    fn now(&self) -> bson::DateTime {
        bson::DateTime::from_millis(1_000)
    }

    fn cluster_time(&self) -> Timestamp {
        Timestamp {
            time: 100,
            increment: 7,
        }
    }
}

fn ctx() -> UpdateCtx {
    UpdateCtx {
        is_upsert_insert: false,
        now: bson::DateTime::from_millis(1_000),
        positional: None,
    }
}

fn apply_full(
    pre: &Document,
    update: Bson,
    afs: Option<&[Document]>,
    c: &UpdateCtx,
) -> Result<UpdateResult> {
    Update::parse(&update, afs)?.apply(pre, c, &TestEnv)
}

fn apply(pre: &Document, update: Bson) -> Result<UpdateResult> {
    apply_full(pre, update, None, &ctx())
}

fn err_of(pre: &Document, update: Bson) -> MongoError {
    match apply(pre, update.clone()) {
        Ok(r) => panic!("expected an error for {update}, got {:?}", r.doc),
        Err(e) => e,
    }
}

/// (pre-image, update, expected post-image, expected updatedFields, expected removedFields)
type Case = (Document, Bson, Document, Document, Vec<&'static str>);

fn check(cases: Vec<Case>) {
    for (pre, update, post, uf, rf) in cases {
        let r = apply(&pre, update.clone()).unwrap_or_else(|e| panic!("{update}: {e}"));
        assert!(
            delta::identical_docs(&r.doc, &post),
            "post-image of {update} on {pre}: {}",
            r.doc
        );
        let delta = r.delta.expect("operator updates have a delta");
        assert_eq!(
            delta.updated_fields, uf,
            "updatedFields of {update} on {pre}"
        );
        let rf: Vec<String> = rf.into_iter().map(String::from).collect();
        assert_eq!(
            delta.removed_fields, rf,
            "removedFields of {update} on {pre}"
        );
        assert!(delta.truncated_arrays.is_empty());
        assert_eq!(
            r.modified,
            !delta.is_empty(),
            "modified flag of {update} on {pre}"
        );
    }
}

fn check_errors(cases: Vec<(Document, Bson, i32, &str)>) {
    for (pre, update, code, msg) in cases {
        let e = err_of(&pre, update.clone());
        assert_eq!(
            (e.code, e.message.as_str()),
            (code, msg),
            "error of {update} on {pre}"
        );
    }
}

#[test]
fn set() {
    check(vec![
        (
            doc! {"_id": 1, "x": 1},
            bson!({"$set": {"x": 2}}),
            doc! {"_id": 1, "x": 2},
            doc! {"x": 2},
            vec![],
        ),
        (
            doc! {"_id": 1, "x": 1},
            bson!({"$set": {"x": 1}}),
            doc! {"_id": 1, "x": 1},
            doc! {},
            vec![],
        ),
        // Type-sensitive equality: 1 -> 1.0 is a change.
        (
            doc! {"_id": 1, "x": 1},
            bson!({"$set": {"x": 1.0}}),
            doc! {"_id": 1, "x": 1.0},
            doc! {"x": 1.0},
            vec![],
        ),
        // Reference example 2: u before i, then nested.
        (
            doc! {"_id": 1, "o": {"p": 0}, "z": 0},
            bson!({"$set": {"n": 2, "o.p": 1, "z": 1}}),
            doc! {"_id": 1, "o": {"p": 1}, "z": 1, "n": 2},
            doc! {"z": 1, "n": 2, "o.p": 1},
            vec![],
        ),
        // Example 3: created subtree reported whole.
        (
            doc! {"_id": 1},
            bson!({"$set": {"a.b.c": 1}}),
            doc! {"_id": 1, "a": {"b": {"c": 1}}},
            doc! {"a": {"b": {"c": 1}}},
            vec![],
        ),
        // Two leaves under one created field: one entry with the final value.
        (
            doc! {"_id": 1},
            bson!({"$set": {"a.c": 2, "a.b": 1}}),
            doc! {"_id": 1, "a": {"b": 1, "c": 2}},
            doc! {"a": {"b": 1, "c": 2}},
            vec![],
        ),
        // New fields are created in field-name order.
        (
            doc! {"_id": 1},
            bson!({"$set": {"b": 1, "a": 1, "10": 1, "9": 1}}),
            doc! {"_id": 1, "9": 1, "10": 1, "a": 1, "b": 1},
            doc! {"9": 1, "10": 1, "a": 1, "b": 1},
            vec![],
        ),
        // Examples 14, 15: array element beyond the end pads with nulls.
        (
            doc! {"_id": 1, "arr": [1]},
            bson!({"$set": {"arr.3": 7}}),
            doc! {"_id": 1, "arr": [1, null, null, 7]},
            doc! {"arr.3": 7},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": []},
            bson!({"$set": {"arr.0.c": 1}}),
            doc! {"_id": 1, "arr": [{"c": 1}]},
            doc! {"arr.0": {"c": 1}},
            vec![],
        ),
        // Numeric component on a document is a field name.
        (
            doc! {"_id": 1, "a": {"1": 1}},
            bson!({"$set": {"a.1": 2}}),
            doc! {"_id": 1, "a": {"1": 2}},
            doc! {"a.1": 2},
            vec![],
        ),
        (
            doc! {"_id": 1},
            bson!({"$set": {"a.0": 2}}),
            doc! {"_id": 1, "a": {"0": 2}},
            doc! {"a": {"0": 2}},
            vec![],
        ),
        // Arrays of arrays.
        (
            doc! {"_id": 1, "m": [[1, 2], [3]]},
            bson!({"$set": {"m.1.0": 9}}),
            doc! {"_id": 1, "m": [[1, 2], [9]]},
            doc! {"m.1.0": 9},
            vec![],
        ),
        // Whole array replaced by $set is one entry even if mostly equal.
        (
            doc! {"_id": 1, "arr": [0, 1, 2, 3]},
            bson!({"$set": {"arr": [0]}}),
            doc! {"_id": 1, "arr": [0]},
            doc! {"arr": [0]},
            vec![],
        ),
        // NaN set over NaN is a no-op (binary equal).
        (
            doc! {"_id": 1, "n": f64::NAN},
            bson!({"$set": {"n": f64::NAN}}),
            doc! {"_id": 1, "n": f64::NAN},
            doc! {},
            vec![],
        ),
        // null is a value.
        (
            doc! {"_id": 1, "a": null},
            bson!({"$set": {"a": null}}),
            doc! {"_id": 1, "a": null},
            doc! {},
            vec![],
        ),
        // Empty $set is a no-op.
        (
            doc! {"_id": 1},
            bson!({"$set": {}}),
            doc! {"_id": 1},
            doc! {},
            vec![],
        ),
        // _id set to an equal value of the same type: no-op.
        (
            doc! {"_id": 1, "a": 1},
            bson!({"$set": {"_id": 1}}),
            doc! {"_id": 1, "a": 1},
            doc! {},
            vec![],
        ),
    ]);
}

#[test]
fn set_no_op_result() {
    let r = apply(&doc! {"_id": 1, "x": 1}, bson!({"$set": {"x": 1}})).unwrap();
    assert!(!r.modified);
    assert!(r.delta.unwrap().is_empty());
}

#[test]
fn set_errors() {
    check_errors(vec![
        (
            doc! {"_id": 1, "a": 1},
            bson!({"$set": {"a.x": 1}}),
            28,
            "Cannot create field 'x' in element {a: 1}",
        ),
        (
            doc! {"_id": 1, "a": [1, 2]},
            bson!({"$set": {"a.x": 1}}),
            28,
            "Cannot create field 'x' in element {a: [ 1, 2 ]}",
        ),
        (
            doc! {"_id": 1, "a": [null]},
            bson!({"$set": {"a.0.c": 1}}),
            28,
            "Cannot create field 'c' in element {0: null}",
        ),
        (
            doc! {"_id": 1},
            bson!({"$set": {"_id": 2}}),
            66,
            "Performing an update on the path '_id' would modify the immutable field '_id'",
        ),
        (
            doc! {"_id": {"a": 1}},
            bson!({"$set": {"_id.a": 2}}),
            66,
            "Performing an update on the path '_id.a' would modify the immutable field '_id'",
        ),
        (
            doc! {"_id": 1},
            bson!({"$unset": {"_id": 1}}),
            66,
            "Performing an update on the path '_id' would modify the immutable field '_id'",
        ),
    ]);
}

#[test]
fn unset() {
    check(vec![
        // Example 4.
        (
            doc! {"_id": 1, "o": {"p": 1, "q": 2}},
            bson!({"$unset": {"o.p": "", "r": ""}}),
            doc! {"_id": 1, "o": {"q": 2}},
            doc! {},
            vec!["o.p"],
        ),
        // Example 5: array element becomes null, reported as updated.
        (
            doc! {"_id": 1, "arr": [1, 2, 3]},
            bson!({"$unset": {"arr.1": ""}}),
            doc! {"_id": 1, "arr": [1, null, 3]},
            doc! {"arr.1": null},
            vec![],
        ),
        (
            doc! {"_id": 1, "a": 1},
            bson!({"$unset": {"a.b": 1}}),
            doc! {"_id": 1, "a": 1},
            doc! {},
            vec![],
        ),
        (
            doc! {"_id": 1, "a": [1]},
            bson!({"$unset": {"a.x": 1, "a.5": 1}}),
            doc! {"_id": 1, "a": [1]},
            doc! {},
            vec![],
        ),
        (
            doc! {"_id": 1, "a": 1, "b": 2},
            bson!({"$unset": {"b": 1, "a": 1}}),
            doc! {"_id": 1},
            doc! {},
            vec!["a", "b"],
        ),
    ]);
}

#[test]
fn inc_and_mul() {
    check(vec![
        (
            doc! {"_id": 1, "a": 1},
            bson!({"$inc": {"a": 2}}),
            doc! {"_id": 1, "a": 3},
            doc! {"a": 3},
            vec![],
        ),
        (
            doc! {"_id": 1, "a": i32::MAX},
            bson!({"$inc": {"a": 1}}),
            doc! {"_id": 1, "a": i64::from(i32::MAX) + 1},
            doc! {"a": i64::from(i32::MAX) + 1},
            vec![],
        ),
        (
            doc! {"_id": 1, "a": 1},
            bson!({"$inc": {"a": 0.5}}),
            doc! {"_id": 1, "a": 1.5},
            doc! {"a": 1.5},
            vec![],
        ),
        (
            doc! {"_id": 1, "a": 1_i64},
            bson!({"$inc": {"a": 1}}),
            doc! {"_id": 1, "a": 2_i64},
            doc! {"a": 2_i64},
            vec![],
        ),
        (
            doc! {"_id": 1, "a": 1},
            bson!({"$inc": {"a": 0}}),
            doc! {"_id": 1, "a": 1},
            doc! {},
            vec![],
        ),
        // int32 + 0.0 -> double: a change of type.
        (
            doc! {"_id": 1, "a": 1},
            bson!({"$inc": {"a": 0.0}}),
            doc! {"_id": 1, "a": 1.0},
            doc! {"a": 1.0},
            vec![],
        ),
        (
            doc! {"_id": 1},
            bson!({"$inc": {"a.b": 5}}),
            doc! {"_id": 1, "a": {"b": 5}},
            doc! {"a": {"b": 5}},
            vec![],
        ),
        // Example 6.
        (
            doc! {"_id": 1, "arr": [{"n": 1}, {"n": 5}]},
            bson!({"$inc": {"arr.1.n": 1}}),
            doc! {"_id": 1, "arr": [{"n": 1}, {"n": 6}]},
            doc! {"arr.1.n": 6},
            vec![],
        ),
        (
            doc! {"_id": 1, "a": 3},
            bson!({"$mul": {"a": 2}}),
            doc! {"_id": 1, "a": 6},
            doc! {"a": 6},
            vec![],
        ),
        (
            doc! {"_id": 1, "a": i32::MAX},
            bson!({"$mul": {"a": 2}}),
            doc! {"_id": 1, "a": i64::from(i32::MAX) * 2},
            doc! {"a": i64::from(i32::MAX) * 2},
            vec![],
        ),
        (
            doc! {"_id": 1},
            bson!({"$mul": {"a": 2, "b": 2.5, "c": 3_i64}}),
            doc! {"_id": 1, "a": 0, "b": 0.0, "c": 0_i64},
            doc! {"a": 0, "b": 0.0, "c": 0_i64},
            vec![],
        ),
        (
            doc! {"_id": 1, "a": 1},
            bson!({"$mul": {"a": 1}}),
            doc! {"_id": 1, "a": 1},
            doc! {},
            vec![],
        ),
    ]);
    let r = apply(&doc! {"_id": 1, "a": 1.0}, bson!({"$inc": {"a": f64::NAN}})).unwrap();
    assert!(r.doc.get_f64("a").unwrap().is_nan());
}

#[test]
fn arithmetic_errors() {
    check_errors(vec![
        (
            doc! {"_id": 1, "a": "x"},
            bson!({"$inc": {"a": 1}}),
            14,
            "Cannot apply $inc to a value of non-numeric type. {_id: 1} has the field 'a' of non-numeric type string",
        ),
        (
            doc! {"_id": 1, "a": null},
            bson!({"$mul": {"a": 1}}),
            14,
            "Cannot apply $mul to a value of non-numeric type. {_id: 1} has the field 'a' of non-numeric type null",
        ),
        (
            doc! {"_id": 1},
            bson!({"$inc": {"a": "x"}}),
            14,
            "Cannot increment with non-numeric argument: {a: \"x\"}",
        ),
        (
            doc! {"_id": 1},
            bson!({"$mul": {"a": null}}),
            14,
            "Cannot multiply with non-numeric argument: {a: null}",
        ),
        (
            doc! {"_id": 1, "a": i64::MAX},
            bson!({"$inc": {"a": 1}}),
            2,
            "Failed to apply $inc operations to current value ((NumberLong)9223372036854775807) for document {_id: 1}",
        ),
    ]);
}

#[test]
fn min_max() {
    check(vec![
        (
            doc! {"_id": 1, "a": 5},
            bson!({"$min": {"a": 3}}),
            doc! {"_id": 1, "a": 3},
            doc! {"a": 3},
            vec![],
        ),
        (
            doc! {"_id": 1, "a": 5},
            bson!({"$min": {"a": 7}}),
            doc! {"_id": 1, "a": 5},
            doc! {},
            vec![],
        ),
        (
            doc! {"_id": 1, "a": 5},
            bson!({"$max": {"a": 7}}),
            doc! {"_id": 1, "a": 7},
            doc! {"a": 7},
            vec![],
        ),
        // Equal across types: no change.
        (
            doc! {"_id": 1, "a": 5},
            bson!({"$max": {"a": 5.0}}),
            doc! {"_id": 1, "a": 5},
            doc! {},
            vec![],
        ),
        // Cross-type order: strings sort above numbers, null below.
        (
            doc! {"_id": 1, "a": 5},
            bson!({"$max": {"a": "x"}}),
            doc! {"_id": 1, "a": "x"},
            doc! {"a": "x"},
            vec![],
        ),
        (
            doc! {"_id": 1, "a": 5},
            bson!({"$min": {"a": null}}),
            doc! {"_id": 1, "a": null},
            doc! {"a": null},
            vec![],
        ),
        (
            doc! {"_id": 1},
            bson!({"$max": {"a": 1}}),
            doc! {"_id": 1, "a": 1},
            doc! {"a": 1},
            vec![],
        ),
        // NaN sorts below every number.
        (
            doc! {"_id": 1, "a": 1},
            bson!({"$max": {"a": f64::NAN}}),
            doc! {"_id": 1, "a": 1},
            doc! {},
            vec![],
        ),
    ]);
}

#[test]
fn rename() {
    check(vec![
        // Example 12.
        (
            doc! {"_id": 1, "a": 1},
            bson!({"$rename": {"a": "b"}}),
            doc! {"_id": 1, "b": 1},
            doc! {"b": 1},
            vec!["a"],
        ),
        (
            doc! {"_id": 1, "a": 1, "b": 2},
            bson!({"$rename": {"a": "b"}}),
            doc! {"_id": 1, "b": 1},
            doc! {"b": 1},
            vec!["a"],
        ),
        (
            doc! {"_id": 1},
            bson!({"$rename": {"a": "b"}}),
            doc! {"_id": 1},
            doc! {},
            vec![],
        ),
        (
            doc! {"_id": 1, "a": {"x": 1}},
            bson!({"$rename": {"a.x": "a.y"}}),
            doc! {"_id": 1, "a": {"y": 1}},
            doc! {"a.y": 1},
            vec!["a.x"],
        ),
        (
            doc! {"_id": 1, "a": {"x": [1]}},
            bson!({"$rename": {"a.x": "c.d"}}),
            doc! {"_id": 1, "a": {}, "c": {"d": [1]}},
            doc! {"c": {"d": [1]}},
            vec!["a.x"],
        ),
    ]);
    check_errors(vec![
        (
            doc! {"_id": 1, "a": [{"b": 1}]},
            bson!({"$rename": {"a.0.b": "c"}}),
            2,
            "The source field cannot be an array element, 'a.0.b' in doc with _id: 1 has an array field called 'a'",
        ),
        (
            doc! {"_id": 1, "a": 1, "b": [1]},
            bson!({"$rename": {"a": "b.0"}}),
            2,
            "The destination field cannot be an array element, 'b.0' in doc with _id: 1 has an array field called 'b'",
        ),
        (
            doc! {"_id": 1},
            bson!({"$rename": {"a": 1}}),
            2,
            "The 'to' field for $rename must be a string: a: 1",
        ),
        (
            doc! {"_id": 1},
            bson!({"$rename": {"a": "a"}}),
            2,
            "The source and target field for $rename must differ: a: \"a\"",
        ),
        (
            doc! {"_id": 1},
            bson!({"$rename": {"a": "a.b"}}),
            2,
            "The source and target field for $rename must not be on the same path: a: \"a.b\"",
        ),
        (
            doc! {"_id": 1},
            bson!({"$rename": {"a.$": "b"}}),
            2,
            "The source field for $rename may not be dynamic: a.$",
        ),
        (
            doc! {"_id": 1, "a": 1},
            bson!({"$rename": {"a": "b"}, "$set": {"b": 2}}),
            40,
            "Updating the path 'b' would create a conflict at 'b'",
        ),
    ]);
}

#[test]
fn set_on_insert_and_current_date() {
    check(vec![
        (
            doc! {"_id": 1},
            bson!({"$setOnInsert": {"a": 1}}),
            doc! {"_id": 1},
            doc! {},
            vec![],
        ),
        (
            doc! {"_id": 1},
            bson!({"$currentDate": {"d": true, "t": {"$type": "timestamp"}, "e": {"$type": "date"}}}),
            doc! {"_id": 1, "d": bson::DateTime::from_millis(1_000), "e": bson::DateTime::from_millis(1_000), "t": Timestamp { time: 100, increment: 7 }},
            doc! {"d": bson::DateTime::from_millis(1_000), "e": bson::DateTime::from_millis(1_000), "t": Timestamp { time: 100, increment: 7 }},
            vec![],
        ),
    ]);
    let c = UpdateCtx {
        is_upsert_insert: true,
        ..ctx()
    };
    let r = apply_full(
        &doc! {"_id": 1},
        bson!({"$setOnInsert": {"a": 1}, "$set": {"b": 2}}),
        None,
        &c,
    )
    .unwrap();
    assert_eq!(r.doc, doc! {"_id": 1, "a": 1, "b": 2});
    check_errors(vec![
        (
            doc! {},
            bson!({"$currentDate": {"d": {"$type": "x"}}}),
            2,
            "The '$type' string field is required to be 'date' or 'timestamp': {$currentDate: {field : {$type: 'date'}}}",
        ),
        (
            doc! {},
            bson!({"$currentDate": {"d": 1}}),
            2,
            "d is not valid type for $currentDate. Please use a boolean ('true') or a $type expression ({$type: 'timestamp/date'}).",
        ),
    ]);
}

#[test]
fn push() {
    check(vec![
        // Example 7: appends reported per element.
        (
            doc! {"_id": 1, "arr": [1, 2]},
            bson!({"$push": {"arr": {"$each": [3, 4]}}}),
            doc! {"_id": 1, "arr": [1, 2, 3, 4]},
            doc! {"arr.2": 3, "arr.3": 4},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": [1]},
            bson!({"$push": {"arr": 2}}),
            doc! {"_id": 1, "arr": [1, 2]},
            doc! {"arr.1": 2},
            vec![],
        ),
        // Example 8: empty or missing array -> whole array.
        (
            doc! {"_id": 1, "arr": []},
            bson!({"$push": {"arr": 3}}),
            doc! {"_id": 1, "arr": [3]},
            doc! {"arr": [3]},
            vec![],
        ),
        (
            doc! {"_id": 1},
            bson!({"$push": {"arr": 3}}),
            doc! {"_id": 1, "arr": [3]},
            doc! {"arr": [3]},
            vec![],
        ),
        // Example 9: $sort -> whole array.
        (
            doc! {"_id": 1, "arr": [3, 1]},
            bson!({"$push": {"arr": {"$each": [2], "$sort": 1}}}),
            doc! {"_id": 1, "arr": [1, 2, 3]},
            doc! {"arr": [1, 2, 3]},
            vec![],
        ),
        // $sort even when nothing moves is still an update.
        (
            doc! {"_id": 1, "arr": [1, 2]},
            bson!({"$push": {"arr": {"$each": [], "$sort": 1}}}),
            doc! {"_id": 1, "arr": [1, 2]},
            doc! {"arr": [1, 2]},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": [{"k": 2}, {"k": 1}]},
            bson!({"$push": {"arr": {"$each": [{"k": 3}], "$sort": {"k": -1}}}}),
            doc! {"_id": 1, "arr": [{"k": 3}, {"k": 2}, {"k": 1}]},
            doc! {"arr": [{"k": 3}, {"k": 2}, {"k": 1}]},
            vec![],
        ),
        // $position.
        (
            doc! {"_id": 1, "arr": [1, 2]},
            bson!({"$push": {"arr": {"$each": [0], "$position": 0}}}),
            doc! {"_id": 1, "arr": [0, 1, 2]},
            doc! {"arr": [0, 1, 2]},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": [1, 2]},
            bson!({"$push": {"arr": {"$each": [9], "$position": 2}}}),
            doc! {"_id": 1, "arr": [1, 2, 9]},
            doc! {"arr": [1, 2, 9]},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": [1, 2]},
            bson!({"$push": {"arr": {"$each": [9], "$position": 5}}}),
            doc! {"_id": 1, "arr": [1, 2, 9]},
            doc! {"arr.2": 9},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": [1, 2]},
            bson!({"$push": {"arr": {"$each": [9], "$position": -1}}}),
            doc! {"_id": 1, "arr": [1, 9, 2]},
            doc! {"arr": [1, 9, 2]},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": [1, 2]},
            bson!({"$push": {"arr": {"$each": [9], "$position": -5}}}),
            doc! {"_id": 1, "arr": [9, 1, 2]},
            doc! {"arr": [9, 1, 2]},
            vec![],
        ),
        // $slice that removes -> whole array; one that does not -> appends.
        (
            doc! {"_id": 1, "arr": [1, 2]},
            bson!({"$push": {"arr": {"$each": [3], "$slice": -2}}}),
            doc! {"_id": 1, "arr": [2, 3]},
            doc! {"arr": [2, 3]},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": [1, 2]},
            bson!({"$push": {"arr": {"$each": [3], "$slice": 5}}}),
            doc! {"_id": 1, "arr": [1, 2, 3]},
            doc! {"arr.2": 3},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": [1, 2]},
            bson!({"$push": {"arr": {"$each": [3], "$slice": 0}}}),
            doc! {"_id": 1, "arr": []},
            doc! {"arr": []},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": [1]},
            bson!({"$push": {"arr": {"$each": []}}}),
            doc! {"_id": 1, "arr": [1]},
            doc! {},
            vec![],
        ),
        (
            doc! {"_id": 1},
            bson!({"$push": {"arr": {"$each": []}}}),
            doc! {"_id": 1, "arr": []},
            doc! {"arr": []},
            vec![],
        ),
        // A document without $each is a value.
        (
            doc! {"_id": 1, "arr": [1]},
            bson!({"$push": {"arr": {"x": 1}}}),
            doc! {"_id": 1, "arr": [1, {"x": 1}]},
            doc! {"arr.1": {"x": 1}},
            vec![],
        ),
        // Arrays of arrays: pushing an array pushes one element.
        (
            doc! {"_id": 1, "arr": [[1]]},
            bson!({"$push": {"arr": [2]}}),
            doc! {"_id": 1, "arr": [[1], [2]]},
            doc! {"arr.1": [2]},
            vec![],
        ),
    ]);
    check_errors(vec![
        (
            doc! {"_id": 1, "a": 1},
            bson!({"$push": {"a": 1}}),
            2,
            "The field 'a' must be an array but is of type int in document {_id: 1}",
        ),
        (
            doc! {"_id": 1},
            bson!({"$push": {"a": {"$each": 1}}}),
            2,
            "The argument to $each in $push must be an array but it was of type: int",
        ),
        (
            doc! {"_id": 1},
            bson!({"$push": {"a": {"$each": [], "$foo": 1}}}),
            2,
            "Unrecognized clause in $push: $foo",
        ),
        (
            doc! {"_id": 1},
            bson!({"$push": {"a": {"$each": [], "$slice": "x"}}}),
            2,
            "The value for $slice must be an integer value but was given type: string",
        ),
        (
            doc! {"_id": 1},
            bson!({"$push": {"a": {"$each": [], "$sort": 2}}}),
            2,
            "The $sort is invalid: use 1/-1 to sort the whole element, or {field:1/-1} to sort embedded fields",
        ),
    ]);
}

#[test]
fn add_to_set() {
    check(vec![
        // Example 11 (8.0: per-element).
        (
            doc! {"_id": 1, "tags": ["a"]},
            bson!({"$addToSet": {"tags": {"$each": ["a", "b"]}}}),
            doc! {"_id": 1, "tags": ["a", "b"]},
            doc! {"tags.1": "b"},
            vec![],
        ),
        (
            doc! {"_id": 1, "tags": ["a"]},
            bson!({"$addToSet": {"tags": "a"}}),
            doc! {"_id": 1, "tags": ["a"]},
            doc! {},
            vec![],
        ),
        // Duplicates within $each are added once; numeric equality across types.
        (
            doc! {"_id": 1, "n": [1]},
            bson!({"$addToSet": {"n": {"$each": [1.0, 2, 2, 3]}}}),
            doc! {"_id": 1, "n": [1, 2, 3]},
            doc! {"n.1": 2, "n.2": 3},
            vec![],
        ),
        (
            doc! {"_id": 1},
            bson!({"$addToSet": {"n": {"$each": [1, 1]}}}),
            doc! {"_id": 1, "n": [1]},
            doc! {"n": [1]},
            vec![],
        ),
        (
            doc! {"_id": 1, "n": []},
            bson!({"$addToSet": {"n": 1}}),
            doc! {"_id": 1, "n": [1]},
            doc! {"n.0": 1},
            vec![],
        ),
        (
            doc! {"_id": 1, "n": [[1]]},
            bson!({"$addToSet": {"n": [1]}}),
            doc! {"_id": 1, "n": [[1]]},
            doc! {},
            vec![],
        ),
    ]);
    check_errors(vec![
        (
            doc! {"_id": 1, "a": 1},
            bson!({"$addToSet": {"a": 1}}),
            2,
            "Cannot apply $addToSet to non-array field. Field named 'a' has non-array type int",
        ),
        (
            doc! {"_id": 1},
            bson!({"$addToSet": {"a": {"$each": 1}}}),
            2,
            "The argument to $each in $addToSet must be an array but it was of type int",
        ),
    ]);
}

#[test]
fn pop_pull_pull_all() {
    check(vec![
        // Example 10: whole array, never truncatedArrays.
        (
            doc! {"_id": 1, "arr": [1, 2, 3]},
            bson!({"$pop": {"arr": 1}}),
            doc! {"_id": 1, "arr": [1, 2]},
            doc! {"arr": [1, 2]},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": [1, 2, 3]},
            bson!({"$pop": {"arr": -1}}),
            doc! {"_id": 1, "arr": [2, 3]},
            doc! {"arr": [2, 3]},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": []},
            bson!({"$pop": {"arr": 1}}),
            doc! {"_id": 1, "arr": []},
            doc! {},
            vec![],
        ),
        (
            doc! {"_id": 1},
            bson!({"$pop": {"arr": 1}}),
            doc! {"_id": 1},
            doc! {},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": [1, 2, 3, 2]},
            bson!({"$pull": {"arr": 2}}),
            doc! {"_id": 1, "arr": [1, 3]},
            doc! {"arr": [1, 3]},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": [1, 2.0, 3]},
            bson!({"$pull": {"arr": 2}}),
            doc! {"_id": 1, "arr": [1, 3]},
            doc! {"arr": [1, 3]},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": [1, 2, 3]},
            bson!({"$pull": {"arr": 9}}),
            doc! {"_id": 1, "arr": [1, 2, 3]},
            doc! {},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": [1, 5, 8]},
            bson!({"$pull": {"arr": {"$gte": 5}}}),
            doc! {"_id": 1, "arr": [1]},
            doc! {"arr": [1]},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": [1, 5, 8]},
            bson!({"$pull": {"arr": {"$in": [1, 8]}}}),
            doc! {"_id": 1, "arr": [5]},
            doc! {"arr": [5]},
            vec![],
        ),
        // Conditions on subdocument fields.
        (
            doc! {"_id": 1, "arr": [{"a": 1, "b": 1}, {"a": 2}, 3]},
            bson!({"$pull": {"arr": {"a": 1}}}),
            doc! {"_id": 1, "arr": [{"a": 2}, 3]},
            doc! {"arr": [{"a": 2}, 3]},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": [{"a": 1}, {"a": 5}]},
            bson!({"$pull": {"arr": {"a": {"$gt": 2}}}}),
            doc! {"_id": 1, "arr": [{"a": 1}]},
            doc! {"arr": [{"a": 1}]},
            vec![],
        ),
        // Equality with an array value (arrays of arrays).
        (
            doc! {"_id": 1, "arr": [[1, 2], [3]]},
            bson!({"$pull": {"arr": [1, 2]}}),
            doc! {"_id": 1, "arr": [[3]]},
            doc! {"arr": [[3]]},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": [1, 2, 3, 1]},
            bson!({"$pullAll": {"arr": [1, 3]}}),
            doc! {"_id": 1, "arr": [2]},
            doc! {"arr": [2]},
            vec![],
        ),
        (
            doc! {"_id": 1},
            bson!({"$pull": {"arr": 1}, "$pullAll": {"b": [1]}}),
            doc! {"_id": 1},
            doc! {},
            vec![],
        ),
        (
            doc! {"_id": 1, "arr": ["ab", "cd"]},
            bson!({"$pull": {"arr": Bson::RegularExpression(bson::Regex { pattern: "^a".into(), options: String::new() })}}),
            doc! {"_id": 1, "arr": ["cd"]},
            doc! {"arr": ["cd"]},
            vec![],
        ),
    ]);
    check_errors(vec![
        (
            doc! {"_id": 1, "a": 1},
            bson!({"$pop": {"a": 1}}),
            14,
            "Path 'a' contains an element of non-array type 'int'",
        ),
        (
            doc! {"_id": 1},
            bson!({"$pop": {"a": 2}}),
            9,
            "$pop expects 1 or -1, found: 2",
        ),
        (
            doc! {"_id": 1},
            bson!({"$pop": {"a": "x"}}),
            9,
            "Expected a number in: a: \"x\"",
        ),
        (
            doc! {"_id": 1, "a": 1},
            bson!({"$pull": {"a": 1}}),
            2,
            "Cannot apply $pull to a non-array value",
        ),
        (
            doc! {"_id": 1, "a": 1},
            bson!({"$pullAll": {"a": [1]}}),
            2,
            "Cannot apply $pull to a non-array value",
        ),
        (
            doc! {"_id": 1},
            bson!({"$pullAll": {"a": 1}}),
            2,
            "$pullAll requires an array argument but was given a int",
        ),
    ]);
}

#[test]
fn bit() {
    check(vec![
        (
            doc! {"_id": 1, "a": 13},
            bson!({"$bit": {"a": {"and": 10}}}),
            doc! {"_id": 1, "a": 8},
            doc! {"a": 8},
            vec![],
        ),
        (
            doc! {"_id": 1, "a": 13},
            bson!({"$bit": {"a": {"or": 2}}}),
            doc! {"_id": 1, "a": 15},
            doc! {"a": 15},
            vec![],
        ),
        (
            doc! {"_id": 1, "a": 13},
            bson!({"$bit": {"a": {"xor": 1_i64}}}),
            doc! {"_id": 1, "a": 12_i64},
            doc! {"a": 12_i64},
            vec![],
        ),
        (
            doc! {"_id": 1, "a": 13},
            bson!({"$bit": {"a": {"and": 13}}}),
            doc! {"_id": 1, "a": 13},
            doc! {},
            vec![],
        ),
        (
            doc! {"_id": 1},
            bson!({"$bit": {"a": {"or": 5}}}),
            doc! {"_id": 1, "a": 5},
            doc! {"a": 5},
            vec![],
        ),
    ]);
    check_errors(vec![
        (
            doc! {"_id": 1, "a": 1.5},
            bson!({"$bit": {"a": {"and": 1}}}),
            2,
            "Cannot apply $bit to a value of non-integral type._id: 1 has the field a of non-integer type double",
        ),
        (
            doc! {"_id": 1},
            bson!({"$bit": {"a": {"nand": 1}}}),
            2,
            "The $bit modifier only supports 'and', 'or', and 'xor', not 'nand' which is an unknown operator: {nand: 1}",
        ),
        (
            doc! {"_id": 1},
            bson!({"$bit": {"a": {"and": 1.0}}}),
            2,
            "The $bit modifier field must be an Integer(32/64 bit); a 'double' is not supported here: {and: 1.0}",
        ),
    ]);
}

#[test]
fn positional() {
    // Example 13.
    let pre = doc! {"_id": 1, "arr": [{"k": 1, "v": 0}, {"k": 2, "v": 0}]};
    let c = UpdateCtx {
        positional: Some(1),
        ..ctx()
    };
    let r = apply_full(&pre, bson!({"$set": {"arr.$.v": 9}}), None, &c).unwrap();
    assert_eq!(
        r.doc,
        doc! {"_id": 1, "arr": [{"k": 1, "v": 0}, {"k": 2, "v": 9}]}
    );
    assert_eq!(r.delta.unwrap().updated_fields, doc! {"arr.1.v": 9});
    // Positional merged with a sibling field of the same element.
    let r = apply_full(
        &pre,
        bson!({"$set": {"arr.$.v": 9, "arr.1.k": 5}}),
        None,
        &c,
    )
    .unwrap();
    assert_eq!(
        r.doc,
        doc! {"_id": 1, "arr": [{"k": 1, "v": 0}, {"k": 5, "v": 9}]}
    );
    let e = apply_full(&pre, bson!({"$set": {"arr.$": 9, "arr.1": 5}}), None, &c).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (40, "Update created a conflict at 'arr.1'")
    );
    let e = apply(&pre, bson!({"$set": {"arr.$.v": 9}})).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            2,
            "The positional operator did not find the match needed from the query."
        )
    );
    // Nested positional inside an array of arrays.
    let pre = doc! {"_id": 1, "m": [[1, 2], [3, 4]]};
    let c = UpdateCtx {
        positional: Some(0),
        ..ctx()
    };
    let r = apply_full(&pre, bson!({"$inc": {"m.1.$": 10}}), None, &c).unwrap();
    assert_eq!(r.doc, doc! {"_id": 1, "m": [[1, 2], [13, 4]]});
    assert_eq!(r.delta.unwrap().updated_fields, doc! {"m.1.0": 13});
}

#[test]
fn all_positional_and_array_filters() {
    let pre = doc! {"_id": 1, "a": [{"x": 1}, {"x": 5}, {"x": 7}]};
    let r = apply(&pre, bson!({"$inc": {"a.$[].x": 1}})).unwrap();
    assert_eq!(r.doc, doc! {"_id": 1, "a": [{"x": 2}, {"x": 6}, {"x": 8}]});
    // More than one element matched and modified: MongoDB logs the whole array
    // (update_array_node.cpp), not each element.
    assert_eq!(
        r.delta.unwrap().updated_fields,
        doc! {"a": [{"x": 2}, {"x": 6}, {"x": 8}]}
    );

    let afs = [doc! {"e.x": {"$gt": 4}}];
    let r = apply_full(
        &pre,
        bson!({"$set": {"a.$[e].y": true}}),
        Some(&afs),
        &ctx(),
    )
    .unwrap();
    assert_eq!(
        r.doc,
        doc! {"_id": 1, "a": [{"x": 1}, {"x": 5, "y": true}, {"x": 7, "y": true}]}
    );
    assert_eq!(
        r.delta.unwrap().updated_fields,
        doc! {"a": [{"x": 1}, {"x": 5, "y": true}, {"x": 7, "y": true}]}
    );

    // One element matched: the change is logged at its own path.
    let afs = [doc! {"e.x": 7}];
    let r = apply_full(
        &pre,
        bson!({"$set": {"a.$[e].y": true}}),
        Some(&afs),
        &ctx(),
    )
    .unwrap();
    assert_eq!(r.delta.unwrap().updated_fields, doc! {"a.2.y": true});

    // Several matched but only one modified: that whole element is logged.
    let r = apply(&pre, bson!({"$max": {"a.$[].x": 6}})).unwrap();
    assert_eq!(r.doc, doc! {"_id": 1, "a": [{"x": 6}, {"x": 6}, {"x": 7}]});
    // Two modified (0 and 1): whole array.
    assert_eq!(
        r.delta.unwrap().updated_fields,
        doc! {"a": [{"x": 6}, {"x": 6}, {"x": 7}]}
    );
    let r = apply(&pre, bson!({"$max": {"a.$[].x": 2}})).unwrap();
    assert_eq!(r.delta.unwrap().updated_fields, doc! {"a.0": {"x": 2}});
    let r = apply(&pre, bson!({"$max": {"a.$[].x": 0}})).unwrap();
    assert!(!r.modified && r.delta.unwrap().is_empty());

    // An identifier filter on the element itself.
    let pre = doc! {"_id": 1, "s": [1, 5, 9]};
    let afs = [doc! {"n": {"$gte": 5}}];
    let r = apply_full(&pre, bson!({"$set": {"s.$[n]": 0}}), Some(&afs), &ctx()).unwrap();
    assert_eq!(r.doc, doc! {"_id": 1, "s": [1, 0, 0]});

    // Nested $[] levels.
    let pre = doc! {"_id": 1, "g": [[1, 2], [3]]};
    let r = apply(&pre, bson!({"$mul": {"g.$[].$[]": 2}})).unwrap();
    assert_eq!(r.doc, doc! {"_id": 1, "g": [[2, 4], [6]]});
    assert_eq!(r.delta.unwrap().updated_fields, doc! {"g": [[2, 4], [6]]});
    // Outer level matches one element, inner level several: the inner array is logged.
    let pre = doc! {"_id": 1, "g": [[1, 2]]};
    let r = apply(&pre, bson!({"$mul": {"g.$[].$[]": 2}})).unwrap();
    assert_eq!(r.delta.unwrap().updated_fields, doc! {"g.0": [2, 4]});

    // $[] on an empty array is a no-op.
    let r = apply(&doc! {"_id": 1, "a": []}, bson!({"$set": {"a.$[]": 1}})).unwrap();
    assert!(!r.modified);

    // $[] and $[id] both matching one element conflict.
    let afs = [doc! {"i": 1}];
    let e = apply_full(
        &doc! {"_id": 1, "a": [1]},
        bson!({"$set": {"a.$[]": 2, "a.$[i]": 3}}),
        Some(&afs),
        &ctx(),
    )
    .unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (40, "Update created a conflict at 'a.0'")
    );

    check_errors(vec![
        (
            doc! {"_id": 1},
            bson!({"$set": {"a.$[].x": 1}}),
            2,
            "The path 'a' must exist in the document in order to apply array updates.",
        ),
        (
            doc! {"_id": 1, "a": 1},
            bson!({"$set": {"a.$[]": 1}}),
            2,
            "Cannot apply array updates to non-array element a: 1",
        ),
        (
            doc! {"_id": 1, "a": [1]},
            bson!({"$set": {"a.$[x]": 1}}),
            2,
            "No array filter found for identifier 'x' in path 'a.$[x]'",
        ),
    ]);
}

#[test]
fn array_filter_parse_errors() {
    let parse = |u: Bson, afs: &[Document]| Update::parse(&u, Some(afs)).unwrap_err();
    let e = parse(bson!({"$set": {"a": 1}}), &[doc! {"x": 1}]);
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            9,
            "The array filter for identifier 'x' was not used in the update { $set: { a: 1 } }"
        )
    );
    let e = parse(
        bson!({"$set": {"a.$[x]": 1}}),
        &[doc! {"x": 1}, doc! {"x": 2}],
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            9,
            "Found multiple array filters with the same top-level field name x"
        )
    );
    let e = parse(bson!({"$set": {"a.$[x]": 1}}), &[doc! {"x": 1, "y": 2}]);
    assert_eq!(e.code, 9);
    let e = parse(bson!({"$set": {"a.$[X]": 1}}), &[doc! {"X": 1}]);
    assert_eq!(e.code, 2);
    let e = parse(bson!([{"$set": {"a": 1}}]), &[doc! {"x": 1}]);
    assert_eq!(e.code, 9);
}

#[test]
fn parse_errors() {
    let cases: Vec<(Bson, i32, &str)> = vec![
        (
            bson!({"$foo": {"a": 1}}),
            9,
            "Unknown modifier: $foo. Expected a valid update modifier or pipeline-style update specified as an array",
        ),
        (
            bson!({"$set": {"a": 1}, "b": 1}),
            9,
            "Unknown modifier: b. Expected a valid update modifier or pipeline-style update specified as an array",
        ),
        (
            bson!({"$set": 1}),
            9,
            "Modifiers operate on fields but we found type int instead. For example: {$mod: {<field>: ...}} not {$set: 1}",
        ),
        (
            bson!({"$set": {"a": 1, "a.b": 1}}),
            40,
            "Updating the path 'a.b' would create a conflict at 'a'",
        ),
        (
            bson!({"$set": {"a.b": 1}, "$inc": {"a": 1}}),
            40,
            "Updating the path 'a' would create a conflict at 'a'",
        ),
        (
            bson!({"$set": {"a": 1}, "$unset": {"a": 1}}),
            40,
            "Updating the path 'a' would create a conflict at 'a'",
        ),
        (
            bson!({"$set": {"a.$[]": 1, "a.b": 1}}),
            40,
            "Updating the path 'a.b' would create a conflict at 'a'",
        ),
        (
            bson!({"$set": {"": 1}}),
            56,
            "An empty update path is not valid.",
        ),
        (
            bson!({"$set": {"a..b": 1}}),
            56,
            "The update path 'a..b' contains an empty field name, which is not allowed.",
        ),
        (
            bson!({"$set": {"a.$.b.$": 1}}),
            2,
            "Too many positional (i.e. '$') elements found in path 'a.$.b.$'",
        ),
        (
            bson!({"$set": {"$.a": 1}}),
            2,
            "Cannot have positional (i.e. '$') element in the first position in path '$.a'",
        ),
        (
            bson!({"$set": {"$x": 1}}),
            52,
            "The dollar ($) prefixed field '$x' in '$x' is not allowed in the context of an update's replacement document. Consider using an aggregation pipeline with $replaceWith.",
        ),
        (
            bson!({"a": 1, "$set": {"b": 1}}),
            52,
            "The dollar ($) prefixed field '$set' in '$set' is not allowed in the context of an update's replacement document. Consider using an aggregation pipeline with $replaceWith.",
        ),
        (
            bson!(1),
            9,
            "Update argument must be either an object or an array",
        ),
    ];
    for (u, code, msg) in cases {
        let e = Update::parse(&u, None).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (code, msg), "{u}");
    }
    // Positional and a concrete index do not conflict at parse time.
    assert!(Update::parse(&bson!({"$set": {"a.$": 1, "a.0": 1}}), None).is_ok());
    assert!(Update::parse(&bson!({"$set": {"a.b": 1, "a.c": 1}}), None).is_ok());
}

#[test]
fn replacement() {
    let u = Update::parse(&bson!({"b": 2}), None).unwrap();
    assert!(u.is_replacement() && !u.is_pipeline());
    let r = u.apply(&doc! {"_id": 1, "a": 1}, &ctx(), &TestEnv).unwrap();
    assert_eq!(
        r,
        UpdateResult {
            doc: doc! {"_id": 1, "b": 2},
            modified: true,
            delta: None
        }
    );
    // _id moved first.
    let r = apply(&doc! {"_id": 1, "a": 1}, bson!({"b": 2, "_id": 1})).unwrap();
    assert_eq!(r.doc.keys().next().map(String::as_str), Some("_id"));
    // Identical replacement: no-op.
    let r = apply(&doc! {"_id": 1, "a": 1}, bson!({"_id": 1, "a": 1})).unwrap();
    assert!(!r.modified);
    // Empty document is a replacement.
    let r = apply(&doc! {"_id": 1, "a": 1}, bson!({})).unwrap();
    assert_eq!(r.doc, doc! {"_id": 1});
    let e = apply(&doc! {"_id": 1}, bson!({"_id": 2})).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            66,
            "After applying the update, the (immutable) field '_id' was found to have been altered to _id: 2"
        )
    );
    assert_eq!(
        validate_replacement(&doc! {"_id": [1]}).unwrap_err().code,
        53
    );
    assert!(validate_replacement(&doc! {"a": {"$b": 1}}).is_ok());
}

#[test]
fn upsert_seeds() {
    let seed = upsert_seed(&[
        ("a.b".into(), bson!(1)),
        ("_id".into(), bson!(5)),
        ("c".into(), bson!([1])),
    ])
    .unwrap();
    assert_eq!(seed, doc! {"_id": 5, "a": {"b": 1}, "c": [1]});
    let seed = upsert_seed(&[("a.b".into(), bson!(1)), ("a.c".into(), bson!(2))]).unwrap();
    assert_eq!(seed, doc! {"a": {"b": 1, "c": 2}});
    let e = upsert_seed(&[("a".into(), bson!(1)), ("a".into(), bson!(1))]).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            54,
            "cannot infer query fields to set, path 'a' is matched twice"
        )
    );
    let e = upsert_seed(&[("a".into(), bson!(1)), ("a.b".into(), bson!(1))]).unwrap_err();
    assert_eq!(e.code, 54);
    // An upsert applies $setOnInsert and may not change a seeded _id.
    let c = UpdateCtx {
        is_upsert_insert: true,
        ..ctx()
    };
    let r = apply_full(
        &doc! {"_id": 5},
        bson!({"$setOnInsert": {"x": 1}}),
        None,
        &c,
    )
    .unwrap();
    assert_eq!(r.doc, doc! {"_id": 5, "x": 1});
    assert_eq!(
        apply_full(&doc! {"_id": 5}, bson!({"$set": {"_id": 6}}), None, &c)
            .unwrap_err()
            .code,
        66
    );
    let r = apply_full(&doc! {"a": 1}, bson!({"$set": {"_id": 6}}), None, &c).unwrap();
    assert_eq!(r.doc, doc! {"_id": 6, "a": 1});
}

#[test]
fn disambiguated_paths() {
    // (pre, update, expected disambiguatedPaths)
    let cases: Vec<(Document, Bson, Document)> = vec![
        (
            doc! {"_id": 1, "a": {"1": 1}},
            bson!({"$set": {"a.1": 2}}),
            doc! {"a.1": ["a", "1"]},
        ),
        (
            doc! {"_id": 1, "a": [{"1": 1}]},
            bson!({"$set": {"a.0.1": 2}}),
            doc! {"a.0.1": ["a", 0, "1"]},
        ),
        (
            doc! {"_id": 1, "a": [1, 2]},
            bson!({"$set": {"a.1": 3}}),
            doc! {},
        ),
        (
            doc! {"_id": 1, "arrayWithNumericField": [[{"0": "numeric"}]]},
            bson!({"$set": {"arrayWithNumericField.0.0.1": {"b.c": 1}}}),
            doc! {"arrayWithNumericField.0.0.1": ["arrayWithNumericField", 0, 0, "1"]},
        ),
        (
            doc! {"_id": 1, "objectWithNumericField": {"0": {"1": "numeric"}}},
            bson!({"$set": {"objectWithNumericField.0.1": "updated"}}),
            doc! {"objectWithNumericField.0.1": ["objectWithNumericField", "0", "1"]},
        ),
        // A top-level numeric name and a leading-zero name are not ambiguous.
        (
            doc! {"_id": 1, "5": 1, "a": {"01": 1}},
            bson!({"$set": {"5": 2, "a.01": 2}}),
            doc! {},
        ),
    ];
    for (pre, u, dp) in cases {
        let d = apply(&pre, u.clone()).unwrap().delta.unwrap();
        assert_eq!(d.disambiguated_paths, dp, "{u}");
        let desc = d.to_update_description(true);
        assert_eq!(desc.get_document("disambiguatedPaths").unwrap(), &dp);
        assert!(
            !d.to_update_description(false)
                .contains_key("disambiguatedPaths")
        );
    }
    // Example 16: only array indices -> {}; u entries before i entries.
    let pre = doc! {"_id": 1, "arrayForReplacement": [0, 1, 2, 3], "topLevelArray": [{"subArray": [0, [0, [{"bottomArray": [1, 2, 9]}]]]}]};
    let d = apply(&pre, bson!({"$set": {"a": 2, "topLevelArray.0.subArray.1.1.0.bottomArray.2": 3, "arrayForReplacement": [0]}}))
        .unwrap()
        .delta
        .unwrap();
    assert_eq!(
        d.updated_fields,
        doc! {"arrayForReplacement": [0], "a": 2, "topLevelArray.0.subArray.1.1.0.bottomArray.2": 3}
    );
    assert!(d.disambiguated_paths.is_empty());
}

#[test]
fn update_description_shape_and_round_trip() {
    let d = UpdateDelta {
        updated_fields: doc! {"a.b": 1, "x": [1]},
        removed_fields: vec!["c".into()],
        truncated_arrays: vec![("arr".into(), 2)],
        disambiguated_paths: doc! {"a.b": ["a.b"]},
    };
    assert_eq!(
        d.to_update_description(false),
        doc! {"updatedFields": {"a.b": 1, "x": [1]}, "removedFields": ["c"], "truncatedArrays": [{"field": "arr", "newSize": 2}]}
    );
    let desc = d.to_update_description(true);
    let keys: Vec<&String> = desc.keys().collect();
    assert_eq!(
        keys,
        [
            "updatedFields",
            "removedFields",
            "truncatedArrays",
            "disambiguatedPaths"
        ]
    );
    assert_eq!(UpdateDelta::from_document(&d.to_document()).unwrap(), d);
    assert_eq!(
        UpdateDelta::from_document(&UpdateDelta::default().to_document()).unwrap(),
        UpdateDelta::default()
    );
    assert!(UpdateDelta::from_document(&doc! {"updatedFields": 1}).is_err());
    assert!(UpdateDelta::default().is_empty());
}

/// Expected (updatedFields, removedFields, truncatedArrays) of a pipeline diff.
type Expected = (Document, Vec<&'static str>, Vec<(&'static str, i32)>);

fn pad() -> String {
    "p".repeat(100)
}

#[test]
fn pipeline_diffs() {
    // (pre, post, expected delta or None for a replacement)
    let s40 = "q".repeat(40);
    let cases: Vec<(Document, Document, Option<Expected>)> = vec![
        // Example 20: small document -> replacement.
        (
            doc! {"_id": 1, "a": 1, "b": 2},
            doc! {"_id": 1, "a": 2, "b": 2},
            None,
        ),
        // Example 21.
        (
            doc! {"_id": 1, "arr": [1, 2, 3]},
            doc! {"_id": 1, "arr": [1, 2]},
            None,
        ),
        (
            doc! {"_id": 1, "arr": [1, 2, 3], "s": pad()},
            doc! {"_id": 1, "arr": [1, 2], "s": pad()},
            Some((doc! {}, vec![], vec![("arr", 2)])),
        ),
        // Example 22.
        (
            doc! {"_id": 1, "s": pad(), "arr": [1, 2, s40.clone(), 4]},
            doc! {"_id": 1, "s": pad(), "arr": [9, 2, s40.clone()]},
            Some((doc! {"arr.0": 9}, vec![], vec![("arr", 3)])),
        ),
        // Example 23: array diff not worth it -> whole array.
        (
            doc! {"_id": 1, "s": pad(), "arr": [1, 2, 3]},
            doc! {"_id": 1, "s": pad(), "arr": [9, 2]},
            Some((doc! {"arr": [9, 2]}, vec![], vec![])),
        ),
        // Example 24.
        (
            doc! {"_id": 1, "s": pad(), "obj": {"x": 1, "y": 1}},
            doc! {"_id": 1, "s": pad(), "obj": {"x": 2, "y": 1}},
            Some((doc! {"obj": {"x": 2, "y": 1}}, vec![], vec![])),
        ),
        (
            doc! {"_id": 1, "s": pad(), "obj": {"x": 1, "y": pad()}},
            doc! {"_id": 1, "s": pad(), "obj": {"x": 2, "y": pad()}},
            Some((doc! {"obj.x": 2}, vec![], vec![])),
        ),
        // Example 25: a moved field is reported as inserted.
        (
            doc! {"_id": 1, "s": pad(), "a": 1, "b": 2},
            doc! {"_id": 1, "s": pad(), "b": 2, "a": 1},
            Some((doc! {"a": 1}, vec![], vec![])),
        ),
        // Example 26: type change -> whole value.
        (
            doc! {"_id": 1, "s": pad(), "v": {"x": 1}},
            doc! {"_id": 1, "s": pad(), "v": [1]},
            Some((doc! {"v": [1]}, vec![], vec![])),
        ),
        // Removal and insertion.
        (
            doc! {"_id": 1, "s": pad(), "b": 1, "a": 1},
            doc! {"_id": 1, "s": pad(), "c": 3},
            Some((doc! {"c": 3}, vec!["a", "b"], vec![])),
        ),
    ];
    for (pre, post, want) in cases {
        let got = pipeline_delta(&pre, &post);
        match want {
            None => assert!(
                got.is_none(),
                "{pre} -> {post}: expected a replacement, got {got:?}"
            ),
            Some((uf, rf, ta)) => {
                let got = got.unwrap_or_else(|| panic!("{pre} -> {post}: expected a delta"));
                assert_eq!(got.updated_fields, uf, "{pre} -> {post}");
                assert_eq!(got.removed_fields, rf, "{pre} -> {post}");
                let ta: Vec<(String, i32)> =
                    ta.into_iter().map(|(f, n)| (f.to_string(), n)).collect();
                assert_eq!(got.truncated_arrays, ta, "{pre} -> {post}");
            }
        }
    }
    // diff() reports the delta even where a replacement would be logged.
    let d = diff(
        &doc! {"_id": 1, "a": 1, "b": 2},
        &doc! {"_id": 1, "a": 2, "b": 2},
    );
    assert_eq!(d.updated_fields, doc! {"a": 2});
    assert!(diff(&doc! {"a": 1}, &doc! {"a": 1}).is_empty());
}

#[test]
fn pipeline_diff_dotted_names() {
    // Example 27: dotted and nested names, truncation inside nested arrays.
    let l = "L".repeat(200);
    let pre = doc! {"_id": 1, "obj": {"sub.obj": {"d.o.t.t.e.d.a.r.r.a.y..": [[{"a": {"b.c": 1, "field": l.clone()}}, "truncated"]]}}};
    let post = doc! {"_id": 1, "obj": {"sub.obj": {"d.o.t.t.e.d.a.r.r.a.y..": [[{"a": {"b.c": 2, "field": l.clone()}}]]}}};
    let d = pipeline_delta(&pre, &post).unwrap();
    assert_eq!(
        d.updated_fields,
        doc! {"obj.sub.obj.d.o.t.t.e.d.a.r.r.a.y...0.0.a.b.c": 2}
    );
    assert_eq!(
        d.truncated_arrays,
        vec![("obj.sub.obj.d.o.t.t.e.d.a.r.r.a.y...0".to_string(), 1)]
    );
    assert_eq!(
        d.disambiguated_paths,
        doc! {
            "obj.sub.obj.d.o.t.t.e.d.a.r.r.a.y...0": ["obj", "sub.obj", "d.o.t.t.e.d.a.r.r.a.y..", 0],
            "obj.sub.obj.d.o.t.t.e.d.a.r.r.a.y...0.0.a.b.c": ["obj", "sub.obj", "d.o.t.t.e.d.a.r.r.a.y..", 0, 0, "a", "b.c"],
        }
    );
}

#[test]
fn delta_ordering_and_mixed_operators() {
    check(vec![
        // u entries precede i entries whatever their names; nested levels come last.
        (
            doc! {"_id": 1, "b": 0, "o": {"x": 1}},
            bson!({"$set": {"a": 1, "b": 1, "o.y": 2}}),
            doc! {"_id": 1, "b": 1, "o": {"x": 1, "y": 2}, "a": 1},
            doc! {"b": 1, "a": 1, "o.y": 2},
            vec![],
        ),
        // Removals are listed after updates; several operators in one update.
        (
            doc! {"_id": 1, "a": 1, "arr": [1], "c": {"d": 1, "e": 2}},
            bson!({"$unset": {"c.d": 1}, "$push": {"arr": 2}, "$inc": {"a": 1}}),
            doc! {"_id": 1, "a": 2, "arr": [1, 2], "c": {"e": 2}},
            doc! {"a": 2, "arr.1": 2},
            vec!["c.d"],
        ),
        // A field whose value becomes a document with the same name inside.
        (
            doc! {"_id": 1, "a": {"b": {"c": 1}}},
            bson!({"$set": {"a.b.d": 2}}),
            doc! {"_id": 1, "a": {"b": {"c": 1, "d": 2}}},
            doc! {"a.b.d": 2},
            vec![],
        ),
        // Creating through an existing document nested in an array.
        (
            doc! {"_id": 1, "a": [{"b": 1}]},
            bson!({"$set": {"a.0.c.d": 1}}),
            doc! {"_id": 1, "a": [{"b": 1, "c": {"d": 1}}]},
            doc! {"a.0.c": {"d": 1}},
            vec![],
        ),
        // Unset of a whole subdocument.
        (
            doc! {"_id": 1, "a": {"b": {"c": 1}}},
            bson!({"$unset": {"a.b": true}}),
            doc! {"_id": 1, "a": {}},
            doc! {},
            vec!["a.b"],
        ),
        // Sets of several elements of one array are reported per element.
        (
            doc! {"_id": 1, "arr": [0, 0, 0]},
            bson!({"$set": {"arr.2": 2, "arr.0": 1}}),
            doc! {"_id": 1, "arr": [1, 0, 2]},
            doc! {"arr.0": 1, "arr.2": 2},
            vec![],
        ),
        // _id stays first when created by the update.
        (
            doc! {"a": 1},
            bson!({"$set": {"b": 1}}),
            doc! {"a": 1, "b": 1},
            doc! {"b": 1},
            vec![],
        ),
        // Type mixing: a string replaced by a document, a document by a number.
        (
            doc! {"_id": 1, "a": "x", "b": {"c": 1}},
            bson!({"$set": {"a": {"y": 1}, "b": 2}}),
            doc! {"_id": 1, "a": {"y": 1}, "b": 2},
            doc! {"a": {"y": 1}, "b": 2},
            vec![],
        ),
    ]);
}

#[test]
fn id_first_after_operator_update() {
    let c = UpdateCtx {
        is_upsert_insert: true,
        ..ctx()
    };
    let r = apply_full(
        &doc! {"a": 1},
        bson!({"$set": {"_id": 3, "z": 1}}),
        None,
        &c,
    )
    .unwrap();
    let keys: Vec<&String> = r.doc.keys().collect();
    assert_eq!(keys, ["_id", "a", "z"]);
}

#[test]
fn delta_log_of_reference_examples_is_consistent_with_diff() {
    // Operator deltas and pipeline diffs agree on simple changes (with room to diff).
    let pre = doc! {"_id": 1, "s": pad(), "a": {"b": pad(), "c": 1}};
    let op = apply(&pre, bson!({"$set": {"a.c": 2}})).unwrap();
    let pd = pipeline_delta(&pre, &op.doc).unwrap();
    assert_eq!(op.delta.unwrap(), pd);
}

#[test]
fn no_panics_on_odd_inputs() {
    let docs = [
        doc! {},
        doc! {"_id": 1, "a": [[[]]], "b": {"": 1}, "c": null, "d": f64::NAN},
        doc! {"_id": {"x": [1]}, "a": [{"0": [1]}]},
    ];
    let updates = [
        bson!({"$set": {"a.0.0.0": 1}}),
        bson!({"$unset": {"a.0.0.0.x": 1}}),
        bson!({"$inc": {"d": 1}}),
        bson!({"$push": {"a.0": 1}}),
        bson!({"$pull": {"a": {"$size": 1}}}),
        bson!({"$rename": {"b": "c.x"}}),
        bson!({"$set": {"a.$[].x": 1}}),
        bson!({"$addToSet": {"c": 1}}),
        bson!({"$pop": {"a": 1}}),
        bson!({"$max": {"a.0": 1}}),
        bson!({"$set": {"a.99999": 1}}),
    ];
    for d in &docs {
        for u in &updates {
            let _ = apply(d, u.clone());
        }
    }
}

#[test]
fn array_padding_limit() {
    let e = apply(
        &doc! {"_id": 1, "a": []},
        bson!({"$set": {"a.99999999999": 1}}),
    )
    .unwrap_err();
    assert_eq!(e.message, "can't backfill more than 1500000 elements");
}

/// Expected (updatedFields, removedFields).
type UfRf = (Document, Vec<&'static str>);

#[test]
fn pipeline_updates() {
    let pre = doc! {"_id": 1, "a": 1, "b": 2, "s": pad()};
    // (pipeline, post-image, updatedFields, removedFields; None delta = replace event)
    let cases: Vec<(Bson, Document, Option<UfRf>)> = vec![
        (
            bson!([{"$set": {"a": 2}}]),
            doc! {"_id": 1, "a": 2, "b": 2, "s": pad()},
            Some((doc! {"a": 2}, vec![])),
        ),
        (
            bson!([{"$addFields": {"c": {"$add": ["$a", "$b"]}}}]),
            doc! {"_id": 1, "a": 1, "b": 2, "s": pad(), "c": 3},
            Some((doc! {"c": 3}, vec![])),
        ),
        (
            bson!([{"$unset": ["a"]}]),
            doc! {"_id": 1, "b": 2, "s": pad()},
            Some((doc! {}, vec!["a"])),
        ),
        (
            bson!([{"$project": {"s": 1}}]),
            doc! {"_id": 1, "s": pad()},
            Some((doc! {}, vec!["a", "b"])),
        ),
        // _id dropped by the pipeline is restored, first; moved fields are re-inserted.
        (
            bson!([{"$replaceWith": {"s": "$s", "a": 1, "b": 2}}]),
            doc! {"_id": 1, "s": pad(), "a": 1, "b": 2},
            Some((doc! {"a": 1, "b": 2}, vec![])),
        ),
        (
            bson!([{"$replaceRoot": {"newRoot": {"x": 1}}}]),
            doc! {"_id": 1, "x": 1},
            None,
        ),
        (
            bson!([{"$set": {"_id": 1}}]),
            pre.clone(),
            Some((doc! {}, vec![])),
        ),
        (bson!([]), pre.clone(), Some((doc! {}, vec![]))),
    ];
    for (p, post, want) in cases {
        let u = Update::parse(&p, None).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(u.is_pipeline());
        let r = u
            .apply(&pre, &ctx(), &TestEnv)
            .unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(r.doc, post, "{p}");
        match want {
            None => assert!(r.delta.is_none(), "{p}: expected a replacement"),
            Some((uf, rf)) => {
                let d = r.delta.unwrap_or_else(|| panic!("{p}: expected a delta"));
                assert_eq!(d.updated_fields, uf, "{p}");
                let rf: Vec<String> = rf.into_iter().map(String::from).collect();
                assert_eq!(d.removed_fields, rf, "{p}");
                assert_eq!(r.modified, !d.is_empty(), "{p}");
            }
        }
    }
    // Example 20: a small document is logged as a replacement.
    let r = apply(
        &doc! {"_id": 1, "a": 1, "b": 2},
        bson!([{"$set": {"a": 2}}]),
    )
    .unwrap();
    assert!(r.modified && r.delta.is_none());
    // $$NOW comes from the environment.
    let r = apply(
        &doc! {"_id": 1, "s": pad()},
        bson!([{"$set": {"t": "$$NOW"}}]),
    )
    .unwrap();
    assert_eq!(
        r.doc.get_datetime("t").unwrap(),
        &bson::DateTime::from_millis(1_000)
    );
}

#[test]
fn pipeline_errors() {
    let cases: Vec<(Bson, i32, &str)> = vec![
        (
            bson!([{"$group": {"_id": null}}]),
            72,
            "$group is not allowed to be used within an update",
        ),
        (
            bson!([{"$match": {}}]),
            72,
            "$match is not allowed to be used within an update",
        ),
        (
            bson!([1]),
            14,
            "Each element of the 'pipeline' array must be an object",
        ),
    ];
    for (u, code, msg) in cases {
        let e = Update::parse(&u, None).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (code, msg), "{u}");
    }
    assert_eq!(
        Update::parse(&bson!([{"$foo": 1}]), None).unwrap_err().code,
        40324
    );
    let e = apply(&doc! {"_id": 1}, bson!([{"$set": {"_id": 2}}])).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            66,
            "After applying the update, the (immutable) field '_id' was found to have been altered to _id: 2"
        )
    );
}

#[test]
fn update_is_send_sync_clone_debug() {
    fn check<T: Send + Sync + Clone + std::fmt::Debug>() {}
    check::<Update>();
    check::<UpdateDelta>();
    check::<UpdateResult>();
}

#[test]
fn signed_zero_and_nested_dollar_fields() {
    // -0.0 and 0.0 are equal values but not identical: the write is a change.
    let r = apply(&doc! {"_id": 1, "a": 0.0}, bson!({"$set": {"a": -0.0}})).unwrap();
    assert!(r.modified);
    assert!(r.doc.get_f64("a").unwrap().is_sign_negative());
    let r = apply(&doc! {"_id": 1, "a": 0.0}, bson!({"$set": {"a": 0.0}})).unwrap();
    assert!(!r.modified);
    // Nested `$`-prefixed names are allowed since 5.0; top-level ones are not.
    let r = apply(&doc! {"_id": 1}, bson!({"$set": {"a.$x": 1}})).unwrap();
    assert_eq!(r.doc, doc! {"_id": 1, "a": {"$x": 1}});
    let e = Update::parse(&bson!({"$set": {"$x.y": 1}}), None).unwrap_err();
    assert_eq!(e.code, 52);
}

#[test]
fn pipeline_diff_delete_order() {
    // Old fields left over at the end are deleted in document order, before the tentative
    // deletes (name order).
    let pre = doc! {"_id": 1, "s": pad(), "z": 1, "k": 1, "y": 2, "b": 3};
    let post = doc! {"_id": 1, "s": pad(), "k": 1};
    let d = pipeline_delta(&pre, &post).unwrap();
    assert_eq!(d.removed_fields, ["y", "b", "z"]);
}

#[test]
fn upsert_id_type_is_validated() {
    let c = UpdateCtx {
        is_upsert_insert: true,
        ..ctx()
    };
    let e = apply_full(&doc! {"a": 1}, bson!({"$set": {"_id": [1]}}), None, &c).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (53, "The '_id' value cannot be of type array")
    );
}

#[test]
fn bound_variables_reach_pipeline_updates() {
    let u = Update::parse(&bson!([{"$set": {"x": "$$x"}}]), None).unwrap();
    assert_eq!(
        u.apply(&doc! {"_id": 1}, &ctx(), &TestEnv)
            .unwrap_err()
            .code,
        17276
    );
    let vars = crate::expr::Vars::default().with("x", Bson::String("foo".into()));
    let r = u
        .bind(&vars)
        .apply(&doc! {"_id": 1}, &ctx(), &TestEnv)
        .unwrap();
    assert_eq!(r.doc, doc! {"_id": 1, "x": "foo"});
    assert!(r.modified);
}
