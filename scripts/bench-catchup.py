#!/usr/bin/env python3
"""Change-stream catch-up, against a running server: loads N 1 KB documents, then S streams
opened at the time before the load drain them concurrently (in order), printing the
rate and the server's RSS peak (needs --pid-style positional PID).

Usage: bench-catchup.py PORT PID STREAMS N
"""
import sys, time, threading
from pymongo import MongoClient
port, pid, streams, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def rss(k):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(k): return int(line.split()[1]) // 1024
c = MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true", maxPoolSize=streams + 4)
db = c.lag
db.seed.insert_one({"x": 1})
start = c.admin.command("ping")["operationTime"]
pad = "p" * 1000
t = time.time()
for i in range(0, n, 1000):
    db.c.insert_many([{"_id": j, "pad": pad} for j in range(i, min(n, i + 1000))], ordered=False)
print(f"loaded {n} x 1 KB in {time.time()-t:.1f} s; RSS {rss('VmRSS')} MB, peak {rss('VmHWM')} MB")
errors = []
done = [0] * streams
def drain(k):
    try:
        r = db.command({"aggregate": "c", "pipeline": [{"$changeStream": {"startAtOperationTime": start}}], "cursor": {"batchSize": 0}})
        cid = r["cursor"]["id"]; got = 0; last = -1
        while got < n:
            r = db.command({"getMore": cid, "collection": "c", "maxTimeMS": 1000})
            for ev in r["cursor"]["nextBatch"]:
                i = ev["documentKey"]["_id"]
                assert i == last + 1, (i, last)
                last = i; got += 1
        done[k] = got
    except Exception as e:
        errors.append(repr(e))
t = time.time()
ths = [threading.Thread(target=drain, args=(k,)) for k in range(streams)]
for th in ths: th.start()
peak = 0
while any(th.is_alive() for th in ths):
    peak = max(peak, rss('VmRSS')); time.sleep(0.1)
el = time.time() - t
print(f"{streams} streams drained {sum(done)} events in order in {el:.1f} s ({sum(done)/el:,.0f}/s); RSS peak during drain {peak} MB (VmHWM {rss('VmHWM')} MB); errors {errors[:2]}")
time.sleep(5)
print(f"5 s later: RSS {rss('VmRSS')} MB")
