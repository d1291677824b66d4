"""mongosh 2, as a user types it (statements on stdin, `use` and `show dbs` included), against
the shared eddy (scripts/test.sh starts it; EDDY_PORT tells the port): insertOne, updateOne,
find, show dbs, rs.status(), db.serverStatus(), and db.c.watch() iterated while PyMongo
writes from another connection."""
import os
import re
import subprocess
import threading
from pathlib import Path

import pymongo
import pytest

ROOT = Path(__file__).resolve().parents[2]
MONGOSH = ROOT / "tests/node/node_modules/.bin/mongosh"
PORT = int(os.environ.get("EDDY_PORT", "27017"))

pytestmark = pytest.mark.skipif(not MONGOSH.exists(), reason="npm ci in tests/node installs mongosh")

SCRIPT = r"""use shellcompat
db.c.drop()
db.c.insertOne({_id: 1, name: "a"})
db.c.updateOne({_id: 1}, {$set: {name: "b"}, $inc: {n: 1}})
print("FOUND " + EJSON.stringify(db.c.find({_id: 1}).toArray(), {relaxed: true}))
show dbs
print("RS " + rs.status().set + " " + rs.status().members.map(m => m.stateStr).join(","))
const ss = db.serverStatus(); print("SS " + ss.process + " " + (ss.connections.current > 0) + " " + (ss.opcounters.insert >= 1) + " " + ss.repl.setName)
const cs = db.c.watch([], {fullDocument: "updateLookup"}); cs.tryNext(); print("WATCHING")
const got = []; for (let i = 0; i < 3; i++) { const e = cs.next(); got.push(e.operationType + ":" + e.documentKey._id + ":" + (e.fullDocument ? e.fullDocument.name : "-")); }
print("EVENTS " + got.join(","))
"""


def test_mongosh_basics_and_a_watch_fed_by_another_client():
    p = subprocess.Popen(
        [str(MONGOSH), f"mongodb://127.0.0.1:{PORT}/?directConnection=true", "--quiet", "--norc"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "MONGOSH_SKIP_NODE_VERSION_CHECK": "1"},
    )
    p.stdin.write(SCRIPT)
    p.stdin.close()
    out = []
    watching = threading.Event()

    def read():
        for line in p.stdout:
            out.append(line)
            if "WATCHING" in line:
                watching.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert watching.wait(60), "".join(out)
    c = pymongo.MongoClient("127.0.0.1", PORT, directConnection=True).shellcompat.c
    c.insert_one({"_id": 2, "name": "new"})
    c.update_one({"_id": 2}, {"$set": {"name": "newer"}})
    c.delete_one({"_id": 1})
    p.wait(60)
    reader.join(10)
    text = "".join(out)
    assert p.returncode == 0, text
    assert 'FOUND [{"_id":1,"name":"b","n":1}]' in text, text
    # show dbs: a line per database with its size.
    assert re.search(r"^(?:.*> )?shellcompat\s+[\d.]+ (?:B|KiB|MiB)$", text, re.M), text
    assert re.search(r"^(?:.*> )?local\s+[\d.]+ (?:B|KiB|MiB)$", text, re.M), text
    assert "RS rs0 PRIMARY" in text, text
    assert "SS eddy true true rs0" in text, text
    assert "EVENTS insert:2:new,update:2:newer,delete:1:-" in text, text
