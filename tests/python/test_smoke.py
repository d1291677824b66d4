"""PyMongo smoke test: the basics through Python's driver against a real eddy.

The server is started by scripts/test.sh (EDDY_PORT tells the port).
"""
import os
import threading

import pymongo
import pytest
from bson import ObjectId

PORT = int(os.environ.get("EDDY_PORT", "27017"))


@pytest.fixture(scope="module")
def client():
    c = pymongo.MongoClient("localhost", PORT, serverSelectionTimeoutMS=5000)
    yield c
    c.close()


def test_handshake_is_a_replica_set_primary(client):
    hello = client.admin.command("hello")
    assert hello["isWritablePrimary"] is True
    assert hello["setName"] == "rs0"
    assert client.server_info()["version"] == "8.0.4"


def test_crud(client):
    coll = client.smoke.people
    coll.drop()
    res = coll.insert_one({"name": "ada"})
    assert isinstance(res.inserted_id, ObjectId)
    coll.insert_many([{"_id": i, "n": i} for i in range(10)])
    assert coll.count_documents({"n": {"$gte": 5}}) == 5
    coll.update_many({"n": {"$lt": 3}}, {"$inc": {"n": 100}})
    assert sorted(d["n"] for d in coll.find({"n": {"$gte": 100}})) == [100, 101, 102]
    assert coll.find_one_and_delete({"_id": 9})["n"] == 9
    coll.create_index("n")
    assert "n_1" in coll.index_information()
    with pytest.raises(pymongo.errors.DuplicateKeyError):
        coll.insert_one({"_id": 1})
    assert [d["_id"] for d in coll.find({"n": {"$exists": True}}, {"_id": 1}).sort("_id", -1).limit(2)] == [8, 7]


def test_change_stream(client):
    coll = client.smoke.events
    coll.drop()
    with coll.watch() as stream:
        def write():
            coll.insert_one({"_id": 1})
            coll.update_one({"_id": 1}, {"$set": {"a": 1}})
        t = threading.Thread(target=write)
        t.start()
        first = stream.next()
        second = stream.next()
        t.join()
    assert first["operationType"] == "insert"
    assert second["operationType"] == "update"
    assert second["updateDescription"]["updatedFields"] == {"a": 1}
    token = first["_id"]
    with coll.watch(resume_after=token) as stream:
        assert stream.next()["operationType"] == "update"
