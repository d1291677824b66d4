"""Initial state, then every change after it, with no gap and no overlap.

Reads a collection at one snapshot (`readConcern: {level: "snapshot"}` returns the
snapshot's `atClusterTime`), then opens a change stream that starts just after that
time (`startAtOperationTime`). Everything committed at or before the snapshot is in the
initial read; everything after it arrives as a change event; nothing is in both.

    python3 examples/snapshot_then_watch.py [mongodb://localhost:27017] [db] [collection]
"""
import sys

from bson import Timestamp
from pymongo import MongoClient


def snapshot_then_watch(coll, **watch_options):
    """Yields ("initial", document) for the snapshot, then ("change", event) forever."""
    db = coll.database
    reply = db.command({"find": coll.name, "readConcern": {"level": "snapshot"}})
    cursor = reply["cursor"]
    at = cursor["atClusterTime"]
    # Open the stream before draining the snapshot so that no change is missed even if
    # the drain is slow: the stream starts from `at`, not from when it was opened.
    start = Timestamp(at.time, at.inc + 1)
    with coll.watch(start_at_operation_time=start, **watch_options) as stream:
        for doc in cursor["firstBatch"]:
            yield "initial", doc
        while cursor["id"]:
            cursor = db.command({"getMore": cursor["id"], "collection": coll.name})["cursor"]
            for doc in cursor["nextBatch"]:
                yield "initial", doc
        for event in stream:
            yield "change", event


if __name__ == "__main__":
    uri = sys.argv[1] if len(sys.argv) > 1 else "mongodb://localhost:27017"
    db_name = sys.argv[2] if len(sys.argv) > 2 else "test"
    coll_name = sys.argv[3] if len(sys.argv) > 3 else "items"
    client = MongoClient(uri)
    for kind, item in snapshot_then_watch(client[db_name][coll_name]):
        if kind == "initial":
            print("initial", item)
        else:
            print(item["operationType"], item.get("documentKey"))
