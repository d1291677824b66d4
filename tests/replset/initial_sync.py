"""Initial sync test: three eddy members with a small oplog (--oplogSize 1, i.e. 1 MB), so
that the log a lagging member would need is gone and it must be sent an image of the tables.

1. A member is killed and its data directory wiped; 4 MB of writes (inserts, updates,
   deletes) go to the other two meanwhile, and their logs are truncated past the start.
   It is restarted empty: it must catch up from an image plus the log after it.
2. Another member is killed (its data kept) and falls off the log the same way; restarted,
   it must be resynced from an image (its own log is discarded).
3. After each: the member's documents equal the primary's, and a change stream opened on
   it delivers later writes exactly once and in order, and resumes, on it and on the
   primary, exactly after its token.
4. The resynced member can then be elected: the primary is killed and writes continue.

Usage: EDDY_BIN=target/release/eddy python tests/replset/initial_sync.py
Prints the catch-up times it measured.
"""

import glob
import os
import shutil
import sys
import tempfile
import time

from pymongo import MongoClient, WriteConcern

sys.path.insert(0, os.path.dirname(__file__))
from failover import Member, free_port, hello, wait_primary  # noqa: E402

ELECTION_MS = 2000
HEARTBEAT_MS = 200


def start(m):
    m.extra = ["--oplogSize", "1"]
    m.start()


def oplog_ts(m, order):
    """The clusterTime of the member's oldest (order 1) or newest (order -1) log entry."""
    with m.direct() as c:
        e = c.local["oplog.rs"].find_one({}, sort=[("$natural", order)])
        return e["ts"] if e else None


def contents(m):
    with m.direct() as c:
        return sorted((d["_id"], d.get("v"), len(d.get("pad", ""))) for d in c.test.docs.find())


def write_load(coll, start_id, n, pad):
    """Inserts n documents, updates every third and deletes every fifth (w: majority)."""
    for i in range(start_id, start_id + n, 50):
        coll.insert_many([{"_id": j, "v": 0, "pad": pad} for j in range(i, min(i + 50, start_id + n))])
    coll.update_many({"_id": {"$gte": start_id, "$mod": [3, 0]}}, {"$set": {"v": 1}})
    coll.delete_many({"_id": {"$gte": start_id, "$mod": [5, 0]}})


def wait_truncated(members, since_ts, coll, next_id, pad):
    """Writes until every listed member's log starts after since_ts."""
    deadline = time.time() + 120
    while time.time() < deadline:
        if all((oplog_ts(m, 1) or since_ts) > since_ts for m in members):
            return next_id
        write_load(coll, next_id, 200, pad)
        next_id += 200
        time.sleep(0.5)
    raise AssertionError("the logs were never truncated")


def wait_caught_up(m, primary, timeout=120):
    t0 = time.time()
    want = contents(primary)
    while time.time() - t0 < timeout:
        try:
            if contents(m) == want:
                return time.time() - t0
        except Exception:
            pass
        time.sleep(0.2)
    got = contents(m)
    raise AssertionError(f"member {m.id} never caught up: {len(got)} documents, want {len(want)}")


def check_streams(m, primary_coll, members, next_id):
    """A change stream on member m delivers later writes once, in order, and resumes."""
    with m.direct() as c:
        stream = c.test.docs.watch(max_await_time_ms=200)
        ids = list(range(next_id, next_id + 10))
        for i in ids:
            primary_coll.insert_one({"_id": i, "v": 0})
        got, tokens = [], []
        deadline = time.time() + 30
        while len(got) < 10 and time.time() < deadline:
            e = stream.try_next()
            if e is not None:
                got.append(e["documentKey"]["_id"])
                tokens.append(e["_id"])
        stream.close()
        assert got == ids, f"stream on member {m.id}: {got} != {ids}"
        # Resumed after the 5th, on the member itself and on every other member.
        for other in members:
            with other.direct() as oc:
                s = oc.test.docs.watch(resume_after=tokens[4], max_await_time_ms=200)
                rest = []
                deadline = time.time() + 30
                while len(rest) < 5 and time.time() < deadline:
                    e = s.try_next()
                    if e is not None:
                        rest.append(e["documentKey"]["_id"])
                s.close()
                assert rest == ids[5:], f"resumed on member {other.id}: {rest} != {ids[5:]}"
    return next_id + 10


def main():
    import faulthandler
    faulthandler.dump_traceback_later(600, exit=True)
    root = tempfile.mkdtemp(prefix="eddy-sync-")
    members = [Member(i, free_port(), root) for i in range(3)]
    for m in members:
        start(m)
    with members[0].direct() as c:
        c.admin.command("replSetInitiate", {
            "_id": "rs0",
            "members": [{"_id": m.id, "host": m.host} for m in members],
            "settings": {"electionTimeoutMillis": ELECTION_MS, "heartbeatIntervalMillis": HEARTBEAT_MS},
        })
    primary, _ = wait_primary(members)
    uri = "mongodb://" + ",".join(m.host for m in members) + "/?replicaSet=rs0"
    client = MongoClient(uri, serverSelectionTimeoutMS=60000)
    coll = client.test.get_collection("docs", write_concern=WriteConcern("majority"))
    pad = "x" * 2000
    write_load(coll, 0, 300, pad)
    next_id = 300

    done = set()
    for phase, wipe in (("wiped member", True), ("member that fell off the log", False)):
        primary, _ = wait_primary(members)
        secondaries = [m for m in members if m is not primary]
        lagging = next((m for m in secondaries if m.id not in done), secondaries[0])
        done.add(lagging.id)
        # Everything the lagging member holds must go from the others' logs.
        since = oplog_ts(primary, -1)
        lagging.kill()
        if wipe:
            shutil.rmtree(lagging.dbpath)
        others = [m for m in members if m is not lagging]
        next_id = wait_truncated(others, since, coll, next_id, pad)
        t0 = time.time()
        start(lagging)
        primary, _ = wait_primary(members)
        took = wait_caught_up(lagging, primary)
        images = glob.glob(os.path.join(lagging.dbpath, "raft-snapshot", "*.img"))
        assert images, f"{phase}: member {lagging.id} caught up without an image"
        with open(lagging.log.name, "rb") as f:
            assert b"installed an initial sync image" in f.read(), f"{phase}: no image installed"
        print(f"{phase}: member {lagging.id} caught up in {time.time() - t0:.1f} s "
              f"(documents equal {took:.1f} s after its restart was seen)")
        next_id = check_streams(lagging, coll, members, next_id)

    # The resynced members can lead: the primary goes, writes go on.
    primary, _ = wait_primary(members)
    primary.kill()
    new, secs = wait_primary(members, exclude=primary)
    coll.insert_one({"_id": next_id, "v": 0})
    print(f"after killing the primary, member {new.id} leads ({secs:.1f} s)")
    for m in members:
        m.kill()
    shutil.rmtree(root)
    print("initial sync: ok")


if __name__ == "__main__":
    main()
