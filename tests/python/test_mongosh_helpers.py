"""The mongosh helpers users reach for first, run through mongosh against the shared eddy
(scripts/test.sh starts it; EDDY_PORT tells the port). Each helper's result is checked,
and any error fails the test: db.c.stats(), db.stats(), db.c.validate(),
db.c.totalSize()/dataSize()/storageSize()/latencyStats(), db.currentOp(), db.killOp(),
db.setProfilingLevel(), db.getProfilingStatus(), db.getReplicationInfo(),
db.printReplicationInfo(), db.fsyncLock()/db.fsyncUnlock(), and dbHash."""
import os
import subprocess
import threading
import time
from pathlib import Path

import pymongo
import pytest
from pymongo.errors import OperationFailure

ROOT = Path(__file__).resolve().parents[2]
MONGOSH = ROOT / "tests/node/node_modules/.bin/mongosh"
PORT = int(os.environ.get("EDDY_PORT", "27017"))

pytestmark = pytest.mark.skipif(not MONGOSH.exists(), reason="npm ci in tests/node installs mongosh")


def mongosh(script):
    r = subprocess.run(
        [str(MONGOSH), f"mongodb://127.0.0.1:{PORT}/?directConnection=true", "--quiet",
         "--norc", "--eval", script],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "MONGOSH_SKIP_NODE_VERSION_CHECK": "1"},
    )
    assert r.returncode == 0, f"mongosh failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


HELPERS = r"""
function check(cond, what, got) {
  if (!cond) throw new Error("failed: " + what + ": " + EJSON.stringify(got));
}
const t = db.getSiblingDB("helpers");
t.dropDatabase();
t.createCollection("c", {capped: true, size: 4096, max: 3});
for (let i = 0; i < 5; i++) t.c.insertOne({_id: i, v: "x".repeat(10)});
t.c.createIndex({v: 1});

const st = t.c.stats();
const n = (x) => Number(x);
check(st.capped === true && n(st.count) === 3 && n(st.max) === 3 && n(st.maxSize) === 4096, "c.stats", st);
const ds = t.stats();
check(n(ds.collections) >= 1 && n(ds.objects) >= 3 && ds.ok === 1, "db.stats", ds);
const v = t.c.validate();
check(v.valid === true && n(v.nrecords) === 3 && n(v.keysPerIndex.v_1) === 3, "validate", v);
check(t.c.totalSize() > 0 && t.c.dataSize() > 0 && t.c.storageSize() > 0, "sizes", st);
const lat = t.c.latencyStats();
const latDocs = Array.isArray(lat) ? lat : lat.toArray();
check(latDocs.length === 1 && latDocs[0].latencyStats !== undefined, "latencyStats", latDocs);

const was = t.setProfilingLevel(1, {slowms: 0});
check(was.ok === 1, "setProfilingLevel", was);
t.c.find({_id: 4}).toArray();
const ps = t.getProfilingStatus();
check(n(ps.was) === 1 && n(ps.slowms) === 0, "getProfilingStatus", ps);
const prof = t.system.profile.find({op: "query", ns: "helpers.c"}).toArray();
check(prof.length >= 1 && n(prof[0].command.filter._id) === 4, "system.profile", prof);
t.setProfilingLevel(0, {slowms: 100});

const ri = t.getReplicationInfo();
check(ri.logSizeMB > 0 && ri.timeDiff !== undefined && ri.tFirst !== undefined, "getReplicationInfo", ri);
t.printReplicationInfo();

const ops = t.currentOp();
check(Array.isArray(ops.inprog) && ops.inprog.length >= 1, "currentOp", ops);
const killed = t.killOp(987654321);
check(killed.ok === 1, "killOp", killed);

const h1 = t.runCommand({dbHash: 1});
check(typeof h1.collections.c === "string" && h1.md5.length === 32, "dbHash", h1);
t.c.insertOne({_id: 10});
const h2 = t.runCommand({dbHash: 1});
check(h2.collections.c !== h1.collections.c, "dbHash changes with the data", [h1, h2]);

const lock = t.fsyncLock();
check(lock.lockCount == 1, "fsyncLock", lock);
let blocked = null;
try {
  try {
    t.runCommand({insert: "c", documents: [{_id: 11}], maxTimeMS: 300});
  } catch (e) {
    blocked = e;
  }
  check(blocked !== null && blocked.code === 50, "a write under the fsync lock waits", blocked);
  check(t.c.find().toArray().length === 3, "reads go on under the fsync lock", null);
} finally {
  var unlock = t.fsyncUnlock();
}
check(unlock.lockCount == 0, "fsyncUnlock", unlock);
t.c.insertOne({_id: 12});
print("ALL OK");
"""


def test_mongosh_helpers():
    out = mongosh(HELPERS)
    assert "ALL OK" in out, out


def test_kill_op_interrupts_a_waiting_write():
    """db.killOp() ends a running operation: here a write held by db.fsyncLock()."""
    c = pymongo.MongoClient("localhost", PORT, serverSelectionTimeoutMS=5000)
    c.helpers.k.drop()
    c.admin.command("fsync", lock=True)
    result = {}

    def write():
        try:
            c.helpers.k.insert_one({"_id": 1})
            result["ok"] = True
        except OperationFailure as e:
            result["code"] = e.code

    w = threading.Thread(target=write)
    w.start()
    try:
        time.sleep(0.5)
        out = mongosh("""
          const ops = db.currentOp({ns: "helpers.k"}).inprog;
          if (ops.length !== 1) throw new Error("not listed: " + EJSON.stringify(ops));
          db.killOp(ops[0].opid);
          print("KILLED");
        """)
        assert "KILLED" in out
        w.join(10)
        assert result.get("code") == 11601, result
    finally:
        c.admin.command("fsyncUnlock")
        w.join(10)
    assert c.helpers.k.count_documents({}) == 0
    c.helpers.k.insert_one({"_id": 2})
    c.close()
