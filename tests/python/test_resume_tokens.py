"""Eddy's resume tokens, decoded by MongoDB's own decoder (npm mongodb-resumetoken-decoder).

Every kind of event's token must decode to the event's clusterTime, version 2, the event
token type, the collection UUID and an event identifier naming the operation type and
document key; high-water marks decode as such; and tokens sort by position as strings.
"""
import json
import os
import subprocess

import pymongo
from bson import Timestamp

PORT = int(os.environ.get("EDDY_PORT", "27017"))
NODE_DIR = os.path.join(os.path.dirname(__file__), "..", "node")


def decode(hexes):
    out = subprocess.run(
        ["node", "decode.js"], cwd=NODE_DIR, input=json.dumps(hexes), capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_tokens_decode_with_mongodbs_decoder():
    client = pymongo.MongoClient("localhost", PORT, serverSelectionTimeoutMS=5000)
    db = client.tokens
    db.c.drop()
    db.create_collection("c")
    uuid = db.command("listCollections", filter={"name": "c"})["cursor"]["firstBatch"][0]["info"]["uuid"]
    with db.c.watch(show_expanded_events=True) as stream:
        db.c.insert_one({"_id": 1, "a": 1})
        db.c.update_one({"_id": 1}, {"$set": {"a": 2}})
        db.c.replace_one({"_id": 1}, {"b": 1})
        db.c.delete_one({"_id": 1})
        db.c.create_index("a")
        db.c.drop()
        events = [stream.next() for _ in range(7)]
        hwm = stream.resume_token
    kinds = [e["operationType"] for e in events]
    assert kinds == ["insert", "update", "replace", "delete", "createIndexes", "drop", "invalidate"]
    hexes = [e["_id"]["_data"] for e in events]
    assert hexes == sorted(hexes), "tokens sort in event order"
    decoded = decode(hexes)
    for e, d in zip(events, decoded):
        ct: Timestamp = e["clusterTime"]
        assert (d["t"], d["i"]) == (ct.time, ct.inc)
        assert d["version"] == 2
        assert d["tokenType"] == 128
        assert d["txnOpIndex"] == 0
        assert d["uuid"] == uuid.hex()
        assert d["fromInvalidate"] == (e["operationType"] == "invalidate")
        ident = d["eventIdentifier"]
        want = "drop" if e["operationType"] == "invalidate" else e["operationType"]
        assert ident["operationType"] == want
        if "documentKey" in e:
            assert ident["documentKey"] == {"_id": 1}
    hw = decode([hwm["_data"]])[0]
    assert hw["tokenType"] in (0, 128)
    # A high-water mark from an idle stream.
    with db.other.watch() as stream:
        assert stream.try_next() is None
        idle = stream.resume_token
    d = decode([idle["_data"]])[0]
    assert (d["tokenType"], d["version"], d["uuid"], d["eventIdentifier"]) == (0, 2, None, None)
    client.close()
