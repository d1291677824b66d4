"""mongosh's replica set helpers against three eddy members: rs.initiate, rs.add, rs.status,
rs.conf, db.hello, rs.stepDown, rs.freeze, rs.remove and rs.reconfig (a priority takeover),
each run by mongosh itself (from
tests/node: `npm ci` there installs it).

Usage: EDDY_BIN=target/release/eddy python tests/replset/mongosh_rs.py
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from failover import Member, free_port, hello, wait_primary  # noqa: E402

MONGOSH = Path(__file__).resolve().parents[2] / "tests/node/node_modules/.bin/mongosh"


def sh(member, script):
    """Runs `script` in mongosh against one member; returns its last line of output."""
    r = subprocess.run(
        [str(MONGOSH), f"mongodb://{member.host}/?directConnection=true", "--quiet", "--norc",
         "--eval", script],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "MONGOSH_SKIP_NODE_VERSION_CHECK": "1"},
    )
    assert r.returncode == 0, f"mongosh {script!r}: {r.stdout}\n{r.stderr}"
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    return lines[-1] if lines else ""


def until(what, f, timeout=30):
    deadline = time.time() + timeout
    while True:
        v = f()
        if v:
            return v
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def main():
    assert MONGOSH.exists(), "run npm ci in tests/node first"
    root = tempfile.mkdtemp(prefix="eddy-sh-")
    members = [Member(i, free_port(), root) for i in range(3)]
    for m in members:
        m.start()
    m0, m1, m2 = members

    out = sh(m0, "JSON.stringify(rs.initiate({_id: 'rs0', members: [{_id: 0, host: '%s'}], "
                 "settings: {electionTimeoutMillis: 2000, heartbeatIntervalMillis: 200}}))" % m0.host)
    assert json.loads(out)["ok"] == 1, out
    wait_primary([m0])

    out = sh(m0, "JSON.stringify(rs.add('%s'))" % m1.host)
    assert json.loads(out)["ok"] == 1, out
    out = sh(m0, "JSON.stringify(rs.add({host: '%s', priority: 0}))" % m2.host)
    assert json.loads(out)["ok"] == 1, out

    def states():
        s = json.loads(sh(m0, "JSON.stringify(rs.status().members.map(m => [m.name, m.stateStr]))"))
        return sorted(x[1] for x in s) == ["PRIMARY", "SECONDARY", "SECONDARY"] and s
    print("rs.status():", until("three members up", states))

    conf = json.loads(sh(m0, "JSON.stringify(rs.conf())"))
    assert conf["_id"] == "rs0" and len(conf["members"]) == 3, conf
    assert [m["host"] for m in conf["members"]] == [m.host for m in members], conf
    assert conf["members"][2]["priority"] == 0, conf
    version = conf["version"]

    h = json.loads(sh(m0, "JSON.stringify(db.hello())"))
    assert h["setName"] == "rs0" and h["isWritablePrimary"] and h["primary"] == m0.host, h
    assert sorted(h["hosts"]) == sorted([m0.host, m1.host]), h
    assert h["passives"] == [m2.host], h

    # Data written through mongosh reaches the others.
    sh(m0, "db.getSiblingDB('t').c.insertOne({_id: 1, via: 'mongosh'}, {writeConcern: {w: 3}})")
    out = sh(m1, "db.getMongo().setReadPref('secondary'); "
                 "JSON.stringify(db.getSiblingDB('t').c.findOne())")
    assert json.loads(out)["via"] == "mongosh", out

    # rs.stepDown(): the other electable member takes over; the old primary may not stand
    # again for the step-down period.
    sh(m0, "try { rs.stepDown(30) } catch (e) { print(e.message) }")
    new, took = wait_primary(members, exclude=m0)
    assert new is m1, f"member {new.id} became primary (priority 0?)"
    print(f"rs.stepDown(): member {new.id} primary after {took:.1f} s")
    assert json.loads(sh(m0, "JSON.stringify(db.hello())"))["secondary"]

    out = sh(m2, "JSON.stringify(rs.freeze(30))")
    assert json.loads(out)["ok"] == 1, out

    out = sh(m1, "JSON.stringify(rs.remove('%s'))" % m2.host)
    assert json.loads(out)["ok"] == 1, out
    conf = json.loads(sh(m1, "JSON.stringify(rs.conf())"))
    assert [m["host"] for m in conf["members"]] == [m0.host, m1.host], conf
    assert conf["version"] > version, conf
    until("member 2 sees itself removed",
          lambda: hello(m2).get("setName") is None or not hello(m2).get("hosts"))

    # rs.reconfig() giving member 0 a higher priority: once caught up it takes over.
    sh(m0, "rs.freeze(0)")
    t0 = time.time()
    out = sh(m1, "const c = rs.conf(); c.members[0].priority = 2; JSON.stringify(rs.reconfig(c))")
    assert json.loads(out)["ok"] == 1, out
    until("member 0 (priority 2) to take over", lambda: hello(m0).get("isWritablePrimary"))
    print(f"priority takeover: member 0 primary {time.time() - t0:.1f} s after rs.reconfig()")
    assert json.loads(sh(m0, "JSON.stringify(rs.conf())"))["members"][0]["priority"] == 2

    for m in members:
        m.kill()
    shutil.rmtree(root)
    print("mongosh rs.*: ok")


if __name__ == "__main__":
    main()
