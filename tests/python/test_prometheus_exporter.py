"""Debian's prometheus-mongodb-exporter (scripts/test.sh installs it) scraping the shared
eddy (EDDY_PORT) with its default collectors: the figures it exports must match what the
server says itself — connections, opcounters, replica set state, the oplog window.

Its collection and connection-pool collectors are off by default and left off: they iterate
listCollections with the legacy OP_GET_MORE opcode, which mongod removed in 5.1 as well."""
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request

import pymongo
import pytest

PORT = int(os.environ.get("EDDY_PORT", "27017"))
EXPORTER = shutil.which("prometheus-mongodb-exporter")

pytestmark = pytest.mark.skipif(EXPORTER is None, reason="apt install prometheus-mongodb-exporter")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def scrape(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r"^(\S+?)(\{.*\})?\s+(\S+)$", line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def test_exporter_metrics_match_the_server():
    client = pymongo.MongoClient("127.0.0.1", PORT, directConnection=True)
    c = client.exporter_check.c
    c.drop()
    c.insert_many([{"_id": i} for i in range(25)])
    for i in range(7):
        c.find_one({"_id": i})
    c.update_many({}, {"$set": {"x": 1}})
    c.delete_one({"_id": 0})

    web = free_port()
    p = subprocess.Popen(
        [EXPORTER, "-mongodb.uri", f"mongodb://127.0.0.1:{PORT}",
         "-web.listen-address", f"127.0.0.1:{web}", "-logtostderr"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        m = {}
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                m = scrape(web)
                if m.get("mongodb_up") == 1 and "mongodb_op_counters_total{type=\"insert\"}" in m:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        status = client.admin.command("serverStatus")
        assert m.get("mongodb_up") == 1, m
        op = status["opcounters"]
        # Nothing else writes now: the insert, update and delete counters are exact; reads
        # and commands only grow between the scrape and serverStatus.
        for kind in ("insert", "update", "delete"):
            assert m[f'mongodb_op_counters_total{{type="{kind}"}}'] == op[kind], (kind, m, op)
        for kind in ("query", "command"):
            got = m[f'mongodb_op_counters_total{{type="{kind}"}}']
            assert 0 < got <= op[kind], (kind, got, op)
        assert m['mongodb_op_counters_total{type="insert"}'] >= 25
        cur = m['mongodb_connections{state="current"}']
        assert 1 <= cur <= status["connections"]["current"] + 2, (cur, status["connections"])
        assert m['mongodb_connections{state="available"}'] == pytest.approx(
            status["connections"]["available"], abs=5)
        assert m["mongodb_connections_metrics_created_total"] >= cur

        rs = client.admin.command("replSetGetStatus")
        me = rs["members"][0]
        labels = f'{{name="{me["name"]}",set="{rs["set"]}"}}'
        assert m[f'mongodb_replset_my_state{{set="{rs["set"]}"}}'] == 1
        assert m[f'mongodb_replset_number_of_members{{set="{rs["set"]}"}}'] == 1
        assert m[f"mongodb_replset_member_state{labels}"] == 1
        assert m[f"mongodb_replset_member_health{labels}"] == 1
        assert abs(m[f"mongodb_replset_member_optime_date{labels}"] - time.time()) < 120, m
        # The oplog window: its newest entry is the delete above, give or take a no-op.
        assert abs(m["mongodb_replset_oplog_tail_timestamp"] - time.time()) < 120, m
        assert m["mongodb_replset_oplog_head_timestamp"] <= m["mongodb_replset_oplog_tail_timestamp"]
        assert m["mongodb_replset_oplog_items_total"] >= 25
        assert m['mongodb_replset_oplog_size_bytes{type="current"}'] > 0
        assert abs(m["mongodb_instance_uptime_seconds"] - status["uptime"]) <= 5
    finally:
        p.terminate()
        p.wait(10)
