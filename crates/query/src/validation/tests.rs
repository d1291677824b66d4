//! Table-driven cases: validator, document, expected `details`. The vectors come from
//! MongoDB's own tests of the generator (`doc_validation_error_test.cpp`,
//! `doc_validation_error_json_schema_test.cpp`) and its manual's schema-validation pages.

use bson::{Document, doc};

use super::Validator;

fn details(validator: Document, d: Document) -> Document {
    let v = Validator::parse(&validator).unwrap();
    assert!(!v.matches(&d), "{d} should fail {validator}");
    v.details(&d)
}

fn check(validator: Document, d: Document, want: Document) {
    let got = details(validator.clone(), d.clone());
    assert_eq!(got, want, "validator {validator} on {d}");
}

#[test]
fn query_operator_leaves() {
    check(
        doc! {"a": {"$eq": 2}},
        doc! {"a": 1, "_id": 10},
        doc! {"operatorName": "$eq", "specifiedAs": {"a": {"$eq": 2}}, "reason": "comparison failed", "consideredValue": 1},
    );
    check(
        doc! {"a": {"$eq": 2}},
        doc! {"b": 1},
        doc! {"operatorName": "$eq", "specifiedAs": {"a": {"$eq": 2}}, "reason": "field was missing"},
    );
    check(
        doc! {"a": {"$eq": 2}},
        doc! {"a": [3, 4, 5]},
        doc! {"operatorName": "$eq", "specifiedAs": {"a": {"$eq": 2}}, "reason": "comparison failed", "consideredValues": [3, 4, 5]},
    );
    check(
        doc! {"a": 1},
        doc! {"a": 2},
        doc! {"operatorName": "$eq", "specifiedAs": {"a": 1}, "reason": "comparison failed", "consideredValue": 2},
    );
    check(
        doc! {"a": {"$exists": true}},
        doc! {"b": 1},
        doc! {"operatorName": "$exists", "specifiedAs": {"a": {"$exists": true}}, "reason": "path does not exist"},
    );
    check(
        doc! {"a": {"$type": "int"}},
        doc! {"a": "one"},
        doc! {"operatorName": "$type", "specifiedAs": {"a": {"$type": "int"}}, "reason": "type did not match", "consideredValue": "one", "consideredType": "string"},
    );
    check(
        doc! {"a": {"$mod": [2, 1]}},
        doc! {"a": 2},
        doc! {"operatorName": "$mod", "specifiedAs": {"a": {"$mod": [2, 1]}}, "reason": "$mod did not evaluate to expected remainder", "consideredValue": 2},
    );
}

#[test]
fn logical_operators() {
    check(
        doc! {"a": {"$not": {"$lt": 10}}},
        doc! {"a": 9},
        doc! {"operatorName": "$not", "details": {"operatorName": "$lt", "specifiedAs": {"a": {"$lt": 10}}, "reason": "comparison succeeded", "consideredValue": 9}},
    );
    check(
        doc! {"$and": [{"b": {"$gt": 0}}, {"a": {"$lt": 10}}]},
        doc! {"a": 11, "b": 2},
        doc! {"operatorName": "$and", "clausesNotSatisfied": [
            {"index": 1, "details": {"operatorName": "$lt", "specifiedAs": {"a": {"$lt": 10}}, "reason": "comparison failed", "consideredValue": 11}}
        ]},
    );
    check(
        doc! {"$nor": [{"a": {"$gt": 10}}, {"b": {"$lt": 10}}]},
        doc! {"a": 9, "b": 9},
        doc! {"operatorName": "$nor", "clausesSatisfied": [
            {"index": 1, "details": {"operatorName": "$lt", "specifiedAs": {"b": {"$lt": 10}}, "reason": "comparison succeeded", "consideredValue": 9}}
        ]},
    );
    // Several top-level clauses are an implicit $and.
    check(
        doc! {"a": 1, "b": 2},
        doc! {"a": 1, "b": 3},
        doc! {"operatorName": "$and", "clausesNotSatisfied": [
            {"index": 1, "details": {"operatorName": "$eq", "specifiedAs": {"b": 2}, "reason": "comparison failed", "consideredValue": 3}}
        ]},
    );
}

#[test]
fn expr_clauses() {
    check(
        doc! {"$expr": {"$eq": ["$a", "$b"]}},
        doc! {"a": 1, "b": 2},
        doc! {"operatorName": "$expr", "specifiedAs": {"$expr": {"$eq": ["$a", "$b"]}}, "reason": "expression did not match", "expressionResult": false},
    );
    let d = details(doc! {"$expr": {"$divide": [10, 0]}}, doc! {});
    assert_eq!(
        d.get_str("reason").unwrap(),
        "failed to evaluate aggregation expression"
    );
    assert!(d.get_document("details").unwrap().contains_key("errmsg"));
}

#[test]
fn json_schema_keywords() {
    let schema = |s: Document| doc! {"$jsonSchema": s};
    let wrap = |rules: Vec<bson::Bson>| doc! {"operatorName": "$jsonSchema", "schemaRulesNotSatisfied": rules};
    let prop = |name: &str, details: Document| -> bson::Bson {
        bson::Bson::Document(
            doc! {"operatorName": "properties", "propertiesNotSatisfied": [{"propertyName": name, "details": [details]}]},
        )
    };
    check(
        schema(doc! {"properties": {"a": {"minimum": 1}}}),
        doc! {"a": 0},
        wrap(vec![prop(
            "a",
            doc! {"operatorName": "minimum", "specifiedAs": {"minimum": 1}, "reason": "comparison failed", "consideredValue": 0},
        )]),
    );
    check(
        schema(doc! {"properties": {"a": {"minimum": 1, "exclusiveMinimum": true}}}),
        doc! {"a": 1},
        wrap(vec![prop(
            "a",
            doc! {"operatorName": "minimum", "specifiedAs": {"minimum": 1, "exclusiveMinimum": true}, "reason": "comparison failed", "consideredValue": 1},
        )]),
    );
    check(
        schema(doc! {"type": "object", "properties": {"a": {"type": "string", "minimum": 5}}}),
        doc! {"a": 6},
        wrap(vec![prop(
            "a",
            doc! {"operatorName": "type", "specifiedAs": {"type": "string"}, "reason": "type did not match", "consideredValue": 6, "consideredType": "int"},
        )]),
    );
    check(
        schema(doc! {"required": ["a", "b", "c"]}),
        doc! {"c": 1, "d": 2},
        wrap(vec![bson::Bson::Document(
            doc! {"operatorName": "required", "specifiedAs": {"required": ["a", "b", "c"]}, "missingProperties": ["a", "b"]},
        )]),
    );
    check(
        schema(doc! {"properties": {"b": {"type": "number"}}, "additionalProperties": false}),
        doc! {"_id": 0, "a": 1, "b": 2},
        wrap(vec![bson::Bson::Document(
            doc! {"operatorName": "additionalProperties", "specifiedAs": {"additionalProperties": false}, "additionalProperties": ["_id", "a"]},
        )]),
    );
    check(
        schema(
            doc! {"properties": {"a": {"type": "number"}}, "additionalProperties": {"type": "string"}},
        ),
        doc! {"a": 1, "b": "not this one", "c": "not this one either, but the next one", "d": 1},
        wrap(vec![bson::Bson::Document(
            doc! {"operatorName": "additionalProperties", "reason": "at least one additional property did not match the subschema", "failingProperty": "d", "details": [{"operatorName": "type", "specifiedAs": {"type": "string"}, "reason": "type did not match", "consideredValue": 1, "consideredType": "int"}]},
        )]),
    );
    check(
        schema(doc! {"patternProperties": {"^S": {"type": "number"}}}),
        doc! {"Super": 1, "Slow": "67"},
        wrap(vec![bson::Bson::Document(
            doc! {"operatorName": "patternProperties", "details": [{"propertyName": "Slow", "regexMatched": "^S", "details": [{"operatorName": "type", "specifiedAs": {"type": "number"}, "reason": "type did not match", "consideredValue": "67", "consideredType": "string"}]}]},
        )]),
    );
    check(
        schema(doc! {"minProperties": 10}),
        doc! {"_id": 1, "a": 1, "b": 2, "c": 3},
        wrap(vec![bson::Bson::Document(
            doc! {"operatorName": "minProperties", "specifiedAs": {"minProperties": 10}, "reason": "specified number of properties was not satisfied", "numberOfProperties": 4},
        )]),
    );
    check(
        schema(doc! {"properties": {"a": {"type": "array", "minItems": 2}}}),
        doc! {"a": [1]},
        wrap(vec![prop(
            "a",
            doc! {"operatorName": "minItems", "specifiedAs": {"minItems": 2}, "reason": "array did not match specified length", "consideredValue": [1], "numberOfItems": 1},
        )]),
    );
    check(
        schema(doc! {"properties": {"a": {"uniqueItems": true}}}),
        doc! {"a": [1, 2, 3, 3, 4, 4]},
        wrap(vec![prop(
            "a",
            doc! {"operatorName": "uniqueItems", "specifiedAs": {"uniqueItems": true}, "reason": "found a duplicate item", "consideredValue": [1, 2, 3, 3, 4, 4], "duplicatedValue": 3},
        )]),
    );
    check(
        schema(
            doc! {"properties": {"a": {"items": {"type": "string", "description": "elements must be of string type"}}}},
        ),
        doc! {"a": [1, "A", {}]},
        wrap(vec![prop(
            "a",
            doc! {"operatorName": "items", "description": "elements must be of string type", "reason": "At least one item did not match the sub-schema", "itemIndex": 0, "details": [{"operatorName": "type", "specifiedAs": {"type": "string"}, "reason": "type did not match", "consideredValue": 1, "consideredType": "int"}]},
        )]),
    );
    check(
        schema(
            doc! {"properties": {"a": {"items": [{"type": "number"}, {"type": "string"}], "additionalItems": false}}},
        ),
        doc! {"a": [1, "First", "Extra element"]},
        wrap(vec![prop(
            "a",
            doc! {"operatorName": "additionalItems", "specifiedAs": {"additionalItems": false}, "reason": "found additional items", "additionalItems": ["Extra element"]},
        )]),
    );
    check(
        schema(doc! {"properties": {"a": {"oneOf": [{"minimum": 1}, {"maximum": 3}]}}}),
        doc! {"a": 2},
        wrap(vec![prop(
            "a",
            doc! {"operatorName": "oneOf", "reason": "more than one subschema matched", "matchingSchemaIndexes": [0, 1]},
        )]),
    );
    check(
        schema(doc! {"properties": {"a": {"anyOf": [{"type": "string"}, {"maximum": 3}]}}}),
        doc! {"a": 4},
        wrap(vec![prop(
            "a",
            doc! {"operatorName": "anyOf", "schemasNotSatisfied": [
                {"index": 0, "details": [{"operatorName": "type", "specifiedAs": {"type": "string"}, "reason": "type did not match", "consideredValue": 4, "consideredType": "int"}]},
                {"index": 1, "details": [{"operatorName": "maximum", "specifiedAs": {"maximum": 3}, "reason": "comparison failed", "consideredValue": 4}]},
            ]},
        )]),
    );
    check(
        schema(doc! {"not": {"properties": {"a": {"minimum": 3}}}}),
        doc! {"a": 6},
        wrap(vec![bson::Bson::Document(
            doc! {"operatorName": "not", "reason": "child expression matched"},
        )]),
    );
    check(
        schema(doc! {"dependencies": {"a": ["b", "c"]}}),
        doc! {"a": 1, "b": 2},
        wrap(vec![bson::Bson::Document(
            doc! {"operatorName": "dependencies", "failingDependencies": [{"conditionalProperty": "a", "missingProperties": ["c"]}]},
        )]),
    );
    // Nested properties list keyword errors in the parser's order: maximum before minimum.
    check(
        schema(doc! {"properties": {"a": {"properties": {"b": {"minimum": 10, "maximum": -10}}}}}),
        doc! {"a": {"b": 5}},
        wrap(vec![prop(
            "a",
            doc! {"operatorName": "properties", "propertiesNotSatisfied": [{"propertyName": "b", "details": [
                {"operatorName": "maximum", "specifiedAs": {"maximum": -10}, "reason": "comparison failed", "consideredValue": 5},
                {"operatorName": "minimum", "specifiedAs": {"minimum": 10}, "reason": "comparison failed", "consideredValue": 5},
            ]}]},
        )]),
    );
}

/// Source: https://www.mongodb.com/docs/v8.0/core/schema-validation/specify-json-schema/
#[test]
fn manual_students_example() {
    let validator = doc! {"$jsonSchema": {
        "bsonType": "object",
        "title": "Student Object Validation",
        "required": ["address", "major", "name", "year"],
        "properties": {
            "name": {"bsonType": "string", "description": "'name' must be a string and is required"},
            "year": {"bsonType": "int", "minimum": 2017, "maximum": 3017, "description": "'year' must be an integer in [ 2017, 3017 ] and is required"},
            "gpa": {"bsonType": ["double"], "description": "'gpa' must be a double if the field exists"},
        },
    }};
    let d = doc! {"name": "Alice", "year": 2019, "major": "History", "gpa": 3, "address": {"city": "NYC", "street": "33rd Street"}};
    check(
        validator.clone(),
        d,
        doc! {
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
    );
    let v = Validator::parse(&validator).unwrap();
    assert!(v.matches(&doc! {"name": "Alice", "year": 2019, "major": "History", "gpa": 3.0, "address": {"city": "NYC", "street": "33rd Street"}}));
}

#[test]
fn refused_operators() {
    for (v, code) in [
        (doc! {"$where": "this.a == this.b"}, 2),
        (doc! {"$text": {"$search": "bob"}}, 2),
        (doc! {"loc": {"$near": [0, 0]}}, 5626500),
        (
            doc! {"$expr": {"$function": {"body": "x", "args": [], "lang": "js"}}},
            4660800,
        ),
        (doc! {"$jsonSchema": {"invalid": 1}}, 9),
    ] {
        let e = Validator::parse(&v).unwrap_err();
        assert_eq!(e.code, code, "{v}: {}", e.message);
        assert!(
            e.message
                .starts_with("Parsing of collection validator failed :: caused by :: "),
            "{}",
            e.message
        );
    }
}
