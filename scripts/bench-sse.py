#!/usr/bin/env python3
"""Change streams over Server-Sent Events against the same streams over the wire protocol:
K clients (1, then 1,000) each follow one collection while a writer inserts at a fixed rate.
Prints insert-start -> event-received latency (p50/p99, measured by the clients, which share
this machine's 2 cores with the server) and the server's CPU per 1,000 deliveries.

SSE clients are raw asyncio sockets reading the event stream, as a browser's EventSource
would; wire clients are PyMongo change streams (one thread each).

Usage: scripts/bench-sse.py target/release/eddy [inserts] [rate/s]"""
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import pymongo

EDDY = sys.argv[1] if len(sys.argv) > 1 else "target/release/eddy"
INSERTS = int(sys.argv[2]) if len(sys.argv) > 2 else 400
RATE = int(sys.argv[3]) if len(sys.argv) > 3 else 100


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def write(coll, n, rate):
    start = time.time()
    for i in range(n):
        target = start + i / rate
        d = target - time.time()
        if d > 0:
            time.sleep(d)
        coll.insert_one({"i": i, "t": time.time()})


async def sse_client(port, path, n, lat, ready):
    r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    await w.drain()
    got = 0
    while got < n:
        line = await r.readline()
        if not line:
            break
        if line.startswith(b"retry:"):
            ready()
        if line.startswith(b"data: {") and b'"fullDocument"' in line:
            now = time.time()
            # The insert's time, without parsing the whole event (the client shares the
            # machine's cores with the server).
            at = line.rindex(b'"t":') + 4
            end = at
            while line[end] not in b",}":
                end += 1
            lat.append(now - float(line[at:end]))
            got += 1
    w.close()


def run_sse(port, http_port, pid, k):
    client = pymongo.MongoClient("127.0.0.1", port, directConnection=True)
    coll = client.bench[f"sse{k}"]
    coll.drop()
    coll.insert_one({"warm": 1})
    lat = []

    async def main():
        opened = 0
        ev = asyncio.Event()

        def ready():
            nonlocal opened
            opened += 1
            if opened == k:
                ev.set()

        tasks = [asyncio.create_task(sse_client(http_port, f"/v1/watch/bench/sse{k}", INSERTS, lat, ready))
                 for _ in range(k)]
        await asyncio.wait_for(ev.wait(), 120)
        await asyncio.sleep(0.5)
        c0 = cpu(pid)
        w = threading.Thread(target=write, args=(coll, INSERTS, RATE))
        w.start()
        await asyncio.wait_for(asyncio.gather(*tasks), 600)
        w.join()
        return cpu(pid) - c0

    used = asyncio.run(main())
    report("SSE", k, lat, used)


def run_wire(port, pid, k):
    client = pymongo.MongoClient("127.0.0.1", port, directConnection=True, maxPoolSize=k + 8)
    coll = client.bench[f"wire{k}"]
    coll.drop()
    coll.insert_one({"warm": 1})
    lat = []
    lock = threading.Lock()
    opened = threading.Barrier(k + 1)

    def follow():
        with coll.watch(max_await_time_ms=500) as s:
            s.try_next()
            opened.wait()
            got = 0
            while got < INSERTS:
                e = s.try_next()
                if e is None:
                    continue
                now = time.time()
                with lock:
                    lat.append(now - e["fullDocument"]["t"])
                got += 1

    threads = [threading.Thread(target=follow) for _ in range(k)]
    for t in threads:
        t.start()
    opened.wait(300)
    time.sleep(0.5)
    c0 = cpu(pid)
    write(coll, INSERTS, RATE)
    for t in threads:
        t.join(600)
    report("wire", k, lat, cpu(pid) - c0)


def report(kind, k, lat, used):
    lat = sorted(lat)
    n = len(lat)
    p = lambda q: lat[min(n - 1, int(q * n))] * 1000
    print(f"{kind:4} {k:5} clients: {n} deliveries, latency p50 {p(0.5):.2f} ms p99 {p(0.99):.2f} ms, "
          f"server CPU {used * 1000 / (n / 1000):.1f} ms per 1,000 deliveries", flush=True)


def main():
    port, http_port = free_port(), free_port()
    data = tempfile.mkdtemp()
    p = subprocess.Popen([EDDY, "--port", str(port), "--dbpath", data, "--quiet", "--httpPort", str(http_port)])
    time.sleep(1)
    try:
        print(f"{INSERTS} inserts at {RATE}/s, each delivered to every client")
        for k in (1, 1000):
            run_sse(port, http_port, p.pid, k)
            run_wire(port, p.pid, k)
    finally:
        p.kill()


main()
