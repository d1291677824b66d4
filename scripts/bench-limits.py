#!/usr/bin/env python3
"""Figures for the limits of issue 16, against a running server (eddy or mongod).

  sort      a $sort of about 1 GB (1,000,000 documents of 1 KB, by a random key) with
            allowDiskUse, read to the end: seconds, and the server's peak RSS (VmHWM, with
            --pid) before and after.
  lookup    $lookup of N outer documents (default 10,000) against a 1,000,000-document
            collection indexed on the join field, localField/foreignField and let/pipeline.
  validate  inserts/s into a collection without and with a $jsonSchema validator.
  scan      1,000,000 small documents inserted in shuffled _id order: the load rate, a
            full collection scan (natural order) with a filter matching nothing, the same
            backwards, and a scan in _id order.

Usage: bench-limits.py --uri mongodb://127.0.0.1:27017 [--pid PID] [--outer N] [sort|lookup|validate]...
"""
import argparse
import random
import time

from pymongo import MongoClient


def rss_peak_mb(pid):
    if not pid:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def rss_now_mb(pid):
    if not pid:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def fill(coll, n, make, batch=1000):
    docs = []
    for i in range(n):
        docs.append(make(i))
        if len(docs) == batch:
            coll.insert_many(docs, ordered=False)
            docs = []
    if docs:
        coll.insert_many(docs, ordered=False)


def bench_sort(db, pid):
    c = db.big
    if c.estimated_document_count() < 1_000_000:
        c.drop()
        rnd = random.Random(1)
        pad = "x" * 960
        t = time.time()
        fill(c, 1_000_000, lambda i: {"_id": i, "r": rnd.random(), "pad": pad})
        print(f"sort: loaded 1,000,000 x 1 KB in {time.time() - t:.1f} s")
    print(f"sort: server RSS before {rss_now_mb(pid)} MB, peak so far {rss_peak_mb(pid)} MB")
    t = time.time()
    n = 0
    last = -1.0
    for d in c.aggregate([{"$sort": {"r": 1}}], allowDiskUse=True, batchSize=1000):
        assert d["r"] >= last
        last = d["r"]
        n += 1
    el = time.time() - t
    print(f"sort: {n} documents (~1 GB) sorted with allowDiskUse in {el:.1f} s; "
          f"server RSS now {rss_now_mb(pid)} MB, peak {rss_peak_mb(pid)} MB")


def bench_lookup(db, outer_n):
    f = db.foreign
    if f.estimated_document_count() < 1_000_000:
        f.drop()
        t = time.time()
        fill(f, 1_000_000, lambda i: {"_id": i, "k": i, "v": f"value-{i}"})
        f.create_index("k")
        print(f"lookup: loaded 1,000,000 indexed foreign documents in {time.time() - t:.1f} s")
    o = db.outer
    o.drop()
    rnd = random.Random(2)
    fill(o, outer_n, lambda i: {"_id": i, "k": rnd.randrange(1_000_000)})
    for name, stage in [
        ("localField/foreignField", {"$lookup": {"from": "foreign", "localField": "k", "foreignField": "k", "as": "m"}}),
        ("let/pipeline $expr $eq", {"$lookup": {"from": "foreign", "let": {"kk": "$k"}, "pipeline": [{"$match": {"$expr": {"$eq": ["$k", "$$kk"]}}}], "as": "m"}}),
    ]:
        t = time.time()
        n = sum(1 for d in o.aggregate([stage]) if len(d["m"]) == 1)
        el = time.time() - t
        print(f"lookup ({name}): {outer_n} outer documents, {n} matched, in {el:.2f} s ({outer_n / el:,.0f} outer docs/s)")


def bench_validate(db):
    schema = {"$jsonSchema": {"bsonType": "object", "required": ["name", "year", "gpa"], "properties": {
        "name": {"bsonType": "string"}, "year": {"bsonType": "int", "minimum": 2017, "maximum": 3017},
        "gpa": {"bsonType": ["double"]}, "tags": {"bsonType": "array", "items": {"bsonType": "string"}}}}}
    for label, opts in [("no validator", {}), ("$jsonSchema validator", {"validator": schema})]:
        for mode in ["insert_one", "insert_many(100)"]:
            db.drop_collection("v")
            db.create_collection("v", **opts)
            c = db.v
            n = 5_000 if mode == "insert_one" else 50_000
            make = lambda i: {"name": f"student {i}", "year": 2020 + i % 5, "gpa": 3.5, "tags": ["a", "b"]}
            t = time.time()
            if mode == "insert_one":
                for i in range(n):
                    c.insert_one(make(i))
            else:
                fill(c, n, make, batch=100)
            el = time.time() - t
            print(f"validate: {label}, {mode}: {n / el:,.0f} inserts/s")


def bench_scan(db):
    c = db.scan
    c.drop()
    ids = list(range(1_000_000))
    random.Random(3).shuffle(ids)
    t = time.time()
    fill(c, len(ids), lambda i: {"_id": ids[i], "x": i, "s": "abcdefghij"})
    el = time.time() - t
    print(f"scan: loaded 1,000,000 documents in shuffled _id order in {el:.1f} s ({1_000_000 / el:,.0f}/s)")
    for label, kwargs in [
        ("natural order", {}),
        ("natural order backwards", {"hint": {"$natural": -1}}),
        ("_id order", {"hint": {"_id": 1}}),
    ]:
        best = None
        for _ in range(3):
            t = time.time()
            n = len(list(c.find({"absent": 1}, **kwargs)))
            el = time.time() - t
            best = el if best is None else min(best, el)
        print(f"scan: {label}, 1,000,000 documents examined, {n} returned: best of 3 {best:.2f} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--uri", default="mongodb://127.0.0.1:27017/?directConnection=true")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--outer", type=int, default=10_000)
    ap.add_argument("what", nargs="*", default=["sort", "lookup", "validate"])
    a = ap.parse_args()
    db = MongoClient(a.uri).bench_limits
    for w in a.what:
        {"sort": lambda: bench_sort(db, a.pid), "lookup": lambda: bench_lookup(db, a.outer),
         "validate": lambda: bench_validate(db), "scan": lambda: bench_scan(db)}[w]()


if __name__ == "__main__":
    main()
