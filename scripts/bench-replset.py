"""Replica set figures, one run: majority-write latency and throughput on three members
against one (a single-node eddy), time to elect a new primary after SIGKILL, change
stream delivery latency on the primary against a secondary, and the catch-up rate of a
member that rejoins CATCHUP_MB (default 1024) megabytes of writes behind.

Usage: python scripts/bench-replset.py [EDDY_BIN]   (default target/release/eddy)
Starts its own servers on free ports with temporary data directories.
"""

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from pymongo import MongoClient

EDDY = sys.argv[1] if len(sys.argv) > 1 else "target/release/eddy"
N = 2000


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


CATCHUP_MB = int(os.environ.get("CATCHUP_MB", "1024"))


def start(port, dbpath, rs):
    args = [EDDY, "--port", str(port), "--dbpath", dbpath, "--quiet"]
    if rs:
        # Room for the catch-up run's writes in the log (it is caught up from the log).
        args += ["--replSet", "rs0", "--oplogSize", str(CATCHUP_MB * 3)]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return p
        except OSError:
            time.sleep(0.05)


def pct(v, q):
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))]


def writes(coll):
    lat = []
    t0 = time.perf_counter()
    for i in range(N):
        s = time.perf_counter()
        coll.insert_one({"i": i})
        lat.append((time.perf_counter() - s) * 1e6)
    rate = N / (time.perf_counter() - t0)
    return rate, pct(lat, 0.5), pct(lat, 0.99)


def stream_latency(writer_coll, reader_client, n=300):
    """insert-start -> event received, through a stream on `reader_client`."""
    sent = {}
    got = {}
    ready = threading.Event()

    def reader():
        with reader_client.test.lat.watch(max_await_time_ms=100) as s:
            ready.set()
            while len(got) < n:
                e = s.try_next()
                if e is not None:
                    got[e["fullDocument"]["i"]] = time.perf_counter()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    ready.wait()
    time.sleep(0.3)
    for i in range(n):
        sent[i] = time.perf_counter()
        writer_coll.insert_one({"i": i})
        time.sleep(0.005)
    t.join(30)
    lat = [(got[i] - sent[i]) * 1e6 for i in range(n) if i in got]
    return pct(lat, 0.5), pct(lat, 0.99)


def main():
    root = tempfile.mkdtemp(prefix="eddy-rsbench-")
    # One node.
    p1 = free_port()
    single = start(p1, os.path.join(root, "single"), rs=False)
    c = MongoClient(f"mongodb://localhost:{p1}/?directConnection=true")
    r1 = writes(c.test.w)
    single.send_signal(signal.SIGTERM)
    single.wait()
    # Three members.
    ports = [free_port() for _ in range(3)]
    procs = [start(p, os.path.join(root, f"m{i}"), rs=True) for i, p in enumerate(ports)]
    seed = MongoClient(f"mongodb://localhost:{ports[0]}/?directConnection=true")
    seed.admin.command("replSetInitiate", {
        "_id": "rs0", "members": [{"_id": i, "host": f"localhost:{p}"} for i, p in enumerate(ports)],
        "settings": {"electionTimeoutMillis": 2000, "heartbeatIntervalMillis": 500}})
    while not seed.admin.command("hello").get("isWritablePrimary"):
        time.sleep(0.05)
    uri = "mongodb://" + ",".join(f"localhost:{p}" for p in ports) + "/?replicaSet=rs0"
    rs = MongoClient(uri)
    r3 = writes(rs.test.w)
    prim = stream_latency(rs.test.lat, MongoClient(uri))
    sec = stream_latency(rs.test.lat, MongoClient(uri, readPreference="secondary"))
    # Election after SIGKILL of the primary.
    elections = []
    for _ in range(3):
        primary = next(i for i, p in enumerate(ports)
                       if MongoClient(f"mongodb://localhost:{p}/?directConnection=true")
                       .admin.command("hello").get("isWritablePrimary"))
        procs[primary].send_signal(signal.SIGKILL)
        procs[primary].wait()
        t0 = time.perf_counter()
        found = False
        while not found:
            for i, p in enumerate(ports):
                if i == primary:
                    continue
                try:
                    h = MongoClient(f"mongodb://localhost:{p}/?directConnection=true",
                                    serverSelectionTimeoutMS=500).admin.command("hello")
                    found = found or h.get("isWritablePrimary")
                except Exception:
                    pass
            time.sleep(0.01)
        elections.append(time.perf_counter() - t0)
        procs[primary] = start(ports[primary], os.path.join(root, f"m{primary}"), rs=True)
        time.sleep(2)
    catch = catch_up(ports, procs, root)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    print(f"single node, w:1 (one pymongo writer, {N} inserts): {r1[0]:,.0f}/s, "
          f"p50 {r1[1]:,.0f} us, p99 {r1[2]:,.0f} us")
    print(f"3 members, w:majority (the default): {r3[0]:,.0f}/s, p50 {r3[1]:,.0f} us, "
          f"p99 {r3[2]:,.0f} us")
    print(f"change stream, insert-start -> event, stream on the primary: p50 {prim[0]:,.0f} us, "
          f"p99 {prim[1]:,.0f} us; on a secondary: p50 {sec[0]:,.0f} us, p99 {sec[1]:,.0f} us")
    print("new primary after SIGKILL (electionTimeoutMillis 2000): "
          + ", ".join(f"{t:.2f} s" for t in elections)
          + f" (median {statistics.median(elections):.2f} s)")
    print(f"catch-up of a member rejoining {catch[0]:,.0f} MB of writes behind: {catch[1]:.1f} s "
          f"({catch[0] / catch[1]:,.0f} MB/s; the writes took {catch[2]:.1f} s with w: majority)")


def optime(port):
    h = MongoClient(f"mongodb://localhost:{port}/?directConnection=true",
                    serverSelectionTimeoutMS=2000).admin.command("hello")
    return h["lastWrite"]["majorityOpTime"]["ts"]


def catch_up(ports, procs, root):
    """Kills a secondary, writes CATCHUP_MB MB (1 KB documents, w: majority) to the other
    two, restarts it and times until it has applied everything the primary has."""
    uri = "mongodb://" + ",".join(f"localhost:{p}" for p in ports) + "/?replicaSet=rs0"
    client = MongoClient(uri)
    primary = next(i for i, p in enumerate(ports)
                   if MongoClient(f"mongodb://localhost:{p}/?directConnection=true")
                   .admin.command("hello").get("isWritablePrimary"))
    lag = next(i for i in range(3) if i != primary)
    procs[lag].send_signal(signal.SIGKILL)
    procs[lag].wait()
    pad = "x" * 1000
    coll = client.test.catchup
    t0 = time.perf_counter()
    written = 0
    n = 0
    while written < CATCHUP_MB * 1024 * 1024:
        coll.insert_many([{"_id": n + j, "pad": pad} for j in range(1000)], ordered=False)
        n += 1000
        written += 1000 * 1030
    wrote = time.perf_counter() - t0
    target = optime(ports[primary])
    t0 = time.perf_counter()
    procs[lag] = start(ports[lag], os.path.join(root, f"m{lag}"), rs=True)
    while True:
        try:
            if optime(ports[lag]) >= target:
                break
        except Exception:
            pass
        time.sleep(0.05)
    return written / 1e6, time.perf_counter() - t0, wrote


if __name__ == "__main__":
    main()
