"""Key file test: a three-member set with access control (--keyFile), set up as MongoDB's
manual does it (initiate and create the first user through the localhost exception).

Checks:
- a key file readable by others, or --replSet with --auth but no key file, is refused;
- members authenticate to each other with the key (the set elects a primary and
  replicates: a w: "majority" write reaches every member);
- clients must authenticate; `root` may not send member traffic (`_eddyRaft` needs the
  `internal` action only `__system` has);
- `__system` on `local` with the key file's key logs in (SCRAM-SHA-256), a wrong key
  does not.

Usage: EDDY_BIN=target/release/eddy python tests/replset/keyfile.py
"""

import base64
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time

from pymongo import MongoClient, WriteConcern
from pymongo.errors import OperationFailure

sys.path.insert(0, os.path.dirname(__file__))
from failover import EDDY, Member, free_port, wait_primary  # noqa: E402


def refused(args, expect):
    """The server exits at once, saying `expect`."""
    p = subprocess.run([EDDY, "--port", str(free_port())] + args,
                       capture_output=True, timeout=30)
    out = (p.stdout + p.stderr).decode()
    assert p.returncode != 0 and expect in out, f"{args}: {p.returncode} {out}"


def main():
    root = tempfile.mkdtemp(prefix="eddy-key-")
    key = os.path.join(root, "key")
    with open(key, "w") as f:
        f.write(base64.b64encode(secrets.token_bytes(96)).decode() + "\n")
    os.chmod(key, 0o644)
    refused(["--dbpath", os.path.join(root, "x"), "--replSet", "rs0", "--keyFile", key],
            "are too open")
    os.chmod(key, 0o600)
    refused(["--dbpath", os.path.join(root, "y"), "--replSet", "rs0", "--auth"],
            "security.keyFile is required")

    members = [Member(i, free_port(), root) for i in range(3)]
    for m in members:
        m.extra = ["--keyFile", key]
        m.start()
    # The localhost exception: initiate, then create the first user on the primary.
    with members[0].direct() as c:
        c.admin.command("replSetInitiate", {
            "_id": "rs0",
            "members": [{"_id": m.id, "host": m.host} for m in members],
            "settings": {"electionTimeoutMillis": 2000, "heartbeatIntervalMillis": 200},
        })
    primary, _ = wait_primary(members)
    with primary.direct() as c:
        c.admin.command("createUser", "admin", pwd="secret", roles=["root"])

    uri = ("mongodb://admin:secret@" + ",".join(m.host for m in members)
           + "/?replicaSet=rs0&authSource=admin")
    with MongoClient(uri, serverSelectionTimeoutMS=30000) as client:
        coll = client.test.get_collection("docs", write_concern=WriteConcern("majority", wtimeout=30000))
        coll.insert_many([{"_id": i} for i in range(100)])
        # Every member has them (a majority acknowledged; the third catches up).
        for m in members:
            with MongoClient(f"mongodb://admin:secret@{m.host}/?directConnection=true&authSource=admin") as d:
                deadline = time.time() + 30
                while d.test.docs.count_documents({}) != 100:
                    assert time.time() < deadline, f"member {m.id} never caught up"
                    time.sleep(0.1)
        # root may not speak for a member.
        try:
            client.admin.command("_eddyRaft", "vote", **{"from": 0, "to": 1})
            raise AssertionError("root sent member traffic")
        except OperationFailure as e:
            assert e.code == 13, e

    # Unauthenticated clients get nothing.
    with members[1].direct() as c:
        try:
            c.test.docs.find_one()
            raise AssertionError("read without authenticating")
        except OperationFailure as e:
            assert e.code == 13, e

    # __system with the key, and with a wrong one.
    with open(key) as f:
        k = "".join(f.read().split())
    with MongoClient(f"mongodb://{members[2].host}/?directConnection=true", username="__system",
                     password=k, authSource="local", authMechanism="SCRAM-SHA-256") as c:
        states = [x["stateStr"] for x in c.admin.command("replSetGetStatus")["members"]]
        assert sorted(states) == ["PRIMARY", "SECONDARY", "SECONDARY"], states
    with MongoClient(f"mongodb://{members[2].host}/?directConnection=true", username="__system",
                     password=k[:-4] + "AAAA", authSource="local",
                     authMechanism="SCRAM-SHA-256", serverSelectionTimeoutMS=5000) as c:
        try:
            c.admin.command("ping")
            raise AssertionError("a wrong key logged in")
        except OperationFailure as e:
            assert e.code == 18, e

    for m in members:
        m.kill()
    shutil.rmtree(root)
    print("key file: ok")


if __name__ == "__main__":
    main()
