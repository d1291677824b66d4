"""Failover test: three eddy members on loopback, a writer and a change stream through
PyMongo with a replica-set URI, while the primary is killed with SIGKILL five times and
then cut off from the others twice (the `raftPartition` fail point).

Checks:
- every write acknowledged with w: "majority" survives, on every member;
- the change stream delivers each of them exactly once, in order, across every failover;
- writes acknowledged with w: 1 by a primary cut off from the majority are rolled back, no
  change stream ever delivers them, and each is in a rollback file
  (`<dbpath>/rollback/<collection UUID>/removed.*.bson`);
- a new primary is elected within the election timeout (plus one heartbeat).

Usage: EDDY_BIN=target/release/eddy python tests/replset/failover.py
Prints the election times it measured.
"""

import glob
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from uuid import UUID

import bson
from pymongo import MongoClient, WriteConcern
from pymongo.errors import PyMongoError

EDDY = os.environ.get("EDDY_BIN", "target/release/eddy")
ELECTION_MS = 2000
HEARTBEAT_MS = 200
KILLS = 5
PARTITIONS = 2


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Member:
    def __init__(self, mid, port, root):
        self.id = mid
        self.port = port
        self.dbpath = os.path.join(root, f"m{mid}")
        self.log = open(os.path.join(root, f"m{mid}.log"), "ab")
        self.proc = None

    @property
    def host(self):
        return f"localhost:{self.port}"

    def start(self):
        self.proc = subprocess.Popen(
            [EDDY, "--port", str(self.port), "--dbpath", self.dbpath, "--replSet", "rs0",
             "--setParameter", "enableTestCommands=1"] + getattr(self, "extra", []),
            stdout=self.log, stderr=self.log)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"member {self.id} did not start")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def direct(self):
        return MongoClient(f"mongodb://{self.host}/?directConnection=true",
                           serverSelectionTimeoutMS=2000, connectTimeoutMS=1000)


def hello(m):
    try:
        with m.direct() as c:
            return c.admin.command("hello")
    except PyMongoError:
        return {}


def wait_primary(members, exclude=None, timeout=30):
    """The member that reports itself writable primary, and how long it took."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        for m in members:
            if m is exclude:
                continue
            if hello(m).get("isWritablePrimary"):
                return m, time.time() - t0
        time.sleep(0.02)
    raise AssertionError("no primary elected")


def main():
    import faulthandler
    # A hang shows where it is: every thread's stack after 8 minutes.
    faulthandler.dump_traceback_later(480, exit=True)
    root = tempfile.mkdtemp(prefix="eddy-rs-")
    members = [Member(i, free_port(), root) for i in range(3)]
    for m in members:
        m.start()
    with members[0].direct() as c:
        c.admin.command("replSetInitiate", {
            "_id": "rs0",
            "members": [{"_id": m.id, "host": m.host} for m in members],
            "settings": {"electionTimeoutMillis": ELECTION_MS, "heartbeatIntervalMillis": HEARTBEAT_MS},
        })
    wait_primary(members)
    uri = "mongodb://" + ",".join(m.host for m in members) + "/?replicaSet=rs0"
    client = MongoClient(uri, serverSelectionTimeoutMS=60000, heartbeatFrequencyMS=500)
    coll = client.test.get_collection("events", write_concern=WriteConcern("majority"))
    coll.insert_one({"_id": -1})

    # The change stream: a separate client, resuming by itself across failovers.
    seen = []
    stop = threading.Event()
    start_at = coll.database.command("hello")["operationTime"]

    def watch():
        wclient = MongoClient(uri, serverSelectionTimeoutMS=60000, heartbeatFrequencyMS=500)
        token = None
        while not stop.is_set():
            try:
                opts = {"resume_after": token} if token else {"start_at_operation_time": start_at}
                with wclient.test.events.watch(max_await_time_ms=200, **opts) as s:
                    while not stop.is_set():
                        e = s.try_next()
                        if e is not None:
                            seen.append(e["documentKey"]["_id"])
                        token = s.resume_token
            except PyMongoError:
                time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    # The writer: sequential ids, w: "majority"; an id counts once acknowledged.
    acked = []
    attempted = set()
    next_id = [0]
    writing = threading.Event()
    writing.set()

    def write():
        while not stop.is_set():
            if not writing.is_set():
                time.sleep(0.01)
                continue
            i = next_id[0]
            attempted.add(i)
            try:
                coll.insert_one({"_id": i})
                acked.append(i)
                next_id[0] += 1
            except PyMongoError as e:
                if "duplicate key" in str(e).lower():
                    # A retry of a write that had committed: it is there.
                    acked.append(i)
                    next_id[0] += 1
                else:
                    time.sleep(0.05)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()

    elections = []
    for k in range(KILLS):
        time.sleep(1.5)
        primary, _ = wait_primary(members)
        primary.kill()
        _, took = wait_primary(members, exclude=primary)
        elections.append(took)
        print(f"kill {k + 1}: member {primary.id} killed; new primary in {took:.2f} s", flush=True)
        primary.start()

    rolled_back = []
    for k in range(PARTITIONS):
        time.sleep(1.5)
        primary, _ = wait_primary(members)
        others = [m for m in members if m is not primary]
        # Cut the primary off, in both directions.
        with primary.direct() as c:
            c.admin.command("configureFailPoint", "raftPartition", mode="alwaysOn",
                            data={"members": [m.id for m in others]})
        for m in others:
            with m.direct() as c:
                c.admin.command("configureFailPoint", "raftPartition", mode="alwaysOn",
                                data={"members": [primary.id]})
        # w: 1 writes straight to the cut-off primary: acknowledged, never majority-committed.
        with primary.direct() as c:
            for j in range(5):
                try:
                    c.test.get_collection("events", write_concern=WriteConcern(w=1)).insert_one(
                        {"_id": f"lost-{k}-{j}"})
                    rolled_back.append(f"lost-{k}-{j}")
                except PyMongoError:
                    pass
        new, took = wait_primary(others)
        elections.append(took)
        print(f"partition {k + 1}: member {primary.id} cut off; member {new.id} primary in {took:.2f} s "
              f"({len(rolled_back)} w:1 writes on the old primary so far)", flush=True)
        time.sleep(1)
        for m in members:
            with m.direct() as c:
                c.admin.command("configureFailPoint", "raftPartition", mode="off")

    time.sleep(1.5)
    stop.set()
    writer.join(10)
    # The first watcher must be gone before `stop` is cleared for the second: otherwise
    # it may go on appending to `seen` (the "end" event), and the check would read that.
    watcher.join(30)
    assert not watcher.is_alive(), "the first change stream reader did not stop"
    # The last write, so that the stream has seen everything before it.
    coll.insert_one({"_id": "end"})
    acked.append("end")
    deadline = time.time() + 30
    stop.clear()
    watcher2 = threading.Thread(target=watch, daemon=True)
    # The first watcher stopped with `stop`; read the rest with a fresh one from the start.
    seen_before = list(seen)
    seen.clear()
    watcher2.start()
    while time.time() < deadline and (not seen or seen[-1] != "end"):
        time.sleep(0.1)
    stop.set()

    failures = []
    # Every member holds every majority-acknowledged write, and none of the rolled-back ones.
    for m in members:
        deadline = time.time() + 20
        while True:
            with m.direct() as c:
                ids = {d["_id"] for d in c.test.events.find({}, {"_id": 1})}
            missing = [i for i in acked if i not in ids]
            if not missing or time.time() > deadline:
                break
            time.sleep(0.2)
        if missing:
            failures.append(f"member {m.id} lacks acknowledged writes {missing[:10]}")
        kept = [i for i in rolled_back if i in ids]
        if kept:
            failures.append(f"member {m.id} kept rolled-back writes {kept}")
    # The stream, read again from the start: each acknowledged write once, in order, and
    # nothing that was rolled back.
    events = [e for e in seen if e != -1]
    if len(events) != len(set(events)):
        dups = sorted({e for e in events if events.count(e) > 1}, key=str)
        failures.append(f"the change stream delivered events twice: {dups[:10]}")
    pos = {e: n for n, e in enumerate(events)}
    order = [pos[i] for i in acked if i in pos]
    if order != sorted(order):
        failures.append("the change stream delivered acknowledged writes out of order")
    missing = [i for i in acked if i not in pos]
    if missing:
        failures.append(f"the change stream missed acknowledged writes {missing[:10]}")
    leaked = [e for e in events + seen_before if isinstance(e, str) and e.startswith("lost-")]
    if leaked:
        failures.append(f"the change stream delivered rolled-back writes {leaked}")
    # Every rolled-back write is in a rollback file of the member that took it, under the
    # collection's UUID, as mongod writes them.
    with members[0].direct() as c:
        info = next(c.test.list_collections(filter={"name": "events"}))
    uuid = str(UUID(bytes=bytes(info["info"]["uuid"])))
    in_files = set()
    for m in members:
        for path in glob.glob(os.path.join(m.dbpath, "rollback", "*", "removed.*.bson")):
            if os.path.basename(os.path.dirname(path)) != uuid:
                failures.append(f"rollback file {path} is not under the collection's UUID {uuid}")
            with open(path, "rb") as f:
                in_files |= {d["_id"] for d in bson.decode_all(f.read())}
    missing = [i for i in rolled_back if i not in in_files]
    if missing:
        failures.append(f"rolled-back writes missing from the rollback files: {missing}")
    unacked = [e for e in events if e not in set(acked) and e not in attempted]
    if unacked:
        failures.append(f"the change stream delivered writes nobody made {unacked[:10]}")
    limit = (ELECTION_MS + 2 * HEARTBEAT_MS) / 1000 + 1.0
    slow = [round(t, 2) for t in elections if t > limit]
    if slow:
        failures.append(f"elections slower than {limit} s: {slow}")

    print(f"acknowledged writes: {len(acked)}; events: {len(events)}; w:1 writes rolled back: "
          f"{len(rolled_back)}; election times (s): {[round(t, 2) for t in elections]}")
    for m in members:
        m.kill()
    if failures:
        for f in failures:
            print("FAIL:", f)
        print("member logs in", root)
        sys.exit(1)
    print("failover test passed")


if __name__ == "__main__":
    main()
