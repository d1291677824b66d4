// window: `$setWindowFields` against the examples of MongoDB's manual (each with its
// source), and its refusals with MongoDB's codes.

use bson::{Bson, DateTime, Document, doc};
use futures_util::TryStreamExt;
use mongodb::{Collection, Database};

use crate::cmd_error;

fn date(s: &str) -> DateTime {
    DateTime::parse_rfc3339_str(s).unwrap()
}

/// The manual's `cakeSales` collection.
/// Source: https://www.mongodb.com/docs/v8.0/reference/operator/aggregation/setWindowFields/
async fn cake_sales(db: &Database) -> Collection<Document> {
    let c = db.collection::<Document>("cakeSales");
    c.insert_many(vec![
        doc! {"_id": 0, "type": "chocolate", "orderDate": date("2020-05-18T14:10:30Z"), "state": "CA", "price": 13, "quantity": 120},
        doc! {"_id": 1, "type": "chocolate", "orderDate": date("2021-03-20T11:30:05Z"), "state": "WA", "price": 14, "quantity": 140},
        doc! {"_id": 2, "type": "vanilla", "orderDate": date("2021-01-11T06:31:15Z"), "state": "CA", "price": 12, "quantity": 145},
        doc! {"_id": 3, "type": "vanilla", "orderDate": date("2020-02-08T13:13:23Z"), "state": "WA", "price": 13, "quantity": 104},
        doc! {"_id": 4, "type": "strawberry", "orderDate": date("2019-05-18T16:09:01Z"), "state": "CA", "price": 41, "quantity": 162},
        doc! {"_id": 5, "type": "strawberry", "orderDate": date("2019-01-08T06:12:03Z"), "state": "WA", "price": 43, "quantity": 134},
    ])
    .await
    .unwrap();
    c
}

/// Runs `pipeline` and returns (`_id`, `field`) in output order.
async fn pairs(c: &Collection<Document>, pipeline: Vec<Document>, field: &str) -> Vec<(i32, Bson)> {
    let docs: Vec<Document> = c
        .aggregate(pipeline)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    docs.iter()
        .map(|d| {
            (
                d.get_i32("_id").unwrap(),
                d.get(field).cloned().unwrap_or(Bson::Null),
            )
        })
        .collect()
}

fn ints(v: &[(i32, i64)]) -> Vec<(i32, Bson)> {
    v.iter()
        .map(|(i, x)| (*i, Bson::Int32(*x as i32)))
        .collect()
}

fn as_f64(v: &Bson) -> f64 {
    match v {
        Bson::Double(f) => *f,
        Bson::Int32(i) => f64::from(*i),
        Bson::Int64(i) => *i as f64,
        other => panic!("not a number: {other:?}"),
    }
}

/// Source: setWindowFields page, "Use Documents Window to Obtain Cumulative Quantity for
/// Each State" and "... for Each Year" (partitionBy an expression), "Use Documents Window
/// to Obtain Moving Average Quantity for Each Year", "Range Window Example".
#[tokio::test]
async fn documents_and_range_windows_match_the_manual() {
    let s = testkit::spawn().await;
    let db = s.client.database("win");
    let c = cake_sales(&db).await;

    let got = pairs(
        &c,
        vec![doc! {"$setWindowFields": {
            "partitionBy": "$state", "sortBy": {"orderDate": 1},
            "output": {"cumulativeQuantityForState": {"$sum": "$quantity", "window": {"documents": ["unbounded", "current"]}}}
        }}],
        "cumulativeQuantityForState",
    )
    .await;
    assert_eq!(
        got,
        ints(&[(4, 162), (0, 282), (2, 427), (5, 134), (3, 238), (1, 378)])
    );

    let got = pairs(
        &c,
        vec![doc! {"$setWindowFields": {
            "partitionBy": {"$year": "$orderDate"}, "sortBy": {"orderDate": 1},
            "output": {"cumulativeQuantityForYear": {"$sum": "$quantity", "window": {"documents": ["unbounded", "current"]}}}
        }}],
        "cumulativeQuantityForYear",
    )
    .await;
    assert_eq!(
        got,
        ints(&[(5, 134), (4, 296), (3, 104), (0, 224), (2, 145), (1, 285)])
    );

    let got = pairs(
        &c,
        vec![doc! {"$setWindowFields": {
            "partitionBy": {"$year": "$orderDate"}, "sortBy": {"orderDate": 1},
            "output": {"averageQuantity": {"$avg": "$quantity", "window": {"documents": [-1, 0]}}}
        }}],
        "averageQuantity",
    )
    .await;
    let want = [
        (5, 134.0),
        (4, 148.0),
        (3, 104.0),
        (0, 112.0),
        (2, 145.0),
        (1, 142.5),
    ];
    assert_eq!(
        got,
        want.iter()
            .map(|(i, x)| (*i, Bson::Double(*x)))
            .collect::<Vec<_>>()
    );

    // Two outputs at once; the unbounded max is the partition's.
    let docs: Vec<Document> = c
        .aggregate(vec![doc! {"$setWindowFields": {
            "partitionBy": {"$year": "$orderDate"}, "sortBy": {"orderDate": 1},
            "output": {
                "cumulativeQuantityForYear": {"$sum": "$quantity", "window": {"documents": ["unbounded", "current"]}},
                "maximumQuantityForYear": {"$max": "$quantity", "window": {"documents": ["unbounded", "unbounded"]}},
            }
        }}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let got: Vec<(i32, i32, i32)> = docs
        .iter()
        .map(|d| {
            (
                d.get_i32("_id").unwrap(),
                d.get_i32("cumulativeQuantityForYear").unwrap(),
                d.get_i32("maximumQuantityForYear").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (5, 134, 162),
            (4, 296, 162),
            (3, 104, 120),
            (0, 224, 120),
            (2, 145, 145),
            (1, 285, 145)
        ]
    );

    let got = pairs(
        &c,
        vec![doc! {"$setWindowFields": {
            "partitionBy": "$state", "sortBy": {"price": 1},
            "output": {"quantityFromSimilarOrders": {"$sum": "$quantity", "window": {"range": [-10, 10]}}}
        }}],
        "quantityFromSimilarOrders",
    )
    .await;
    assert_eq!(
        got,
        ints(&[(2, 265), (0, 265), (4, 162), (3, 244), (1, 244), (5, 134)])
    );
}

/// Source: setWindowFields page, "Use a Time Range Window with a Positive Upper Bound" and
/// "... with a Negative Upper Bound" (`unit: "month"`, bounds by `$dateAdd`).
#[tokio::test]
async fn time_range_windows_match_the_manual() {
    let s = testkit::spawn().await;
    let db = s.client.database("win");
    let c = cake_sales(&db).await;
    let dates: Vec<(i32, DateTime)> = c
        .find(doc! {})
        .await
        .unwrap()
        .try_collect::<Vec<Document>>()
        .await
        .unwrap()
        .iter()
        .map(|d| {
            (
                d.get_i32("_id").unwrap(),
                *d.get_datetime("orderDate").unwrap(),
            )
        })
        .collect();
    let of = |ids: &[i32]| {
        Bson::Array(
            ids.iter()
                .map(|i| Bson::DateTime(dates.iter().find(|(j, _)| j == i).unwrap().1))
                .collect(),
        )
    };
    for (upper, want) in [
        (
            10,
            vec![
                (4, vec![4]),
                (0, vec![4, 0, 2]),
                (2, vec![4, 0, 2]),
                (5, vec![5]),
                (3, vec![5, 3]),
                (1, vec![5, 3, 1]),
            ],
        ),
        (
            -10,
            vec![
                (4, vec![]),
                (0, vec![4]),
                (2, vec![4]),
                (5, vec![]),
                (3, vec![5]),
                (1, vec![5, 3]),
            ],
        ),
    ] {
        let got = pairs(
            &c,
            vec![doc! {"$setWindowFields": {
                "partitionBy": "$state", "sortBy": {"orderDate": 1},
                "output": {"recentOrders": {"$push": "$orderDate", "window": {"range": ["unbounded", upper], "unit": "month"}}}
            }}],
            "recentOrders",
        )
        .await;
        let want: Vec<(i32, Bson)> = want.iter().map(|(i, ids)| (*i, of(ids))).collect();
        assert_eq!(got, want, "upper bound {upper}");
    }
}

/// Sources: https://www.mongodb.com/docs/v8.0/reference/operator/aggregation/rank/,
/// .../denseRank/ and .../shift/ (the `cakeSales` examples, and the rank page's example
/// of null and missing quantities, which tie since 8.0).
#[tokio::test]
async fn rank_dense_rank_and_shift_match_the_manual() {
    let s = testkit::spawn().await;
    let db = s.client.database("win");
    let c = cake_sales(&db).await;
    let rank = |op: &str, sort: Document| {
        vec![doc! {"$setWindowFields": {
            "partitionBy": "$state", "sortBy": sort,
            "output": {"r": {op: {}}}
        }}]
    };
    let got = pairs(&c, rank("$rank", doc! {"quantity": -1}), "r").await;
    assert_eq!(got, ints(&[(4, 1), (2, 2), (0, 3), (1, 1), (5, 2), (3, 3)]));
    let got = pairs(&c, rank("$denseRank", doc! {"quantity": -1}), "r").await;
    assert_eq!(got, ints(&[(4, 1), (2, 2), (0, 3), (1, 1), (5, 2), (3, 3)]));
    let got = pairs(&c, rank("$rank", doc! {"orderDate": 1}), "r").await;
    assert_eq!(got, ints(&[(4, 1), (0, 2), (2, 3), (5, 1), (3, 2), (1, 3)]));
    let got = pairs(&c, rank("$documentNumber", doc! {"orderDate": 1}), "r").await;
    assert_eq!(got, ints(&[(4, 1), (0, 2), (2, 3), (5, 1), (3, 2), (1, 3)]));

    let shift = |by: i32| {
        vec![doc! {"$setWindowFields": {
            "partitionBy": "$state", "sortBy": {"quantity": -1},
            "output": {"s": {"$shift": {"output": "$quantity", "by": by, "default": "Not available"}}}
        }}]
    };
    let na = || Bson::String("Not available".into());
    let got = pairs(&c, shift(1), "s").await;
    assert_eq!(
        got,
        vec![
            (4, Bson::Int32(145)),
            (2, Bson::Int32(120)),
            (0, na()),
            (1, Bson::Int32(134)),
            (5, Bson::Int32(104)),
            (3, na())
        ]
    );
    let got = pairs(&c, shift(-1), "s").await;
    assert_eq!(
        got,
        vec![
            (4, na()),
            (2, Bson::Int32(162)),
            (0, Bson::Int32(145)),
            (1, na()),
            (5, Bson::Int32(140)),
            (3, Bson::Int32(134))
        ]
    );

    // Null and missing quantities tie (the rank page's second example).
    let t = date("2020-05-11T16:09:01Z");
    c.insert_many(vec![
        doc! {"_id": 6, "type": "strawberry", "orderDate": date("2020-01-08T06:12:03Z"), "state": "WA", "price": 41, "quantity": 134},
        doc! {"_id": 7, "type": "strawberry", "orderDate": date("2020-01-01T06:12:03Z"), "state": "WA", "price": 34, "quantity": 134},
        doc! {"_id": 8, "type": "strawberry", "orderDate": date("2020-01-02T06:12:03Z"), "state": "WA", "price": 40, "quantity": 134},
        doc! {"_id": 9, "type": "strawberry", "orderDate": t, "state": "CA", "price": 39, "quantity": 162},
        doc! {"_id": 10, "type": "strawberry", "orderDate": t, "state": "CA", "price": 39, "quantity": Bson::Null},
        doc! {"_id": 11, "type": "strawberry", "orderDate": t, "state": "CA", "price": 39},
    ])
    .await
    .unwrap();
    let mut got = pairs(&c, rank("$rank", doc! {"quantity": -1}), "r").await;
    got.sort_by_key(|(i, _)| *i);
    assert_eq!(
        got,
        ints(&[
            (0, 4),
            (1, 1),
            (2, 3),
            (3, 6),
            (4, 1),
            (5, 2),
            (6, 2),
            (7, 2),
            (8, 2),
            (9, 1),
            (10, 5),
            (11, 5)
        ])
    );
    let mut got = pairs(&c, rank("$denseRank", doc! {"quantity": -1}), "r").await;
    got.sort_by_key(|(i, _)| *i);
    assert_eq!(
        got,
        ints(&[
            (0, 3),
            (1, 1),
            (2, 2),
            (3, 3),
            (4, 1),
            (5, 2),
            (6, 2),
            (7, 2),
            (8, 2),
            (9, 1),
            (10, 4),
            (11, 4)
        ])
    );
}

/// Sources: https://www.mongodb.com/docs/v8.0/reference/operator/aggregation/expMovingAvg/,
/// .../derivative/, .../integral/ and .../linearFill/ (with `$locf`).
#[tokio::test]
async fn time_series_operators_match_the_manual() {
    let s = testkit::spawn().await;
    let db = s.client.database("win");

    let prices = db.collection::<Document>("stockPrices");
    let days = [
        "2020-05-18T20:00:00Z",
        "2020-05-19T20:00:00Z",
        "2020-05-20T20:00:00Z",
        "2020-05-21T20:00:00Z",
    ];
    for (stock, ps) in [
        ("MDB", [13.0, 15.4, 12.0, 11.7]),
        ("MSFT", [82.0, 94.0, 112.0, 97.3]),
    ] {
        for (d, p) in days.iter().zip(ps) {
            prices
                .insert_one(doc! {"stock": stock, "date": date(d), "price": p})
                .await
                .unwrap();
        }
    }
    // The manual's values come from Decimal128 arithmetic; Eddy's binary doubles agree to
    // within one unit in the last place (104.66666666666666 against ...667).
    for (arg, want) in [
        (
            doc! {"input": "$price", "N": 2},
            [
                13.0,
                14.6,
                12.866666666666667,
                12.088888888888889,
                82.0,
                90.0,
                104.66666666666667,
                99.75555555555556,
            ],
        ),
        (
            doc! {"input": "$price", "alpha": 0.75},
            [13.0, 14.8, 12.7, 11.95, 82.0, 91.0, 106.75, 99.6625],
        ),
    ] {
        let docs: Vec<Document> = prices
            .aggregate(vec![doc! {"$setWindowFields": {
                "partitionBy": "$stock", "sortBy": {"date": 1},
                "output": {"ema": {"$expMovingAvg": arg}}
            }}])
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let got: Vec<f64> = docs.iter().map(|d| d.get_f64("ema").unwrap()).collect();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= w * 1e-15, "{got:?} against {want:?}");
        }
    }

    let fleet = db.collection::<Document>("deliveryFleet");
    let times = [
        "2020-05-18T14:10:30Z",
        "2020-05-18T14:11:00Z",
        "2020-05-18T14:11:30Z",
        "2020-05-18T14:12:00Z",
    ];
    for (truck, miles) in [
        ("1", [1295.1, 1295.63, 1296.25, 1296.76]),
        ("2", [10234.1, 10234.33, 10234.73, 10235.13]),
    ] {
        for (t, m) in times.iter().zip(miles) {
            fleet
                .insert_one(doc! {"truckID": truck, "timeStamp": date(t), "miles": m})
                .await
                .unwrap();
        }
    }
    let docs: Vec<Document> = fleet
        .aggregate(vec![
            doc! {"$setWindowFields": {
                "partitionBy": "$truckID", "sortBy": {"timeStamp": 1},
                "output": {"truckAverageSpeed": {
                    "$derivative": {"input": "$miles", "unit": "hour"},
                    "window": {"range": [-30, 0], "unit": "second"}
                }}
            }},
            doc! {"$match": {"truckAverageSpeed": {"$gt": 50}}},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let got: Vec<(String, f64)> = docs
        .iter()
        .map(|d| {
            (
                d.get_str("truckID").unwrap().to_string(),
                d.get_f64("truckAverageSpeed").unwrap(),
            )
        })
        .collect();
    let want = [63.60000000002401, 74.3999999999869, 61.199999999998916];
    assert_eq!(got.len(), 3, "{got:?}");
    for ((truck, g), w) in got.iter().zip(want) {
        assert_eq!(truck, "1");
        assert!((g - w).abs() < 1e-9, "{got:?}");
    }

    let power = db.collection::<Document>("powerConsumption");
    for (meter, kw) in [
        ("1", [2.95, 2.7, 2.6, 2.98]),
        ("2", [2.5, 2.25, 2.75, 2.82]),
    ] {
        for (t, k) in times.iter().zip(kw) {
            power
                .insert_one(doc! {"powerMeterID": meter, "timeStamp": date(t), "kilowatts": k})
                .await
                .unwrap();
        }
    }
    let docs: Vec<Document> = power
        .aggregate(vec![doc! {"$setWindowFields": {
            "partitionBy": "$powerMeterID", "sortBy": {"timeStamp": 1},
            "output": {"powerMeterKilowattHours": {
                "$integral": {"input": "$kilowatts", "unit": "hour"},
                "window": {"range": ["unbounded", "current"], "unit": "hour"}
            }}
        }}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let got: Vec<f64> = docs
        .iter()
        .map(|d| as_f64(d.get("powerMeterKilowattHours").unwrap()))
        .collect();
    let want = [
        0.0,
        0.023541666666666666,
        0.045625,
        0.068875,
        0.0,
        0.019791666666666666,
        0.040625,
        0.06383333333333334,
    ];
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-15, "{got:?}");
    }

    let stock = db.collection::<Document>("stock");
    for (h, p) in [
        (9, Some(500)),
        (10, None),
        (11, Some(515)),
        (12, None),
        (13, None),
        (14, Some(485)),
    ] {
        let mut d = doc! {"time": date(&format!("2021-03-08T{h:02}:00:00Z"))};
        if let Some(p) = p {
            d.insert("price", p);
        }
        stock.insert_one(d).await.unwrap();
    }
    let docs: Vec<Document> = stock
        .aggregate(vec![doc! {"$setWindowFields": {
            "sortBy": {"time": 1},
            "output": {"linearFillPrice": {"$linearFill": "$price"}, "locfPrice": {"$locf": "$price"}}
        }}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let lin: Vec<f64> = docs
        .iter()
        .map(|d| as_f64(d.get("linearFillPrice").unwrap()))
        .collect();
    let locf: Vec<f64> = docs
        .iter()
        .map(|d| as_f64(d.get("locfPrice").unwrap()))
        .collect();
    assert_eq!(lin, vec![500.0, 507.5, 515.0, 505.0, 495.0, 485.0]);
    assert_eq!(locf, vec![500.0, 500.0, 515.0, 515.0, 515.0, 485.0]);
    assert!(
        !docs[1].contains_key("price"),
        "a filled document keeps its fields"
    );
}

/// Window bounds and the remaining accumulators. Range bounds are by value (`range.js` of
/// MongoDB's jstests: x = [0, 1, 1.5, 2, 3, 100, 100, 101]); `"current"` is the current
/// document; empty windows give MongoDB's empty results (`empty_window.js`).
#[tokio::test]
async fn window_bounds_and_accumulators() {
    let s = testkit::spawn().await;
    let db = s.client.database("win");
    let c = db.collection::<Document>("x");
    let xs = [0.0, 1.0, 1.5, 2.0, 3.0, 100.0, 100.0, 101.0];
    for (i, x) in xs.iter().enumerate() {
        c.insert_one(doc! {"_id": i as i32, "x": x}).await.unwrap();
    }
    let push = |window: Document| {
        vec![doc! {"$setWindowFields": {
            "sortBy": {"x": 1},
            "output": {"w": {"$push": "$x", "window": window}}
        }}]
    };
    let arr = |v: &[f64]| Bson::Array(v.iter().map(|x| Bson::Double(*x)).collect());
    let got: Vec<Bson> = pairs(&c, push(doc! {"range": [-1, 0]}), "w")
        .await
        .into_iter()
        .map(|p| p.1)
        .collect();
    let want = [
        arr(&[0.0]),
        arr(&[0.0, 1.0]),
        arr(&[1.0, 1.5]),
        arr(&[1.0, 1.5, 2.0]),
        arr(&[2.0, 3.0]),
        arr(&[100.0, 100.0]),
        arr(&[100.0, 100.0]),
        arr(&[100.0, 100.0, 101.0]),
    ];
    assert_eq!(got, want);
    let got: Vec<Bson> = pairs(&c, push(doc! {"range": [-1, -1]}), "w")
        .await
        .into_iter()
        .map(|p| p.1)
        .collect();
    let want = [
        arr(&[]),
        arr(&[0.0]),
        arr(&[]),
        arr(&[1.0]),
        arr(&[2.0]),
        arr(&[]),
        arr(&[]),
        arr(&[100.0, 100.0]),
    ];
    assert_eq!(got, want);
    // "current" in a range window is the document, not its value.
    let got: Vec<Bson> = pairs(&c, push(doc! {"range": ["current", 1]}), "w")
        .await
        .into_iter()
        .map(|p| p.1)
        .collect();
    assert_eq!(got[5], arr(&[100.0, 100.0, 101.0]));
    assert_eq!(got[6], arr(&[100.0, 101.0]));
    let got: Vec<Bson> = pairs(&c, push(doc! {"documents": [-1, 1]}), "w")
        .await
        .into_iter()
        .map(|p| p.1)
        .collect();
    assert_eq!(got[0], arr(&[0.0, 1.0]));
    assert_eq!(got[7], arr(&[100.0, 101.0]));

    // Empty windows: $sum and $count 0, $avg/$min/$first null, $push [].
    let docs: Vec<Document> = c
        .aggregate(vec![doc! {"$setWindowFields": {
            "sortBy": {"x": 1},
            "output": {
                "sum": {"$sum": "$x", "window": {"documents": ["unbounded", -1]}},
                "count": {"$count": {}, "window": {"documents": ["unbounded", -1]}},
                "avg": {"$avg": "$x", "window": {"documents": ["unbounded", -1]}},
                "min": {"$min": "$x", "window": {"documents": ["unbounded", -1]}},
                "first": {"$first": "$x", "window": {"documents": ["unbounded", -1]}},
                "minN": {"$minN": {"input": "$x", "n": 2}, "window": {"documents": ["unbounded", -1]}},
                "sd": {"$stdDevPop": "$x", "window": {"documents": [-1, 0]}},
                "cov": {"$covariancePop": ["$x", "$x"], "window": {"documents": [-1, 0]}},
                "covs": {"$covarianceSamp": ["$x", "$x"]},
                "top": {"$top": {"sortBy": {"x": -1}, "output": "$_id"}},
                "median": {"$median": {"input": "$x", "method": "approximate"}},
            }
        }}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let first = &docs[0];
    assert_eq!(first.get("sum"), Some(&Bson::Int32(0)), "{first}");
    assert_eq!(first.get("count"), Some(&Bson::Int32(0)));
    assert_eq!(first.get("avg"), Some(&Bson::Null));
    assert_eq!(first.get("min"), Some(&Bson::Null));
    assert_eq!(first.get("first"), Some(&Bson::Null));
    assert_eq!(first.get("minN"), Some(&Bson::Array(vec![])));
    assert_eq!(first.get("sd"), Some(&Bson::Double(0.0)));
    assert_eq!(first.get("cov"), Some(&Bson::Double(0.0)));
    let last = &docs[7];
    assert_eq!(last.get("sum"), Some(&Bson::Double(207.5)), "{last}");
    assert_eq!(last.get("count"), Some(&Bson::Int32(7)));
    assert_eq!(last.get("minN"), Some(&arr(&[0.0, 1.0])));
    assert_eq!(last.get("sd"), Some(&Bson::Double(0.5)));
    assert_eq!(last.get("cov"), Some(&Bson::Double(0.25)));
    assert_eq!(last.get("top"), Some(&Bson::Int32(7)));
    // Variance of the sample xs, the same for every document (the whole partition).
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    assert!((last.get_f64("covs").unwrap() - var).abs() < 1e-9);
    assert_eq!(last.get("median"), Some(&Bson::Double(2.0)));

    // $integral over documents [-1, 0] (integral.js: (0,1) (1,2) (2,1) (3,4)).
    let pts = db.collection::<Document>("pts");
    for (x, y) in [(0, 1), (1, 2), (2, 1), (3, 4)] {
        pts.insert_one(doc! {"x": x, "y": y}).await.unwrap();
    }
    let docs: Vec<Document> = pts
        .aggregate(vec![doc! {"$setWindowFields": {
            "sortBy": {"x": 1},
            "output": {"i": {"$integral": {"input": "$y"}, "window": {"documents": [-1, 0]}}}
        }}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let got: Vec<f64> = docs.iter().map(|d| as_f64(d.get("i").unwrap())).collect();
    assert_eq!(got, vec![0.0, 1.5, 1.5, 2.5]);

    // Dotted output paths are set as $addFields sets them; no partition or sort keeps order.
    let docs: Vec<Document> = c
        .aggregate(vec![
            doc! {"$sort": {"_id": -1}},
            doc! {"$setWindowFields": {"output": {"a.total": {"$sum": 1}}}},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(docs[0].get_i32("_id").unwrap(), 7);
    assert_eq!(
        docs[0].get_document("a").unwrap().get_i32("total").unwrap(),
        8
    );
}

/// Refusals, with the codes of MongoDB 8.0's parser (window_bounds.cpp and the window
/// function parsers; the jstests `parse.js`, `range.js`, `rank.js`).
#[tokio::test]
async fn invalid_window_specs_are_refused() {
    let s = testkit::spawn().await;
    let db = s.client.database("win");
    db.collection::<Document>("c")
        .insert_many(vec![doc! {"x": 1}, doc! {"x": "a"}])
        .await
        .unwrap();
    let agg = |stage: Document| doc! {"aggregate": "c", "pipeline": [{"$setWindowFields": stage}], "cursor": {}};
    let cases: Vec<(Document, i32)> = vec![
        (doc! {"output": {}, "bogus": 1}, 40415),
        (doc! {"sortBy": {"x": 1}}, 40414),
        (doc! {"output": {"a": 1}}, 9),
        (doc! {"output": {"a": {"$summ": "$x"}}}, 9),
        (doc! {"output": {"a": {"$mergeObjects": "$x"}}}, 9),
        (
            doc! {"output": {"a": {"$sum": 1}, "a.b": {"$sum": 1}}},
            6307900,
        ),
        (
            doc! {"sortBy": {"x": 1}, "output": {"a": {"$sum": 1, "window": {"documents": [1, 0]}}}},
            5339900,
        ),
        (
            doc! {"output": {"a": {"$sum": 1, "window": {"documents": [-1, 0]}}}},
            5339901,
        ),
        (
            doc! {"output": {"a": {"$sum": 1, "window": {"range": ["unbounded", "unbounded"]}}}},
            5339902,
        ),
        (
            doc! {"sortBy": {"x": -1}, "output": {"a": {"$sum": 1, "window": {"range": [-1, 0]}}}},
            8947401,
        ),
        (
            doc! {"sortBy": {"x": 1}, "output": {"a": {"$sum": 1, "window": {"documents": [0, 1], "range": [0, 1]}}}},
            9,
        ),
        (
            doc! {"sortBy": {"x": 1}, "output": {"a": {"$sum": 1, "window": {"documents": [0, 1], "unit": "day"}}}},
            9,
        ),
        (
            doc! {"sortBy": {"x": 1}, "output": {"a": {"$sum": 1, "window": {"documents": [0.5, 1]}}}},
            9,
        ),
        (doc! {"output": {"a": {"$rank": {}}}}, 5371602),
        (
            doc! {"sortBy": {"x": 1}, "output": {"a": {"$rank": {"x": 1}}}},
            5371603,
        ),
        (
            doc! {"sortBy": {"x": 1}, "output": {"a": {"$rank": {}, "window": {"documents": [0, 1]}}}},
            5371601,
        ),
        (
            doc! {"output": {"a": {"$shift": {"output": "$x", "by": 1}}}},
            9,
        ),
        (
            doc! {"sortBy": {"x": 1}, "output": {"a": {"$shift": {"output": "$x", "by": 1, "default": "$x"}}}},
            9,
        ),
        (
            doc! {"sortBy": {"x": 1}, "output": {"a": {"$expMovingAvg": {"input": "$x", "N": 2, "alpha": 0.5}}}},
            9,
        ),
        (
            doc! {"sortBy": {"x": 1}, "output": {"a": {"$derivative": {"input": "$x"}}}},
            9,
        ),
        (
            doc! {"sortBy": {"x": 1}, "output": {"a": {"$derivative": {"input": "$x", "unit": "month"}, "window": {"documents": [-1, 0]}}}},
            5490710,
        ),
        (
            doc! {"sortBy": {"x": 1, "y": 1}, "output": {"a": {"$linearFill": "$x"}}},
            605001,
        ),
        (doc! {"partitionBy": [1, 2], "output": {}}, 14),
        // Run-time: a range window over a string sortBy value.
        (
            doc! {"sortBy": {"x": 1}, "output": {"a": {"$sum": 1, "window": {"range": [-1, 0]}}}},
            5429414,
        ),
        (
            doc! {"sortBy": {"x": 1}, "output": {"a": {"$sum": 1, "window": {"range": [-1, 0], "unit": "day"}}}},
            5429513,
        ),
    ];
    for (stage, code) in cases {
        let (got, _) = cmd_error(&db, agg(stage.clone())).await;
        assert_eq!(got, code, "{stage}");
    }
}

fn names(v: &Bson) -> Vec<String> {
    let mut n: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d.as_document()
                .unwrap()
                .get_str("name")
                .unwrap()
                .to_string()
        })
        .collect();
    n.sort();
    n
}

/// Source: https://www.mongodb.com/docs/v8.0/reference/operator/aggregation/graphLookup/
/// ("Within a Single Collection": employees; "Across Multiple Collections": airports, with
/// `maxDepth` and `depthField`). The order of `as` is unspecified, so it is compared sorted.
#[tokio::test]
async fn graph_lookup_matches_the_manual() {
    let s = testkit::spawn().await;
    let db = s.client.database("graph");
    let emp = db.collection::<Document>("employees");
    emp.insert_many(vec![
        doc! {"_id": 1, "name": "Dev"},
        doc! {"_id": 2, "name": "Eliot", "reportsTo": "Dev"},
        doc! {"_id": 3, "name": "Ron", "reportsTo": "Eliot"},
        doc! {"_id": 4, "name": "Andrew", "reportsTo": "Eliot"},
        doc! {"_id": 5, "name": "Asya", "reportsTo": "Ron"},
        doc! {"_id": 6, "name": "Dan", "reportsTo": "Andrew"},
    ])
    .await
    .unwrap();
    let docs: Vec<Document> = emp
        .aggregate(vec![
            doc! {"$graphLookup": {"from": "employees", "startWith": "$reportsTo", "connectFromField": "reportsTo", "connectToField": "name", "as": "reportingHierarchy"}},
            doc! {"$sort": {"_id": 1}},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let got: Vec<Vec<String>> = docs
        .iter()
        .map(|d| names(d.get("reportingHierarchy").unwrap()))
        .collect();
    let want: Vec<Vec<&str>> = vec![
        vec![],
        vec!["Dev"],
        vec!["Dev", "Eliot"],
        vec!["Dev", "Eliot"],
        vec!["Dev", "Eliot", "Ron"],
        vec!["Andrew", "Dev", "Eliot"],
    ];
    assert_eq!(got, want);

    let airports = db.collection::<Document>("airports");
    airports
        .insert_many(vec![
            doc! {"_id": 0, "airport": "JFK", "connects": ["BOS", "ORD"]},
            doc! {"_id": 1, "airport": "BOS", "connects": ["JFK", "PWM"]},
            doc! {"_id": 2, "airport": "ORD", "connects": ["JFK"]},
            doc! {"_id": 3, "airport": "PWM", "connects": ["BOS", "LHR"]},
            doc! {"_id": 4, "airport": "LHR", "connects": ["PWM"]},
        ])
        .await
        .unwrap();
    let travelers = db.collection::<Document>("travelers");
    travelers
        .insert_many(vec![
            doc! {"_id": 1, "name": "Dev", "nearestAirport": "JFK"},
            doc! {"_id": 2, "name": "Eliot", "nearestAirport": "JFK"},
            doc! {"_id": 3, "name": "Jeff", "nearestAirport": "BOS"},
        ])
        .await
        .unwrap();
    let docs: Vec<Document> = travelers
        .aggregate(vec![
            doc! {"$graphLookup": {"from": "airports", "startWith": "$nearestAirport", "connectFromField": "connects", "connectToField": "airport", "maxDepth": 2, "depthField": "numConnections", "as": "destinations"}},
            doc! {"$sort": {"_id": 1}},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let depths = |d: &Document| {
        let mut v: Vec<(String, i64)> = d
            .get_array("destinations")
            .unwrap()
            .iter()
            .map(|a| {
                let a = a.as_document().unwrap();
                (
                    a.get_str("airport").unwrap().to_string(),
                    a.get_i64("numConnections").unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let s = |v: &[(&str, i64)]| {
        v.iter()
            .map(|(a, n)| (a.to_string(), *n))
            .collect::<Vec<_>>()
    };
    let dev = s(&[("BOS", 1), ("JFK", 0), ("ORD", 1), ("PWM", 2)]);
    assert_eq!(depths(&docs[0]), dev);
    assert_eq!(depths(&docs[1]), dev);
    assert_eq!(
        depths(&docs[2]),
        s(&[("BOS", 0), ("JFK", 1), ("LHR", 2), ("ORD", 2), ("PWM", 1)])
    );

    // restrictSearchWithMatch narrows every depth's query; errors carry MongoDB's codes.
    let docs: Vec<Document> = emp
        .aggregate(vec![
            doc! {"$match": {"_id": 5}},
            doc! {"$graphLookup": {"from": "employees", "startWith": "$reportsTo", "connectFromField": "reportsTo", "connectToField": "name", "as": "h", "restrictSearchWithMatch": {"_id": {"$ne": 2}}}},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(names(docs[0].get("h").unwrap()), vec!["Ron"]);
    let gl = |spec: Document| doc! {"aggregate": "employees", "pipeline": [{"$graphLookup": spec}], "cursor": {}};
    let base = doc! {"from": "employees", "startWith": "$reportsTo", "connectFromField": "reportsTo", "connectToField": "name", "as": "h"};
    for (extra, code) in [
        (doc! {"maxDepth": -1}, 40101),
        (doc! {"maxDepth": 1.5}, 40102),
        (doc! {"maxDepth": "x"}, 40100),
        (doc! {"bogus": 1}, 40104),
        (doc! {"restrictSearchWithMatch": 1}, 40185),
        (doc! {"as": 1}, 40103),
    ] {
        let mut spec = base.clone();
        spec.extend(extra.clone());
        assert_eq!(cmd_error(&db, gl(spec)).await.0, code, "{extra}");
    }
    let mut spec = base.clone();
    spec.remove("connectToField");
    assert_eq!(cmd_error(&db, gl(spec)).await.0, 40105);
}

/// Source: https://www.mongodb.com/docs/v8.0/reference/operator/aggregation/densify/
/// ("Densify Time Series Data" with explicit date bounds; "Densification with Partitions"
/// with `full` and `partition` bounds).
#[tokio::test]
async fn densify_matches_the_manual() {
    let s = testkit::spawn().await;
    let db = s.client.database("dens");
    let weather = db.collection::<Document>("weather");
    for (h, t) in [(0, 12), (4, 11), (8, 11), (12, 12)] {
        weather
            .insert_one(doc! {"metadata": {"sensorId": 5578, "type": "temperature"}, "timestamp": date(&format!("2021-05-18T{h:02}:00:00Z")), "temp": t})
            .await
            .unwrap();
    }
    let docs: Vec<Document> = weather
        .aggregate(vec![doc! {"$densify": {"field": "timestamp", "range": {"step": 1, "unit": "hour", "bounds": [date("2021-05-18T00:00:00Z"), date("2021-05-18T08:00:00Z")]}}}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let hours: Vec<(i64, bool)> = docs
        .iter()
        .map(|d| {
            let t = d.get_datetime("timestamp").unwrap().timestamp_millis();
            (
                (t - date("2021-05-18T00:00:00Z").timestamp_millis()) / 3_600_000,
                d.contains_key("temp"),
            )
        })
        .collect();
    assert_eq!(
        hours,
        vec![
            (0, true),
            (1, false),
            (2, false),
            (3, false),
            (4, true),
            (5, false),
            (6, false),
            (7, false),
            (8, true),
            (12, true)
        ]
    );
    assert_eq!(
        docs[1].len(),
        1,
        "a generated document holds only the field: {}",
        docs[1]
    );

    let coffee = db.collection::<Document>("coffee");
    coffee
        .insert_many(vec![
            doc! {"altitude": 600, "variety": "Arabica Typica", "score": 68.3},
            doc! {"altitude": 750, "variety": "Arabica Typica", "score": 69.5},
            doc! {"altitude": 950, "variety": "Arabica Typica", "score": 70.5},
            doc! {"altitude": 1250, "variety": "Gesha", "score": 88.15},
            doc! {"altitude": 1700, "variety": "Gesha", "score": 95.5, "price": 1029},
        ])
        .await
        .unwrap();
    let run = |bounds: &str| {
        let coffee = coffee.clone();
        let bounds = bounds.to_string();
        async move {
            let docs: Vec<Document> = coffee
                .aggregate(vec![doc! {"$densify": {"field": "altitude", "partitionByFields": ["variety"], "range": {"bounds": bounds, "step": 200}}}])
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            docs.iter()
                .map(|d| {
                    (
                        d.get_str("variety").unwrap().chars().next().unwrap(),
                        d.get_i32("altitude").unwrap(),
                        d.contains_key("_id"),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        run("full").await,
        vec![
            ('A', 600, true),
            ('A', 750, true),
            ('A', 800, false),
            ('A', 950, true),
            ('G', 600, false),
            ('G', 800, false),
            ('G', 1000, false),
            ('G', 1200, false),
            ('G', 1250, true),
            ('G', 1400, false),
            ('G', 1600, false),
            ('G', 1700, true),
            ('A', 1000, false),
            ('A', 1200, false),
            ('A', 1400, false),
            ('A', 1600, false),
        ]
    );
    assert_eq!(
        run("partition").await,
        vec![
            ('A', 600, true),
            ('A', 750, true),
            ('A', 800, false),
            ('A', 950, true),
            ('G', 1250, true),
            ('G', 1450, false),
            ('G', 1650, false),
            ('G', 1700, true),
        ]
    );
    let dens = |range: Document| doc! {"aggregate": "coffee", "pipeline": [{"$densify": {"field": "altitude", "range": range}}], "cursor": {}};
    for (range, code) in [
        (doc! {"step": 0, "bounds": "full"}, 5733401),
        (doc! {"step": 1, "bounds": [2, 1]}, 5733402),
        (doc! {"step": 1, "bounds": [1]}, 5733403),
        (doc! {"step": 1, "bounds": "partition"}, 5733408),
        (doc! {"step": 1, "bounds": "other"}, 5946802),
        (doc! {"step": 1, "unit": "day", "bounds": [1, 2]}, 5733409),
        (doc! {"step": 1.5, "unit": "day", "bounds": "full"}, 6586400),
        (doc! {"step": 1, "unit": "day", "bounds": "full"}, 6053600),
        (doc! {"bounds": "full"}, 40414),
    ] {
        assert_eq!(cmd_error(&db, dens(range.clone())).await.0, code, "{range}");
    }
}

/// Source: https://www.mongodb.com/docs/v8.0/reference/operator/aggregation/fill/
/// (constant values; linear; locf; locf within partitions).
#[tokio::test]
async fn fill_matches_the_manual() {
    let s = testkit::spawn().await;
    let db = s.client.database("fill");
    let sales = db.collection::<Document>("dailySales");
    sales
        .insert_many(vec![
            doc! {"_id": 1, "date": date("2022-02-02T00:00:00Z"), "bootsSold": 10, "sandalsSold": 20, "sneakersSold": 12},
            doc! {"_id": 2, "date": date("2022-02-03T00:00:00Z"), "bootsSold": 7, "sneakersSold": 18},
            doc! {"_id": 3, "date": date("2022-02-04T00:00:00Z"), "sneakersSold": 5},
        ])
        .await
        .unwrap();
    let docs: Vec<Document> = sales
        .aggregate(vec![doc! {"$fill": {"output": {"bootsSold": {"value": 0}, "sandalsSold": {"value": 0}, "sneakersSold": {"value": 0}}}}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let keys: Vec<Vec<&str>> = docs
        .iter()
        .map(|d| d.keys().map(String::as_str).collect())
        .collect();
    assert_eq!(
        keys[2],
        vec!["_id", "date", "sneakersSold", "bootsSold", "sandalsSold"]
    );
    assert_eq!(docs[1].get_i32("sandalsSold").unwrap(), 0);
    assert_eq!(docs[0].get_i32("sandalsSold").unwrap(), 20);

    let reviews = db.collection::<Document>("restaurantReviewsMultiple");
    for (r, scores) in [
        ("Joe's Pizza", [Some(90), Some(92), None, Some(93)]),
        ("Sally's Deli", [Some(75), None, Some(68), None]),
    ] {
        for (i, sc) in scores.iter().enumerate() {
            let mut d =
                doc! {"date": date(&format!("2021-03-{:02}T00:00:00Z", 8 + i)), "restaurant": r};
            if let Some(sc) = sc {
                d.insert("score", *sc);
            }
            reviews.insert_one(d).await.unwrap();
        }
    }
    let docs: Vec<Document> = reviews
        .aggregate(vec![doc! {"$fill": {"sortBy": {"date": 1}, "partitionBy": {"restaurant": "$restaurant"}, "output": {"score": {"method": "locf"}}}}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let got: Vec<i32> = docs.iter().map(|d| d.get_i32("score").unwrap()).collect();
    assert_eq!(got, vec![90, 92, 92, 93, 75, 75, 68, 68]);
    let docs: Vec<Document> = reviews
        .aggregate(vec![doc! {"$fill": {"sortBy": {"date": 1}, "partitionByFields": ["restaurant"], "output": {"score": {"method": "linear"}}}}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let got: Vec<Bson> = docs
        .iter()
        .map(|d| d.get("score").cloned().unwrap())
        .collect();
    assert_eq!(
        got,
        vec![
            Bson::Int32(90),
            Bson::Int32(92),
            Bson::Double(92.5),
            Bson::Int32(93),
            Bson::Int32(75),
            Bson::Double(71.5),
            Bson::Int32(68),
            Bson::Null
        ]
    );
    let fill = |spec: Document| doc! {"aggregate": "restaurantReviewsMultiple", "pipeline": [{"$fill": spec}], "cursor": {}};
    for (spec, code) in [
        (doc! {"output": {}}, 6050203),
        (doc! {"output": {"score": 1}}, 6050200),
        (
            doc! {"output": {"score": {"method": "locf", "value": 1}}},
            6050201,
        ),
        (doc! {"output": {"score": {"method": "spline"}}}, 6050202),
        (
            doc! {"partitionBy": "$r", "partitionByFields": ["r"], "output": {"score": {"value": 1}}},
            6050204,
        ),
        (doc! {"output": {"score": {"method": "linear"}}}, 605001),
        (
            doc! {"sortBy": {"date": 1}, "output": {"score": {"method": "linear"}}},
            6050106,
        ),
        (
            doc! {"sortBy": {"restaurant": 1}, "output": {"score": {"method": "linear"}}},
            14,
        ),
    ] {
        assert_eq!(cmd_error(&db, fill(spec.clone())).await.0, code, "{spec}");
    }
}
