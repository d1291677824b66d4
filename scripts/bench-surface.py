#!/usr/bin/env python3
"""Figures for issue 14: capped inserts (with eviction) against plain inserts,
a tailable awaitData cursor's delivery latency, and the TTL monitor's deletion rate.

Usage: .venv/bin/python scripts/bench-surface.py target/release/eddy"""
import datetime, socket, subprocess, sys, tempfile, time
import pymongo
from pymongo import CursorType

EDDY = sys.argv[1]
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
port = free_port(); d = tempfile.mkdtemp()
proc = subprocess.Popen([EDDY, "--port", str(port), "--dbpath", d, "--quiet", "--setParameter", "ttlMonitorSleepSecs=1"])
time.sleep(1)
c = pymongo.MongoClient(port=port); db = c.bench
N, B = 50_000, 500
def load(coll):
    t = time.perf_counter()
    for i in range(0, N, B):
        coll.insert_many([{"i": j, "pad": "x" * 100} for j in range(i, i + B)])
    return N / (time.perf_counter() - t)
db.create_collection("plain")
db.create_collection("capped", capped=True, size=1 << 20)
plain = load(db.plain); capped = load(db.capped)
print(f"insert_many({B}) x {N // B}: plain {plain:,.0f} docs/s, capped 1 MB (evicting) {capped:,.0f} docs/s; capped keeps {db.capped.estimated_document_count():,}")
# Tailable awaitData latency: insert, then time until the cursor returns it.
db.create_collection("tail", capped=True, size=1 << 20)
db.tail.insert_one({"seed": 1})
cur = db.tail.find(cursor_type=CursorType.TAILABLE_AWAIT).max_await_time_ms(1000)
next(cur)
lat = []
for i in range(200):
    t = time.perf_counter(); db.tail.insert_one({"i": i})
    while True:
        try:
            next(cur)
            break
        except StopIteration:  # an empty awaitData batch: the cursor stays alive
            continue
    lat.append((time.perf_counter() - t) * 1e6)
lat.sort()
print(f"tailable awaitData, insert to delivery (incl. the insert's round trip): p50 {lat[100]:.0f} us, p99 {lat[197]:.0f} us")
# TTL: 100,000 expired documents.
old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
for i in range(0, 100_000, 1000):
    db.ttl.insert_many([{"at": old, "i": j} for j in range(i, i + 1000)])
t = time.perf_counter()
db.ttl.create_index("at", expireAfterSeconds=60)
while db.ttl.estimated_document_count() > 0:
    time.sleep(0.05)
el = time.perf_counter() - t
print(f"TTL: 100,000 expired documents gone {el:.2f} s after the index was created (monitor every 1 s): {100_000 / el:,.0f} deletes/s incl. the wait for the first pass")
proc.kill()
