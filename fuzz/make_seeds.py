"""Writes the fuzz targets' seed corpora (fuzz/seeds/<target>/) from the drivers' unified
specification tests, the same files scripts/spec-tests.sh runs: every command a test
expects the driver to send (commandStartedEvent), and every filter, update and pipeline
an operation passes, each with its test file's initial documents.

Usage: python fuzz/make_seeds.py PYMONGO_SRC   (PYMONGO_SRC: the pymongo-4.20.0 source
tree scripts/spec-tests.sh unpacks under target/spec-venv/src; needs its bson package).
The seeds are committed; rerun this only to refresh them."""
import hashlib
import json
import struct
import sys
import zlib
from pathlib import Path

sys.path.insert(0, sys.argv[1])
import bson  # noqa: E402
from bson import json_util  # noqa: E402

SRC = Path(sys.argv[1]) / "test"
OUT = Path(__file__).resolve().parent / "seeds"
DIRS = ["crud", "change_streams", "transactions", "sessions", "retryable_writes",
        "retryable_reads", "collection_management", "index_management", "run_command",
        "csot", "command_monitoring"]
CAP = 600


def clean(v):
    """Drops the unified format's matching operators ($$exists, $$type, ...), keeping
    what $$unsetOrMatches wraps."""
    if isinstance(v, dict):
        if len(v) == 1:
            (k, x), = v.items()
            if k == "$$unsetOrMatches":
                return clean(x)
            if k.startswith("$$"):
                return None
        out = {}
        for k, x in v.items():
            c = clean(x)
            if c is not None and not k.startswith("$$"):
                out[k] = c
        return out
    if isinstance(v, list):
        return [c for c in (clean(x) for x in v) if c is not None]
    return v


def walk(v):
    if isinstance(v, dict):
        yield v
        for x in v.values():
            yield from walk(x)
    elif isinstance(v, list):
        for x in v:
            yield from walk(x)


seeds = {"command": {}, "query": {}, "wire_message": {}}


def add(target, data):
    seeds[target].setdefault(hashlib.sha1(data).hexdigest(), data)


def op_msg(i, body, compress=False):
    doc = bson.encode(body)
    payload = struct.pack("<I", 0) + b"\x00" + doc
    if not compress:
        return struct.pack("<iiii", 16 + len(payload), i, 0, 2013) + payload
    z = zlib.compress(payload)
    rest = struct.pack("<iiB", 2013, len(payload), 2) + z
    return struct.pack("<iiii", 16 + len(rest), i, 0, 2012) + rest


for d in DIRS:
    for f in sorted((SRC / d / "unified").glob("*.json")) if (SRC / d / "unified").exists() \
            else sorted((SRC / d).glob("*.json")):
        try:
            spec = json_util.loads(f.read_text())
        except Exception:
            continue
        docs = []
        for data in spec.get("initialData", []) or []:
            docs += data.get("documents", [])
        docs = clean(docs)[:16]
        for node in walk(spec.get("tests", [])):
            started = node.get("commandStartedEvent")
            if isinstance(started, dict) and isinstance(started.get("command"), dict):
                cmd = clean(started["command"])
                cmd.pop("lsid", None)
                if cmd:
                    db = started.get("databaseName", "fuzz")
                    cmd.setdefault("$db", db if isinstance(db, str) else "fuzz")
                    try:
                        raw = bson.encode(cmd)
                        h = hashlib.sha1(raw).hexdigest()
                        if h not in seeds["command"]:
                            add("command", raw)
                            n = len(seeds["wire_message"])
                            add("wire_message", op_msg(n, cmd, compress=n % 5 == 0))
                    except Exception:
                        pass
            args = node.get("arguments")
            if isinstance(args, dict):
                for key in ["filter", "update", "pipeline"]:
                    if key in args:
                        q = {key: clean(args[key]), "docs": docs}
                        if "arrayFilters" in args:
                            q["arrayFilters"] = clean(args["arrayFilters"])
                        try:
                            add("query", bson.encode(q))
                        except Exception:
                            pass

# The legacy handshake, as old drivers open with it.
hello = bson.encode({"isMaster": 1, "helloOk": True})
q = struct.pack("<I", 0) + b"admin.$cmd\x00" + struct.pack("<ii", 0, -1) + hello
add("wire_message", struct.pack("<iiii", 16 + len(q), 1, 0, 2004) + q)

for target, found in seeds.items():
    out = OUT / target
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    for h, data in sorted(found.items(), key=lambda kv: len(kv[1]))[:CAP]:
        (out / h).write_bytes(data)
    print(f"{target}: {min(len(found), CAP)} seeds of {len(found)}")
