use super::*;
use bson::{Bson, DateTime, bson, doc};
use std::str::FromStr;

fn ev(e: Bson, d: &Document) -> Result<Option<Bson>> {
    Expr::parse(&e)?.eval(d, &Vars::default())
}

/// (expression, expected result; `None` = missing)
fn table(d: &Document, cases: &[(Bson, Option<Bson>)]) {
    for (e, want) in cases {
        let got = ev(e.clone(), d).unwrap_or_else(|err| panic!("{e}: {err}"));
        if let (Some(Bson::Double(g)), Some(Bson::Double(w))) = (&got, want) {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{e}: {g} vs {w}"
            );
        } else {
            assert_eq!(&got, want, "{e}");
        }
    }
}

/// (expression, expected error code)
fn errors(d: &Document, cases: &[(Bson, i32)]) {
    for (e, code) in cases {
        match ev(e.clone(), d) {
            Err(err) => assert_eq!(err.code, *code, "{e}: {err}"),
            Ok(v) => panic!("{e}: expected error {code}, got {v:?}"),
        }
    }
}

fn s(v: &str) -> Option<Bson> {
    Some(Bson::String(v.into()))
}

fn dec(v: &str) -> Bson {
    Bson::Decimal128(bson::Decimal128::from_str(v).unwrap())
}

#[test]
fn paths_vars_literals() {
    let d = doc! {"a": {"b": 1}, "arr": [{"x": 1}, {"y": 2}, {"x": [3]}, 5, [{"x": 4}]], "n": null};
    table(
        &d,
        &[
            (bson!("$a.b"), Some(bson!(1))),
            (bson!("$a.c"), None),
            (bson!("$nope"), None),
            (bson!("$n"), Some(Bson::Null)),
            (bson!("$arr.x"), Some(bson!([1, [3], [4]]))),
            (bson!("$$ROOT.a.b"), Some(bson!(1))),
            (bson!("$$CURRENT.a"), Some(bson!({"b": 1}))),
            (bson!("$$REMOVE"), None),
            (bson!({"$literal": "$a"}), s("$a")),
            (bson!({"x": "$a.b", "y": "$missing"}), Some(bson!({"x": 1}))),
            (bson!(["$a.b", "$missing"]), Some(bson!([1, null]))),
            (
                bson!({"$let": {"vars": {"v": 5}, "in": {"$add": ["$$v", 1]}}}),
                Some(bson!(6)),
            ),
            (bson!("plain"), s("plain")),
        ],
    );
    errors(
        &d,
        &[
            (bson!("$$undefinedVar"), 17276),
            (bson!({"$foo": 1}), 168),
            (bson!({"$add": 1, "$sub": 2}), 15983),
            (bson!("$"), 16872),
            (bson!({"a": 1, "$b": 1}), 16410),
            (bson!({"a": {"$x": 1}}), 168),
            (bson!({"$size": [1, 2]}), 16020),
        ],
    );
}

#[test]
fn arithmetic() {
    let d =
        doc! {"i": 5, "l": 5i64, "f": 2.5, "n": null, "s": "x", "dt": DateTime::from_millis(1000)};
    table(
        &d,
        &[
            (bson!({"$add": [1, 2]}), Some(bson!(3))),
            (bson!({"$add": [1, 2i64]}), Some(bson!(3i64))),
            (bson!({"$add": [1, 2.5]}), Some(bson!(3.5))),
            (bson!({"$add": [i32::MAX, 1]}), Some(bson!(2147483648i64))),
            (
                bson!({"$add": [i64::MAX, 1i64]}),
                Some(Bson::Double(9.223_372_036_854_776e18)),
            ),
            (bson!({"$add": [1, "$n"]}), Some(Bson::Null)),
            (bson!({"$add": [1, "$missing"]}), Some(Bson::Null)),
            (
                bson!({"$add": ["$dt", 500]}),
                Some(Bson::DateTime(DateTime::from_millis(1500))),
            ),
            (
                bson!({"$add": ["$dt", 1.6]}),
                Some(Bson::DateTime(DateTime::from_millis(1002))),
            ),
            (bson!({"$add": []}), Some(bson!(0))),
            (bson!({"$add": [dec("0.1"), dec("0.2")]}), Some(dec("0.3"))),
            (bson!({"$subtract": [5, 7]}), Some(bson!(-2))),
            (bson!({"$subtract": ["$dt", "$dt"]}), Some(bson!(0i64))),
            (
                bson!({"$subtract": ["$dt", 1000]}),
                Some(Bson::DateTime(DateTime::from_millis(0))),
            ),
            (bson!({"$multiply": [2, 3, 2.0]}), Some(bson!(12.0))),
            (
                bson!({"$multiply": [65536, 65536]}),
                Some(bson!(4294967296i64)),
            ),
            (bson!({"$divide": [6, 3]}), Some(bson!(2.0))),
            (bson!({"$divide": [1, dec("4")]}), Some(dec("0.25"))),
            (bson!({"$mod": [7, 3]}), Some(bson!(1))),
            (bson!({"$mod": [-7, 3]}), Some(bson!(-1))),
            (bson!({"$mod": [7.5, 2]}), Some(bson!(1.5))),
            (bson!({"$mod": [7i64, 3]}), Some(bson!(1i64))),
            (bson!({"$abs": -5}), Some(bson!(5))),
            (bson!({"$abs": i32::MIN}), Some(bson!(2147483648i64))),
            (bson!({"$abs": -0.0}), Some(bson!(0.0))),
            (bson!({"$abs": null}), Some(Bson::Null)),
            (bson!({"$ceil": 1.2}), Some(bson!(2.0))),
            (bson!({"$floor": -1.2}), Some(bson!(-2.0))),
            (bson!({"$floor": 3}), Some(bson!(3))),
            (bson!({"$sqrt": 16}), Some(bson!(4.0))),
            (bson!({"$pow": [2, 10]}), Some(bson!(1024))),
            (bson!({"$pow": [2, 40]}), Some(bson!(1099511627776i64))),
            (bson!({"$pow": [2, -1]}), Some(bson!(0.5))),
            (bson!({"$pow": [-1, -3]}), Some(bson!(-1))),
            (bson!({"$pow": [2.0, 2]}), Some(bson!(4.0))),
            (bson!({"$exp": 0}), Some(bson!(1.0))),
            (bson!({"$ln": 1}), Some(bson!(0.0))),
            (bson!({"$log": [100, 10]}), Some(bson!(2.0))),
            (bson!({"$log10": 1000}), Some(bson!(3.0))),
            (bson!({"$round": 2.5}), Some(bson!(2.0))),
            (bson!({"$round": 3.5}), Some(bson!(4.0))),
            (bson!({"$round": [1234.5678, 2]}), Some(bson!(1234.57))),
            (bson!({"$round": [1250, -2]}), Some(bson!(1200))),
            (bson!({"$round": [1350, -2]}), Some(bson!(1400))),
            (bson!({"$round": [-1.5, 0]}), Some(bson!(-2.0))),
            (bson!({"$trunc": [1234.5678, 1]}), Some(bson!(1234.5))),
            (bson!({"$trunc": -2.7}), Some(bson!(-2.0))),
            (bson!({"$trunc": [1299, -2]}), Some(bson!(1200))),
            (bson!({"$sqrt": f64::NAN}), Some(Bson::Double(f64::NAN))),
        ],
    );
    errors(
        &d,
        &[
            (bson!({"$divide": [1, 0]}), 2),
            (bson!({"$mod": [1, 0]}), 16610),
            (bson!({"$add": ["$s", 1]}), 16554),
            (bson!({"$add": ["$dt", "$dt"]}), 16612),
            (bson!({"$subtract": [1, "$dt"]}), 16556),
            (bson!({"$multiply": ["$s"]}), 16555),
            (bson!({"$divide": ["$s", 1]}), 16609),
            (bson!({"$abs": "$s"}), 28765),
            (bson!({"$sqrt": -1}), 28714),
            (bson!({"$ln": 0}), 28766),
            (bson!({"$log10": -1}), 28761),
            (bson!({"$log": [10, 1]}), 28759),
            (bson!({"$pow": [0, -1]}), 28764),
            (bson!({"$round": [1, 101]}), 51083),
        ],
    );
}

#[test]
fn comparison_boolean_conditional() {
    let d = doc! {"a": 1, "n": null, "arr": [1, 2]};
    table(
        &d,
        &[
            (bson!({"$eq": [1, 1.0]}), Some(bson!(true))),
            (bson!({"$eq": ["$missing", null]}), Some(bson!(false))),
            (bson!({"$eq": ["$missing", "$missing2"]}), Some(bson!(true))),
            (bson!({"$lt": ["$missing", null]}), Some(bson!(true))),
            (bson!({"$gt": ["a", 1]}), Some(bson!(true))),
            (bson!({"$gt": [[1, 2], 5]}), Some(bson!(true))),
            (bson!({"$cmp": [1, 2]}), Some(bson!(-1))),
            (bson!({"$cmp": ["b", "a"]}), Some(bson!(1))),
            (bson!({"$ne": [f64::NAN, f64::NAN]}), Some(bson!(false))),
            (bson!({"$lt": [f64::NAN, -1e300]}), Some(bson!(true))),
            (bson!({"$and": [1, "x", []]}), Some(bson!(true))),
            (bson!({"$and": [1, 0]}), Some(bson!(false))),
            (bson!({"$and": []}), Some(bson!(true))),
            (bson!({"$or": [null, "$missing"]}), Some(bson!(false))),
            (bson!({"$not": [0]}), Some(bson!(true))),
            (bson!({"$not": [dec("0")]}), Some(bson!(true))),
            (bson!({"$cond": [true, "y", "n"]}), s("y")),
            (
                bson!({"$cond": {"if": "$missing", "then": "y", "else": "n"}}),
                s("n"),
            ),
            (bson!({"$ifNull": ["$missing", "$n", 5]}), Some(bson!(5))),
            (bson!({"$ifNull": ["$a", 5]}), Some(bson!(1))),
            (bson!({"$ifNull": ["$missing", "$missing"]}), None),
            (
                bson!({"$switch": {"branches": [{"case": false, "then": 1}, {"case": true, "then": 2}]}}),
                Some(bson!(2)),
            ),
            (
                bson!({"$switch": {"branches": [{"case": false, "then": 1}], "default": 3}}),
                Some(bson!(3)),
            ),
        ],
    );
    errors(
        &d,
        &[
            (
                bson!({"$switch": {"branches": [{"case": false, "then": 1}]}}),
                40066,
            ),
            (bson!({"$cond": {"if": 1, "then": 2}}), 17080),
            (bson!({"$eq": [1]}), 16020),
        ],
    );
}

#[test]
fn strings() {
    let d = doc! {"s": "héllo", "n": null, "i": 5};
    table(
        &d,
        &[
            (bson!({"$concat": ["a", "b"]}), s("ab")),
            (bson!({"$concat": ["a", "$n"]}), Some(Bson::Null)),
            (bson!({"$concat": ["a", "$missing"]}), Some(Bson::Null)),
            (bson!({"$substr": ["abcdef", 1, 3]}), s("bcd")),
            (bson!({"$substrBytes": ["abc", 1, -1]}), s("bc")),
            (bson!({"$substrBytes": ["abc", 5, 1]}), s("")),
            (bson!({"$substrBytes": ["$n", 0, 1]}), s("")),
            (bson!({"$substrBytes": [12345, 1, 2]}), s("23")),
            (bson!({"$substrCP": ["$s", 1, 2]}), s("él")),
            (bson!({"$toUpper": "$s"}), s("HéLLO")),
            (bson!({"$toLower": "ABC"}), s("abc")),
            (bson!({"$toLower": "$n"}), s("")),
            (bson!({"$toLower": 1.5}), s("1.5")),
            (bson!({"$strLenBytes": "$s"}), Some(bson!(6))),
            (bson!({"$strLenCP": "$s"}), Some(bson!(5))),
            (
                bson!({"$split": ["a,b,,c", ","]}),
                Some(bson!(["a", "b", "", "c"])),
            ),
            (bson!({"$split": ["$n", ","]}), Some(Bson::Null)),
            (bson!({"$trim": {"input": "  a b \n"}}), s("a b")),
            (
                bson!({"$ltrim": {"input": "xxaxx", "chars": "x"}}),
                s("axx"),
            ),
            (
                bson!({"$rtrim": {"input": "xxaxx", "chars": "x"}}),
                s("xxa"),
            ),
            (bson!({"$trim": {"input": null}}), Some(Bson::Null)),
            (bson!({"$indexOfBytes": ["abcabc", "c"]}), Some(bson!(2))),
            (bson!({"$indexOfBytes": ["abcabc", "c", 3]}), Some(bson!(5))),
            (bson!({"$indexOfBytes": ["abcabc", "z"]}), Some(bson!(-1))),
            (bson!({"$indexOfBytes": ["abc", "", 3]}), Some(bson!(3))),
            (bson!({"$indexOfBytes": ["abc", "a", 5]}), Some(bson!(-1))),
            (bson!({"$indexOfBytes": ["$n", "a"]}), Some(Bson::Null)),
            (bson!({"$indexOfCP": ["$s", "l"]}), Some(bson!(2))),
            (bson!({"$strcasecmp": ["ABC", "abc"]}), Some(bson!(0))),
            (bson!({"$strcasecmp": ["a", "B"]}), Some(bson!(-1))),
            (
                bson!({"$regexMatch": {"input": "abc", "regex": "B", "options": "i"}}),
                Some(bson!(true)),
            ),
            (
                bson!({"$regexMatch": {"input": "$n", "regex": "B"}}),
                Some(bson!(false)),
            ),
            (
                bson!({"$regexFind": {"input": "xaby", "regex": "(a)(z)?b"}}),
                Some(bson!({"match": "ab", "idx": 1, "captures": ["a", null]})),
            ),
            (
                bson!({"$regexFind": {"input": "xyz", "regex": "a"}}),
                Some(Bson::Null),
            ),
            (
                bson!({"$regexFindAll": {"input": "a1b22", "regex": "\\d+"}}),
                Some(
                    bson!([{"match": "1", "idx": 1, "captures": []}, {"match": "22", "idx": 3, "captures": []}]),
                ),
            ),
            (
                bson!({"$regexFindAll": {"input": "ab", "regex": ""}}).clone(),
                Some(
                    bson!([{"match": "", "idx": 0, "captures": []}, {"match": "", "idx": 1, "captures": []}, {"match": "", "idx": 2, "captures": []}]),
                ),
            ),
            (
                bson!({"$replaceOne": {"input": "aXbXc", "find": "X", "replacement": "-"}}),
                s("a-bXc"),
            ),
            (
                bson!({"$replaceAll": {"input": "aXbXc", "find": "X", "replacement": "-"}}),
                s("a-b-c"),
            ),
            (
                bson!({"$replaceAll": {"input": "$n", "find": "X", "replacement": "-"}}),
                Some(Bson::Null),
            ),
        ],
    );
    errors(
        &d,
        &[
            (bson!({"$concat": ["a", 1]}), 16702),
            (bson!({"$strLenBytes": 1}), 34473),
            (bson!({"$strLenCP": "$missing"}), 34471),
            (bson!({"$split": ["a", ""]}), 40087),
            (bson!({"$split": [1, ","]}), 40085),
            (bson!({"$substrBytes": ["$s", 2, 1]}), 28656),
            (bson!({"$substrBytes": ["$s", 0, 2]}), 28657),
            (bson!({"$indexOfBytes": [1, "a"]}), 40091),
            (bson!({"$regexMatch": {"input": 1, "regex": "a"}}), 51104),
            (bson!({"$regexMatch": {"input": "a", "regex": "("}}), 51091),
            (
                bson!({"$replaceOne": {"input": 1, "find": "a", "replacement": "b"}}),
                51746,
            ),
            (bson!({"$trim": {"input": 1}}), 50699),
            (bson!({"$trim": {"chars": "a"}}), 40443),
        ],
    );
}

#[test]
fn arrays() {
    let d = doc! {"a": [1, 2, 3], "n": null, "docs": [{"k": 2}, {"k": 1}]};
    table(
        &d,
        &[
            (bson!({"$size": "$a"}), Some(bson!(3))),
            (bson!({"$arrayElemAt": ["$a", 0]}), Some(bson!(1))),
            (bson!({"$arrayElemAt": ["$a", -1]}), Some(bson!(3))),
            (bson!({"$arrayElemAt": ["$a", 5]}), None),
            (bson!({"$arrayElemAt": ["$n", 0]}), Some(Bson::Null)),
            (bson!({"$first": "$a"}), Some(bson!(1))),
            (bson!({"$last": "$a"}), Some(bson!(3))),
            (bson!({"$first": [[]]}), None),
            (bson!({"$first": "$missing"}), None),
            (
                bson!({"$filter": {"input": "$a", "cond": {"$gt": ["$$this", 1]}}}),
                Some(bson!([2, 3])),
            ),
            (
                bson!({"$filter": {"input": "$a", "as": "x", "cond": {"$gt": ["$$x", 1]}, "limit": 1}}),
                Some(bson!([2])),
            ),
            (
                bson!({"$filter": {"input": "$n", "cond": true}}),
                Some(Bson::Null),
            ),
            (
                bson!({"$map": {"input": "$a", "as": "x", "in": {"$multiply": ["$$x", 10]}}}),
                Some(bson!([10, 20, 30])),
            ),
            (
                bson!({"$map": {"input": "$a", "in": "$$REMOVE"}}),
                Some(bson!([null, null, null])),
            ),
            (
                bson!({"$reduce": {"input": "$a", "initialValue": 0, "in": {"$add": ["$$value", "$$this"]}}}),
                Some(bson!(6)),
            ),
            (
                bson!({"$reduce": {"input": [], "initialValue": 7, "in": 0}}),
                Some(bson!(7)),
            ),
            (bson!({"$in": [2, "$a"]}), Some(bson!(true))),
            (bson!({"$in": [2.0, "$a"]}), Some(bson!(true))),
            (bson!({"$in": ["$missing", [null]]}), Some(bson!(false))),
            (
                bson!({"$concatArrays": ["$a", [4], []]}),
                Some(bson!([1, 2, 3, 4])),
            ),
            (bson!({"$concatArrays": ["$a", "$n"]}), Some(Bson::Null)),
            (bson!({"$slice": ["$a", 2]}), Some(bson!([1, 2]))),
            (bson!({"$slice": ["$a", -2]}), Some(bson!([2, 3]))),
            (bson!({"$slice": ["$a", 1, 1]}), Some(bson!([2]))),
            (bson!({"$slice": ["$a", -5, 2]}), Some(bson!([1, 2]))),
            (bson!({"$slice": ["$a", 10, 2]}), Some(bson!([]))),
            (
                bson!({"$zip": {"inputs": ["$a", ["x", "y"]]}}),
                Some(bson!([[1, "x"], [2, "y"]])),
            ),
            (
                bson!({"$zip": {"inputs": ["$a", ["x"]], "useLongestLength": true, "defaults": [0, "d"]}}),
                Some(bson!([[1, "x"], [2, "d"], [3, "d"]])),
            ),
            (bson!({"$range": [0, 5, 2]}), Some(bson!([0, 2, 4]))),
            (bson!({"$range": [5, 0, -2]}), Some(bson!([5, 3, 1]))),
            (bson!({"$range": [0, 0]}), Some(bson!([]))),
            (bson!({"$reverseArray": "$a"}), Some(bson!([3, 2, 1]))),
            (bson!({"$indexOfArray": ["$a", 2]}), Some(bson!(1))),
            (bson!({"$indexOfArray": ["$a", 9]}), Some(bson!(-1))),
            (bson!({"$indexOfArray": ["$a", 1, 1]}), Some(bson!(-1))),
            (bson!({"$isArray": ["$a"]}), Some(bson!(true))),
            (bson!({"$isArray": "$n"}), Some(bson!(false))),
            (
                bson!({"$sortArray": {"input": [3, 1, "a", 2], "sortBy": 1}}),
                Some(bson!([1, 2, 3, "a"])),
            ),
            (
                bson!({"$sortArray": {"input": "$docs", "sortBy": {"k": 1}}}),
                Some(bson!([{"k": 1}, {"k": 2}])),
            ),
            (
                bson!({"$maxN": {"input": [3, null, 1, 5], "n": 2}}),
                Some(bson!([5, 3])),
            ),
            (
                bson!({"$minN": {"input": [3, null, 1, 5], "n": 2}}),
                Some(bson!([1, 3])),
            ),
            (
                bson!({"$firstN": {"input": "$a", "n": 2}}),
                Some(bson!([1, 2])),
            ),
            (
                bson!({"$lastN": {"input": "$a", "n": 5}}),
                Some(bson!([1, 2, 3])),
            ),
        ],
    );
    errors(
        &d,
        &[
            (bson!({"$size": "$n"}), 17124),
            (bson!({"$size": 1}), 17124),
            (bson!({"$arrayElemAt": [1, 0]}), 28689),
            (bson!({"$arrayElemAt": ["$a", 0.5]}), 28691),
            (bson!({"$first": 1}), 28689),
            (bson!({"$filter": {"input": 1, "cond": true}}), 28651),
            (bson!({"$map": {"input": 1, "in": 1}}), 16883),
            (
                bson!({"$reduce": {"input": 1, "initialValue": 0, "in": 1}}),
                40080,
            ),
            (bson!({"$in": [1, "$missing"]}), 40081),
            (bson!({"$concatArrays": [1]}), 28664),
            (bson!({"$range": [0, 1, 0]}), 34449),
            (bson!({"$reverseArray": 1}), 34435),
            (bson!({"$slice": ["$a", 0, 0]}), 28729),
            (
                bson!({"$filter": {"input": "$a", "cond": true, "foo": 1}}),
                40442,
            ),
        ],
    );
}

#[test]
fn sets_and_objects() {
    let d = doc! {"o": {"a": 1, "b": 2}, "n": null};
    table(
        &d,
        &[
            (
                bson!({"$setUnion": [[1, 2], [2, 3, 1.0]]}),
                Some(bson!([1, 2, 3])),
            ),
            (bson!({"$setUnion": [[1], "$n"]}), Some(Bson::Null)),
            (
                bson!({"$setIntersection": [[1, 2, 2], [2, 3]]}),
                Some(bson!([2])),
            ),
            (
                bson!({"$setDifference": [[1, 2, 3], [2]]}),
                Some(bson!([1, 3])),
            ),
            (
                bson!({"$setEquals": [[1, 2], [2, 1, 1]]}),
                Some(bson!(true)),
            ),
            (bson!({"$setIsSubset": [[1], [1, 2]]}), Some(bson!(true))),
            (
                bson!({"$anyElementTrue": [[0, null, 1]]}),
                Some(bson!(true)),
            ),
            (bson!({"$allElementsTrue": [[1, 0]]}), Some(bson!(false))),
            (bson!({"$allElementsTrue": [[]]}), Some(bson!(true))),
            (
                bson!({"$mergeObjects": ["$o", {"b": 3, "c": 4}, null]}),
                Some(bson!({"a": 1, "b": 3, "c": 4})),
            ),
            (bson!({"$mergeObjects": [null]}), Some(bson!({}))),
            (
                bson!({"$objectToArray": "$o"}),
                Some(bson!([{"k": "a", "v": 1}, {"k": "b", "v": 2}])),
            ),
            (
                bson!({"$arrayToObject": [[["a", 1], ["b", 2]]]}),
                Some(bson!({"a": 1, "b": 2})),
            ),
            (
                bson!({"$arrayToObject": [[{"k": "a", "v": 1}, {"k": "a", "v": 2}]]}),
                Some(bson!({"a": 2})),
            ),
            (bson!({"$arrayToObject": "$n"}), Some(Bson::Null)),
            (bson!({"$getField": "a"}), None),
            (
                bson!({"$getField": {"field": "b", "input": "$o"}}),
                Some(bson!(2)),
            ),
            (
                bson!({"$getField": {"field": "a.b", "input": {"$literal": {"a.b": 5}}}}),
                Some(bson!(5)),
            ),
            (
                bson!({"$setField": {"field": "c", "input": "$o", "value": 3}}),
                Some(bson!({"a": 1, "b": 2, "c": 3})),
            ),
            (
                bson!({"$setField": {"field": "a", "input": "$o", "value": "$$REMOVE"}}),
                Some(bson!({"b": 2})),
            ),
            (
                bson!({"$unsetField": {"field": "a", "input": "$o"}}),
                Some(bson!({"b": 2})),
            ),
            (bson!({"$sum": [1, 2.5, "x"]}), Some(bson!(3.5))),
            (bson!({"$sum": [[1, 2]]}), Some(bson!(3))),
            (bson!({"$sum": "$missing"}), Some(bson!(0))),
            (bson!({"$avg": [1, 2, "x"]}), Some(bson!(1.5))),
            (bson!({"$avg": []}), Some(Bson::Null)),
            (bson!({"$max": [1, "a", null]}), s("a")),
            (bson!({"$min": [[3, 1, null]]}), Some(bson!(1))),
            (bson!({"$min": [null]}), Some(Bson::Null)),
            (
                bson!({"$stdDevPop": [[1, 2, 3, 4]]}),
                Some(Bson::Double(1.118033988749895)),
            ),
            (bson!({"$stdDevSamp": [[1]]}), Some(Bson::Null)),
            (bson!({"$binarySize": "abc"}), Some(bson!(3))),
            (bson!({"$bsonSize": {"$literal": {}}}), Some(bson!(5))),
        ],
    );
    errors(
        &d,
        &[
            (bson!({"$setUnion": [[1], 1]}), 17043),
            (bson!({"$setEquals": [[1], "$n"]}), 17044),
            (bson!({"$setIsSubset": [1, [1]]}), 17046),
            (bson!({"$anyElementTrue": ["$missing"]}), 17041),
            (bson!({"$mergeObjects": [1]}), 40400),
            (bson!({"$objectToArray": 1}), 40390),
            (bson!({"$arrayToObject": [[["a"]]]}), 40397),
            (bson!({"$arrayToObject": [[[1, 2]]]}), 40395),
            (bson!({"$getField": {"field": 1, "input": "$o"}}), 3041704),
        ],
    );
    let r = ev(bson!({"$rand": {}}), &d).unwrap();
    assert!(matches!(r, Some(Bson::Double(x)) if (0.0..1.0).contains(&x)));
}

#[test]
fn types_and_conversion() {
    let d = doc! {"n": null, "i": 5};
    table(
        &d,
        &[
            (bson!({"$type": "$i"}), s("int")),
            (bson!({"$type": "$missing"}), s("missing")),
            (bson!({"$type": [[1]]}), s("array")),
            (bson!({"$type": 1i64}), s("long")),
            (bson!({"$isNumber": "$i"}), Some(bson!(true))),
            (bson!({"$isNumber": "5"}), Some(bson!(false))),
            (bson!({"$toString": 5}), s("5")),
            (bson!({"$toString": "$n"}), Some(Bson::Null)),
            (bson!({"$toInt": "12"}), Some(bson!(12))),
            (bson!({"$toLong": 12.9}), Some(bson!(12i64))),
            (bson!({"$toDouble": "1.5"}), Some(bson!(1.5))),
            (bson!({"$toBool": 0}), Some(bson!(false))),
            (bson!({"$toBool": "false"}), Some(bson!(true))),
            (bson!({"$toDecimal": 1}), Some(dec("1"))),
            (
                bson!({"$toDate": 0i64}),
                Some(Bson::DateTime(DateTime::from_millis(0))),
            ),
            (
                bson!({"$toObjectId": "5ab9cbfa31c2ab715d42129e"}),
                Some(Bson::ObjectId(
                    bson::oid::ObjectId::parse_str("5ab9cbfa31c2ab715d42129e").unwrap(),
                )),
            ),
            (
                bson!({"$convert": {"input": "x", "to": "int", "onError": -1}}),
                Some(bson!(-1)),
            ),
            (
                bson!({"$convert": {"input": null, "to": "int", "onNull": 0}}),
                Some(bson!(0)),
            ),
            (
                bson!({"$convert": {"input": "5", "to": 16}}),
                Some(bson!(5)),
            ),
            (
                bson!({"$convert": {"input": 1, "to": "bool"}}),
                Some(bson!(true)),
            ),
        ],
    );
    errors(
        &d,
        &[
            (bson!({"$toInt": "x"}), 241),
            (bson!({"$convert": {"input": 1, "to": "foo"}}), 2),
            (bson!({"$toObjectId": 1}), 241),
            (bson!({"$convert": {"input": 1}}), 40443),
        ],
    );
}

#[test]
fn dates() {
    // 2021-03-15T10:20:30.456Z, a Monday.
    let dt = DateTime::from_millis(1_615_803_630_456);
    let d = doc! {"d": dt, "n": null};
    table(
        &d,
        &[
            (bson!({"$year": "$d"}), Some(bson!(2021))),
            (bson!({"$month": "$d"}), Some(bson!(3))),
            (bson!({"$dayOfMonth": "$d"}), Some(bson!(15))),
            (bson!({"$dayOfWeek": "$d"}), Some(bson!(2))),
            (bson!({"$dayOfYear": "$d"}), Some(bson!(74))),
            (bson!({"$hour": "$d"}), Some(bson!(10))),
            (bson!({"$minute": "$d"}), Some(bson!(20))),
            (bson!({"$second": "$d"}), Some(bson!(30))),
            (bson!({"$millisecond": "$d"}), Some(bson!(456))),
            (bson!({"$week": "$d"}), Some(bson!(11))),
            (bson!({"$isoWeek": "$d"}), Some(bson!(11))),
            (bson!({"$isoWeekYear": "$d"}), Some(bson!(2021i64))),
            (bson!({"$isoDayOfWeek": "$d"}), Some(bson!(1))),
            (
                bson!({"$hour": {"date": "$d", "timezone": "+05:30"}}),
                Some(bson!(15)),
            ),
            (
                bson!({"$hour": {"date": "$d", "timezone": "-0100"}}),
                Some(bson!(9)),
            ),
            (bson!({"$year": "$n"}), Some(Bson::Null)),
            (
                bson!({"$dateToString": {"date": "$d"}}),
                s("2021-03-15T10:20:30.456Z"),
            ),
            (
                bson!({"$dateToString": {"date": "$d", "format": "%d/%m/%Y %H:%M", "timezone": "+01:00"}}),
                s("15/03/2021 11:20"),
            ),
            (
                bson!({"$dateToString": {"date": "$n", "onNull": "none"}}),
                s("none"),
            ),
            (
                bson!({"$dateFromString": {"dateString": "2021-03-15T10:20:30.456Z"}}),
                Some(Bson::DateTime(dt)),
            ),
            (
                bson!({"$dateFromString": {"dateString": "15-03-2021", "format": "%d-%m-%Y"}}),
                Some(Bson::DateTime(DateTime::from_millis(1_615_766_400_000))),
            ),
            (
                bson!({"$dateFromString": {"dateString": "bad", "onError": "err"}}),
                s("err"),
            ),
            (
                bson!({"$dateFromString": {"dateString": "$n", "onNull": "nul"}}),
                s("nul"),
            ),
            (
                bson!({"$dateTrunc": {"date": "$d", "unit": "day"}}),
                Some(Bson::DateTime(DateTime::from_millis(1_615_766_400_000))),
            ),
            (
                bson!({"$dateTrunc": {"date": "$d", "unit": "hour", "binSize": 4}}),
                Some(Bson::DateTime(DateTime::from_millis(
                    1_615_766_400_000 + 8 * 3_600_000,
                ))),
            ),
            (
                bson!({"$dateTrunc": {"date": "$d", "unit": "month"}}),
                Some(Bson::DateTime(DateTime::from_millis(1_614_556_800_000))),
            ),
            (
                bson!({"$dateAdd": {"startDate": "$d", "unit": "day", "amount": 1}}),
                Some(Bson::DateTime(DateTime::from_millis(
                    1_615_803_630_456 + 86_400_000,
                ))),
            ),
            (
                bson!({"$dateSubtract": {"startDate": "$d", "unit": "hour", "amount": 1}}),
                Some(Bson::DateTime(DateTime::from_millis(
                    1_615_803_630_456 - 3_600_000,
                ))),
            ),
            (
                bson!({"$dateDiff": {"startDate": "$d", "endDate": {"$dateAdd": {"startDate": "$d", "unit": "month", "amount": 14}}, "unit": "year"}}),
                Some(bson!(1i64)),
            ),
            (
                bson!({"$dateDiff": {"startDate": DateTime::from_millis(0), "endDate": "$d", "unit": "day"}}),
                Some(bson!(18701i64)),
            ),
            (
                bson!({"$dateToParts": {"date": "$d"}}),
                Some(
                    bson!({"year": 2021, "month": 3, "day": 15, "hour": 10, "minute": 20, "second": 30, "millisecond": 456}),
                ),
            ),
            (
                bson!({"$dateToParts": {"date": "$d", "iso8601": true}}),
                Some(
                    bson!({"isoWeekYear": 2021, "isoWeek": 11, "isoDayOfWeek": 1, "hour": 10, "minute": 20, "second": 30, "millisecond": 456}),
                ),
            ),
            (
                bson!({"$dateFromParts": {"year": 2021, "month": 3, "day": 15, "hour": 10, "minute": 20, "second": 30, "millisecond": 456}}),
                Some(Bson::DateTime(dt)),
            ),
            (
                bson!({"$dateFromParts": {"year": 2020, "month": 15, "day": 15, "hour": 10, "minute": 20, "second": 30, "millisecond": 456}}),
                Some(Bson::DateTime(dt)),
            ),
            (
                bson!({"$dateFromParts": {"isoWeekYear": 2021, "isoWeek": 11, "isoDayOfWeek": 1}}),
                Some(Bson::DateTime(DateTime::from_millis(1_615_766_400_000))),
            ),
        ],
    );
    errors(
        &d,
        &[
            (bson!({"$year": "x"}), 16006),
            (
                bson!({"$year": {"date": "$d", "timezone": "Mars/Base"}}),
                40485,
            ),
            (
                bson!({"$dateToString": {"date": "$d", "format": "%Q"}}),
                18536,
            ),
            (bson!({"$dateFromString": {"dateString": "bad"}}), 241),
            (
                bson!({"$dateTrunc": {"date": "$d", "unit": "fortnight"}}),
                5439014,
            ),
            (bson!({"$dateFromParts": {"month": 1}}), 40516),
            (bson!({"$dateFromParts": {"year": 10000}}), 31034),
        ],
    );
}

#[test]
fn let_parameters_are_evaluated_once_before_any_document() {
    let now = DateTime::from_millis(1_700_000_000_000);
    let mut vars = Vars::new(
        now,
        bson::Timestamp {
            time: 5,
            increment: 1,
        },
    );
    vars.bind_let(&doc! {
        "id": 1,
        "y": {"$literal": "$bar"},
        "when": "$$NOW",
        "twice": {"$multiply": ["$$id", 2]},
    })
    .unwrap();
    assert_eq!(vars.get("id"), Some(&Bson::Int32(1)));
    assert_eq!(vars.get("y"), Some(&Bson::String("$bar".into())));
    assert_eq!(vars.get("when"), Some(&Bson::DateTime(now)));
    assert_eq!(vars.get("twice"), Some(&Bson::Int32(2)));
    let e = Expr::parse(&bson!({"$eq": ["$_id", "$$id"]})).unwrap();
    assert_eq!(
        e.eval(&doc! {"_id": 1}, &vars).unwrap(),
        Some(Bson::Boolean(true))
    );
}

#[test]
fn let_parameters_reject_bad_names_and_field_paths() {
    let code = |d: Document| Vars::default().bind_let(&d).unwrap_err().code;
    assert_eq!(code(doc! {"Upper": 1}), 9);
    assert_eq!(code(doc! {"a-b": 1}), 9);
    assert_eq!(code(doc! {"": 1}), 9);
    assert_eq!(code(doc! {"NOW": 1}), 4738901);
    assert_eq!(code(doc! {"x": "$field"}), 4890500);
    assert_eq!(code(doc! {"x": {"$add": [1, "$$ROOT.a"]}}), 4890500);
    assert_eq!(code(doc! {"x": "$$undefinedVar"}), 17276);
    assert!(Vars::default().bind_let(&doc! {"é": 1, "a_1": 2}).is_ok());
}

/// Expressions that grow a value without bound are refused before they exhaust memory
/// (found by hand while fuzzing: each of these took the whole server down).
#[test]
fn values_that_grow_without_bound_are_refused() {
    // Each doubling starts from a 1 MB value, so the limit is reached in a few steps.
    let doubling = |init: Bson, op: &str| {
        bson!({"$reduce": {
            "input": {"$range": [0, 40]},
            "initialValue": init,
            "in": {op: ["$$value", "$$value"]},
        }})
    };
    let d = doc! {"m": "x".repeat(1 << 20)};
    errors(
        &d,
        &[
            (bson!({"$range": [0, 1_000_000_000]}), 146),
            (bson!({"$range": [0, 2_000_000_000, 1]}), 146),
            (doubling(bson!(["$m"]), "$concatArrays"), 146),
            (
                bson!({"$reduce": {"input": {"$range": [0, 40]}, "initialValue": "$m",
                    "in": ["$$value", "$$value"]}}),
                146,
            ),
            (
                bson!({"$reduce": {"input": {"$range": [0, 40]}, "initialValue": {"a": "$m"},
                    "in": {"a": "$$value", "b": "$$value"}}}),
                146,
            ),
            (
                bson!({"$reduce": {"input": {"$range": [0, 30]}, "initialValue": "ab",
                    "in": {"$replaceAll": {"input": "$$value", "find": "a", "replacement": "$$value"}}}}),
                13548,
            ),
            (
                bson!({"$map": {"input": {"$range": [0, 200]}, "in": "$m"}}),
                146,
            ),
        ],
    );
    // The string limit is on the result: just under it is built.
    let big = "x".repeat(33 * 1024 * 1024);
    let d = doc! {"s": &big};
    errors(&d, &[(bson!({"$concat": ["$s", "$s"]}), 13548)]);
    assert_eq!(
        ev(bson!({"$strLenBytes": {"$concat": ["$s", "y"]}}), &d).unwrap(),
        Some(Bson::Int32(big.len() as i32 + 1))
    );
}
