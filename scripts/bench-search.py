#!/usr/bin/env python3
"""Figures for issue 14 over 1,000,000 documents: $text with its index, $near and
$geoWithin with a 2dsphere index, and $setWindowFields, each against a COLLSCAN of the
same data (a {$natural: 1} hint, which reads every document).

Each document: a short text of 4 words from a 5,000-word vocabulary, a GeoJSON point
spread over a 10 x 10 degree square, a group (100 of them) and a number.

Usage: .venv/bin/python scripts/bench-search.py target/release/eddy [N]"""
import random, socket, subprocess, sys, tempfile, time
import pymongo

EDDY = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
port = free_port(); d = tempfile.mkdtemp()
proc = subprocess.Popen([EDDY, "--port", str(port), "--dbpath", d, "--quiet"])
time.sleep(1)
c = pymongo.MongoClient(port=port); db = c.bench
rng = random.Random(7)
vocab = ["w%04dx" % i for i in range(5000)]
t = time.perf_counter()
B = 5000
for i in range(0, N, B):
    db.docs.insert_many([{
        "_id": j,
        "t": " ".join(rng.choice(vocab) for _ in range(4)),
        "loc": {"type": "Point", "coordinates": [rng.uniform(0, 10), rng.uniform(40, 50)]},
        "g": j % 100,
        "v": rng.random(),
    } for j in range(i, i + B)], ordered=False)
print(f"loaded {N:,} documents in {time.perf_counter() - t:.1f} s")

def timed(label, f, runs=3):
    best, out = None, None
    for _ in range(runs):
        t = time.perf_counter(); out = f(); el = time.perf_counter() - t
        best = el if best is None else min(best, el)
    print(f"  {label}: {best * 1000:,.1f} ms (best of {runs})")
    return out, best

t = time.perf_counter(); db.docs.create_index([("t", "text")]); print(f"text index built in {time.perf_counter() - t:.1f} s")
t = time.perf_counter(); db.docs.create_index([("loc", "2dsphere")]); print(f"2dsphere index built in {time.perf_counter() - t:.1f} s")

word = vocab[1234]
print(f"$text {{$search: '{word}'}} (about {N * 4 // 5000:,} matches), sorted by textScore:")
(r1, ti) = timed("with the text index", lambda: list(db.docs.find({"$text": {"$search": word}}, {"score": {"$meta": "textScore"}}).sort([("score", {"$meta": "textScore"})])))
(r2, tc) = timed("COLLSCAN, the same word as a regex", lambda: list(db.docs.find({"t": {"$regex": f"\\b{word}\\b"}}).hint([("$natural", 1)])), runs=1)
print(f"  {len(r1):,} and {len(r2):,} documents; the index is {tc / ti:,.0f}x faster")

here = {"type": "Point", "coordinates": [5.0, 45.0]}
print("$near a point, 10 nearest:")
(r, tn) = timed("with the 2dsphere index", lambda: list(db.docs.find({"loc": {"$near": {"$geometry": here}}}).limit(10)))
far = r[-1]["loc"]["coordinates"]
print(f"  the 10th is at {far}")
radius = 0.2 / 57.2958  # 0.2 degrees, in radians
q = {"loc": {"$geoWithin": {"$centerSphere": [[5.0, 45.0], radius]}}}
print("$geoWithin $centerSphere of 0.2 degrees (about 22 km):")
(r1, ti) = timed("with the 2dsphere index", lambda: list(db.docs.find(q)))
(r2, tc) = timed("COLLSCAN", lambda: list(db.docs.find(q).hint([("$natural", 1)])), runs=1)
print(f"  {len(r1):,} and {len(r2):,} documents; the index is {tc / ti:,.0f}x faster; $near's 10 took {tn * 1000:.1f} ms")

print("$setWindowFields over every document, 100 partitions, sorted by v: a running sum and a moving average over documents [-5, 5]:")
win = [{"$setWindowFields": {"partitionBy": "$g", "sortBy": {"v": 1}, "output": {
    "run": {"$sum": "$v", "window": {"documents": ["unbounded", "current"]}},
    "avg": {"$avg": "$v", "window": {"documents": [-5, 5]}},
    "rank": {"$rank": {}}}}}, {"$count": "n"}]
(r, tw) = timed("$setWindowFields", lambda: list(db.docs.aggregate(win, allowDiskUse=True)), runs=1)
(r0, tc) = timed("COLLSCAN of the same documents ($count)", lambda: list(db.docs.aggregate([{"$match": {"v": {"$gte": 0}}}, {"$count": "n"}])), runs=1)
print(f"  {r[0]['n']:,} documents; the window stage costs {tw / tc:.1f}x a plain scan")
proc.kill()
