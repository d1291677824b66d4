// geo: 2dsphere indexes, $near/$nearSphere, $geoWithin, $geoIntersects and $geoNear,
// against the examples of MongoDB's manual (each with its source).

use bson::{Bson, Document, doc};
use futures_util::TryStreamExt;
use mongodb::{Collection, Database};

use crate::cmd_error;

/// The manual's `places` collection with a 2dsphere index.
/// Source: https://www.mongodb.com/docs/v8.0/reference/operator/aggregation/geoNear/
async fn places(db: &Database) -> Collection<Document> {
    let c = db.collection::<Document>("places");
    c.insert_many(vec![
        doc! {"name": "Central Park", "location": {"type": "Point", "coordinates": [-73.97, 40.77]}, "category": "Parks"},
        doc! {"name": "Sara D. Roosevelt Park", "location": {"type": "Point", "coordinates": [-73.9928, 40.7193]}, "category": "Parks"},
        doc! {"name": "Polo Grounds", "location": {"type": "Point", "coordinates": [-73.9375, 40.8303]}, "category": "Stadiums"},
    ])
    .await
    .unwrap();
    db.run_command(doc! {"createIndexes": "places", "indexes": [{"key": {"location": "2dsphere"}, "name": "location_2dsphere"}]})
        .await
        .unwrap();
    c
}

async fn names(c: &Collection<Document>, filter: Document) -> Vec<String> {
    c.find(filter)
        .await
        .unwrap()
        .try_collect::<Vec<Document>>()
        .await
        .unwrap()
        .iter()
        .map(|d| d.get_str("name").unwrap().to_string())
        .collect()
}

/// Great-circle distance in metres over mongod's radius (6,378,100 m).
fn metres(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, la2) = (a.1.to_radians(), b.1.to_radians());
    let dlat = la2 - la1;
    let dlng = (b.0 - a.0).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlng / 2.0).sin().powi(2);
    2.0 * h.sqrt().asin() * 6_378_100.0
}

/// Sources: the `$geoNear` page ("Maximum Distance" — Sara D. Roosevelt Park at
/// 0.9539931676365992 m with `dist.location`; "Minimum Distance" — Central Park), and the
/// `$near` page (GeoJSON point, `$minDistance` 1000, `$maxDistance` 5000, nearest first).
#[tokio::test]
async fn near_and_geo_near_match_the_manual() {
    let s = testkit::spawn().await;
    let db = s.client.database("geo");
    let c = places(&db).await;
    let docs: Vec<Document> = c
        .aggregate(vec![doc! {"$geoNear": {
            "near": {"type": "Point", "coordinates": [-73.99279, 40.719296]},
            "distanceField": "dist.calculated",
            "maxDistance": 2,
            "query": {"category": "Parks"},
            "includeLocs": "dist.location",
            "spherical": true,
        }}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(docs.len(), 1, "{docs:?}");
    assert_eq!(docs[0].get_str("name").unwrap(), "Sara D. Roosevelt Park");
    let dist = docs[0].get_document("dist").unwrap();
    let d = dist.get_f64("calculated").unwrap();
    assert!((d - 0.9539931676365992).abs() < 1e-6, "{d}");
    assert_eq!(
        dist.get_document("location").unwrap(),
        &doc! {"type": "Point", "coordinates": [-73.9928, 40.7193]}
    );
    assert!(!docs[0].keys().any(|k| k.starts_with('$')), "{:?}", docs[0]);

    let docs: Vec<Document> = c
        .aggregate(vec![doc! {"$geoNear": {
            "near": {"type": "Point", "coordinates": [-73.99279, 40.719296]},
            "distanceField": "dist.calculated",
            "minDistance": 2,
            "query": {"category": "Parks"},
            "spherical": true,
        }}])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0].get_str("name").unwrap(), "Central Park");

    // Every place, nearest first, with its distance.
    let here = (-73.99279, 40.719296);
    let docs: Vec<Document> = c
        .aggregate(vec![
            doc! {"$geoNear": {"near": {"type": "Point", "coordinates": [here.0, here.1]}, "distanceField": "d"}},
            doc! {"$project": {"_id": 0, "name": 1, "d": 1}},
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let got: Vec<&str> = docs.iter().map(|d| d.get_str("name").unwrap()).collect();
    assert_eq!(
        got,
        vec!["Sara D. Roosevelt Park", "Central Park", "Polo Grounds"]
    );
    let central = docs[1].get_f64("d").unwrap();
    assert!(
        (central - metres(here, (-73.97, 40.77))).abs() < 0.01,
        "{central}"
    );

    // $near with GeoJSON: metres, between the bounds, nearest first.
    let near = |min: f64, max: f64| {
        doc! {"location": {"$near": {"$geometry": {"type": "Point", "coordinates": [-73.9667, 40.78]}, "$minDistance": min, "$maxDistance": max}}}
    };
    assert_eq!(names(&c, near(1000.0, 5000.0)).await, vec!["Central Park"]);
    assert_eq!(
        names(&c, near(0.0, 100_000.0)).await,
        vec!["Central Park", "Polo Grounds", "Sara D. Roosevelt Park"]
    );
    // $nearSphere with a legacy point: radians.
    let r = 7000.0 / 6_378_100.0;
    let legacy = doc! {"location": {"$nearSphere": [-73.9667, 40.78], "$maxDistance": r}};
    assert_eq!(
        names(&c, legacy).await,
        vec!["Central Park", "Polo Grounds"]
    );
    let explain = db
        .run_command(doc! {"explain": {"find": "places", "filter": near(0.0, 5000.0)}})
        .await
        .unwrap();
    let plan = explain
        .get_document("queryPlanner")
        .unwrap()
        .get_document("winningPlan")
        .unwrap();
    assert_eq!(
        plan.get_str("stage").unwrap(),
        "GEO_NEAR_2DSPHERE",
        "{plan}"
    );

    // Without a geospatial index, $near has no plan; $geoNear says so too.
    let other = db.collection::<Document>("noindex");
    other
        .insert_one(doc! {"location": [1.0, 2.0]})
        .await
        .unwrap();
    let q = doc! {"find": "noindex", "filter": {"location": {"$nearSphere": [1.0, 2.0]}}};
    assert_eq!(cmd_error(&db, q).await.0, 291);
    let g = doc! {"aggregate": "noindex", "pipeline": [{"$geoNear": {"near": [1.0, 2.0], "distanceField": "d"}}], "cursor": {}};
    assert_eq!(cmd_error(&db, g).await.0, 27);
    let late = doc! {"aggregate": "places", "pipeline": [{"$match": {}}, {"$geoNear": {"near": [1.0, 2.0], "distanceField": "d"}}], "cursor": {}};
    assert_eq!(cmd_error(&db, late).await.0, 40602);
}

/// Sources: the `$geoWithin` page (a GeoJSON Polygon; `$centerSphere` with a radius of
/// 10 miles as 10 / 3963.2 radians; the legacy `$box`, `$polygon` and `$center`) and the
/// `$geoIntersects` page (a Polygon against points, lines and polygons).
#[tokio::test]
async fn within_and_intersects_match_the_manual() {
    let s = testkit::spawn().await;
    let db = s.client.database("geo");
    let c = db.collection::<Document>("shapes");
    c.insert_many(vec![
        doc! {"_id": 1, "loc": {"type": "Point", "coordinates": [1.0, 1.0]}},
        doc! {"_id": 2, "loc": {"type": "Point", "coordinates": [5.0, 5.0]}},
        doc! {"_id": 3, "loc": {"type": "LineString", "coordinates": [[-1.0, 2.0], [2.0, 2.0]]}},
        doc! {"_id": 4, "loc": {"type": "Polygon", "coordinates": [[[10.0, 10.0], [12.0, 10.0], [12.0, 12.0], [10.0, 10.0]]]}},
        doc! {"_id": 5, "loc": [2.0, 3.0]},
        doc! {"_id": 6, "loc": {"type": "Point", "coordinates": [-88.0, 30.1]}},
        doc! {"_id": 7, "other": 1},
    ])
    .await
    .unwrap();
    let tri =
        doc! {"type": "Polygon", "coordinates": [[[0.0, 0.0], [3.0, 6.0], [6.0, 1.0], [0.0, 0.0]]]};
    let ids = |filter: Document| {
        let c = c.clone();
        async move {
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
    };
    // Without and then with the index: the same answers.
    for indexed in [false, true] {
        if indexed {
            db.run_command(doc! {"createIndexes": "shapes", "indexes": [{"key": {"loc": "2dsphere"}, "name": "loc"}]})
                .await
                .unwrap();
        }
        assert_eq!(
            ids(doc! {"loc": {"$geoWithin": {"$geometry": tri.clone()}}}).await,
            vec![1, 5],
            "indexed {indexed}"
        );
        assert_eq!(
            ids(doc! {"loc": {"$geoIntersects": {"$geometry": tri.clone()}}}).await,
            vec![1, 3, 5],
            "indexed {indexed}"
        );
        assert_eq!(
            ids(doc! {"loc": {"$geoWithin": {"$centerSphere": [[-88.0, 30.0], 10.0 / 3963.2]}}})
                .await,
            vec![6]
        );
        assert_eq!(
            ids(doc! {"loc": {"$geoWithin": {"$box": [[0, 0], [3, 3]]}}}).await,
            vec![1, 5]
        );
        assert_eq!(
            ids(doc! {"loc": {"$geoWithin": {"$polygon": [[0, 0], [3, 0], [3, 4], [0, 4]]}}}).await,
            vec![1, 5]
        );
        assert_eq!(
            ids(doc! {"loc": {"$geoWithin": {"$center": [[2, 2], 1.5]}}}).await,
            vec![1, 5]
        );
        let big = doc! {"type": "Polygon", "coordinates": [[[9.0, 9.0], [13.0, 9.0], [13.0, 13.0], [9.0, 13.0], [9.0, 9.0]]]};
        assert_eq!(
            ids(doc! {"loc": {"$geoWithin": {"$geometry": big.clone()}}}).await,
            vec![4]
        );
        let point = doc! {"type": "Point", "coordinates": [11.5, 10.5]};
        assert_eq!(
            ids(doc! {"loc": {"$geoIntersects": {"$geometry": point}}}).await,
            vec![4]
        );
    }
    // The index refuses what is not a location, and keeps the document out.
    let e = c
        .insert_one(doc! {"_id": 8, "loc": {"type": "Point", "coordinates": [200.0, 0.0]}})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("16755"), "{e}");
    assert!(c.find_one(doc! {"_id": 8}).await.unwrap().is_none());
    for (f, code) in [
        (
            doc! {"loc": {"$geoWithin": {"$geometry": {"type": "Point", "coordinates": [0, 0]}}}},
            2,
        ),
        (doc! {"loc": {"$geoWithin": 5}}, 2),
        (
            doc! {"loc": {"$geoIntersects": {"$geometry": {"type": "Blob", "coordinates": [0, 0]}}}},
            2,
        ),
        (
            doc! {"loc": {"$geoWithin": {"$geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 1]]]}}}},
            2,
        ),
    ] {
        assert_eq!(
            cmd_error(&db, doc! {"find": "shapes", "filter": f.clone()})
                .await
                .0,
            code,
            "{f}"
        );
    }
    let _ = Bson::Null;
}

/// Sources: https://www.mongodb.com/docs/v8.0/core/indexes/index-types/geospatial/2d/
/// (legacy pairs on a flat plane; `min`/`max` bounds, points outside refused;
/// `$near` with `$maxDistance` in coordinate units; `$geoWithin` `$box`/`$center`/
/// `$polygon`) and the `$nearSphere` page (legacy points, radians).
#[tokio::test]
async fn flat_2d_indexes_serve_near_and_within() {
    let s = testkit::spawn().await;
    let db = s.client.database("geo");
    let c = db.collection::<Document>("grid");
    let mut docs = Vec::new();
    for x in 0..20 {
        for y in 0..20 {
            docs.push(doc! {"_id": x * 100 + y, "p": [f64::from(x), f64::from(y)]});
        }
    }
    c.insert_many(docs).await.unwrap();
    db.run_command(doc! {"createIndexes": "grid", "indexes": [{"key": {"p": "2d"}, "name": "p_2d", "min": 0, "max": 100, "bits": 20}]})
        .await
        .unwrap();
    let ids = |filter: Document, limit: i64| {
        let c = c.clone();
        async move {
            c.find(filter)
                .limit(limit)
                .await
                .unwrap()
                .try_collect::<Vec<Document>>()
                .await
                .unwrap()
                .iter()
                .map(|d| d.get_i32("_id").unwrap())
                .collect::<Vec<_>>()
        }
    };
    // Nearest first by flat distance; ties in the order found.
    let near = ids(doc! {"p": {"$near": [5.2, 5.1]}}, 3).await;
    assert_eq!(near[0], 505);
    let mut next: Vec<i32> = near[1..].to_vec();
    next.sort_unstable();
    assert_eq!(next, vec![506, 605]);
    assert_eq!(
        ids(doc! {"p": {"$near": [5.0, 5.0], "$maxDistance": 1.0}}, 0)
            .await
            .len(),
        5
    );
    let explain = db
        .run_command(doc! {"explain": {"find": "grid", "filter": {"p": {"$near": [5.0, 5.0]}}}})
        .await
        .unwrap();
    let stage = explain
        .get_document("queryPlanner")
        .unwrap()
        .get_document("winningPlan")
        .unwrap()
        .get_str("stage")
        .unwrap()
        .to_string();
    assert_eq!(stage, "GEO_NEAR_2D");
    // $geoWithin: the same answers through the index as by a scan.
    for shape in [
        doc! {"$box": [[2.5, 3.5], [4.5, 6.5]]},
        doc! {"$center": [[10, 10], 2]},
        doc! {"$polygon": [[0, 0], [4, 0], [0, 4]]},
        doc! {"$centerSphere": [[10, 10], 0.03]},
    ] {
        let f = doc! {"p": {"$geoWithin": shape.clone()}};
        let mut with: Vec<i32> = ids(f.clone(), 0).await;
        with.sort_unstable();
        let scan: Vec<i32> = c
            .find(f.clone())
            .hint(mongodb::options::Hint::Keys(doc! {"$natural": 1}))
            .await
            .unwrap()
            .try_collect::<Vec<Document>>()
            .await
            .unwrap()
            .iter()
            .map(|d| d.get_i32("_id").unwrap())
            .collect();
        let mut scan = scan;
        scan.sort_unstable();
        assert!(!with.is_empty(), "{shape}");
        assert_eq!(with, scan, "{shape}");
    }
    assert_eq!(
        ids(
            doc! {"p": {"$geoWithin": {"$box": [[2.5, 3.5], [4.5, 6.5]]}}},
            0
        )
        .await
        .len(),
        6
    );
    // $nearSphere over a 2d index: radians.
    let sphere = ids(
        doc! {"p": {"$nearSphere": [10.0, 10.0], "$maxDistance": 0.018}},
        0,
    )
    .await;
    assert_eq!(sphere[0], 1010);
    assert_eq!(sphere.len(), 5, "{sphere:?}");
    // Outside the index's bounds: refused.
    let e = c
        .insert_one(doc! {"_id": 9999, "p": [150.0, 1.0]})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("13027"), "{e}");
    let bad =
        doc! {"createIndexes": "g2", "indexes": [{"key": {"p": "2d"}, "name": "b", "bits": 40}]};
    assert_eq!(cmd_error(&db, bad).await.0, 67);
    // A legacy $near needs a 2d index, not a 2dsphere one.
    let sph = db.collection::<Document>("sph");
    sph.insert_one(doc! {"p": [1.0, 1.0]}).await.unwrap();
    db.run_command(
        doc! {"createIndexes": "sph", "indexes": [{"key": {"p": "2dsphere"}, "name": "p"}]},
    )
    .await
    .unwrap();
    let q = doc! {"find": "sph", "filter": {"p": {"$near": [1.0, 1.0]}}};
    assert_eq!(cmd_error(&db, q).await.0, 291);
}
