"""The README's recipe (examples/snapshot_then_watch.py) under concurrent writes: each
document is seen exactly once, either in the snapshot or as an insert event."""
import os
import sys
import threading

import pymongo
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
from snapshot_then_watch import snapshot_then_watch  # noqa: E402

PORT = int(os.environ.get("EDDY_PORT", "27017"))


@pytest.fixture(scope="module")
def client():
    c = pymongo.MongoClient("localhost", PORT, serverSelectionTimeoutMS=5000)
    yield c
    c.close()


def test_every_document_exactly_once(client):
    coll = client.recipe.items
    coll.drop()
    coll.insert_many([{"_id": i} for i in range(500)])
    total = 3000

    def writer():
        for i in range(500, total):
            coll.insert_one({"_id": i})

    t = threading.Thread(target=writer)
    t.start()
    seen = []
    initial = 0
    for kind, item in snapshot_then_watch(coll, max_await_time_ms=5000):
        if kind == "initial":
            initial += 1
            seen.append(item["_id"])
        else:
            assert item["operationType"] == "insert"
            seen.append(item["documentKey"]["_id"])
        if len(seen) >= total:
            break
    t.join()
    assert initial >= 500
    assert len(seen) == len(set(seen)), "a document was seen twice"
    assert sorted(seen) == list(range(total)), "a document was missed"
