"""Folds a pytest junit file into one line, "N passed, M failed, K skipped", and exits
non-zero if anything failed or nothing passed. A skip because the harness could not
connect counts as a failure, so an unreachable server can never look green.

With a second argument, the names of the tests that passed are written there, one per
line, sorted (scripts/test.sh compares the runs with and without auth)."""
import sys
import xml.etree.ElementTree as ET

status = {}
for tc in ET.parse(sys.argv[1]).iter("testcase"):
    if not tc.get("name"):
        continue
    key = (tc.get("classname"), tc.get("name"))
    kids = {c.tag: c for c in tc}
    if "failure" in kids or "error" in kids:
        st = "failed"
    elif "skipped" in kids:
        msg = (kids["skipped"].get("message") or "") + (kids["skipped"].text or "")
        st = "failed" if "Cannot connect" in msg else "skipped"
    else:
        st = "passed"
    if status.get(key) != "failed":
        status[key] = st
if len(sys.argv) > 2:
    with open(sys.argv[2], "w") as f:
        for c, n in sorted(k for k, v in status.items() if v == "passed"):
            f.write(f"{c}::{n}\n")
counts = {s: sum(1 for v in status.values() if v == s) for s in ("passed", "failed", "skipped")}
print(f"spec: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
sys.exit(1 if counts["failed"] or not counts["passed"] else 0)
