"""What access control and TLS cost: the same workloads against eddy plain, with --auth,
with requireTLS, and with both, each a fresh server (one run, side by side, so the ratios
hold on a noisy machine).

- 1 writer: a PyMongo writer inserting single documents as fast as it can (w:1, so each
  waits for its fdatasync); commits/s and server CPU per document.
- fan-out: K change streams, a writer inserting N documents in batches of 100; server CPU
  per 1,000 deliveries.
- login: SCRAM-SHA-256 conversations (saslStart, saslContinue, the final empty step) on one
  connection, the client's keys computed once; wall time and server CPU per login.

Usage: python scripts/bench-security.py [--eddy target/release/eddy] [--seconds 10]
       [--streams 20] [--docs 5000] [--logins 2000]
Needs pymongo and openssl (for the certificates)."""
import argparse
import base64
import hashlib
import hmac
import multiprocessing as mp
import os
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import bson
import pymongo

USER, PWD = "bench", "bench-password"


def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def make_pki(d):
    def ossl(*a):
        subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)
    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", "ca.key",
         "-out", "ca.pem", "-subj", "/CN=bench CA")
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "s.key", "-out", "s.csr",
         "-subj", "/CN=localhost")
    Path(d, "s.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    ossl("x509", "-req", "-in", "s.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-days", "2", "-extfile", "s.ext", "-out", "s.crt")
    Path(d, "server.pem").write_text(Path(d, "s.crt").read_text() + Path(d, "s.key").read_text())


class Server:
    def __init__(self, eddy, auth, tls, pki):
        self.dir = tempfile.TemporaryDirectory()
        self.port = free_port()
        args = [eddy, "--port", str(self.port), "--dbpath", self.dir.name, "--quiet"]
        if auth:
            args.append("--auth")
        if tls:
            args += ["--tlsMode", "requireTLS", "--tlsCertificateKeyFile", f"{pki}/server.pem"]
        self.proc = subprocess.Popen(args)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        q = f"directConnection=true&tls={'true' if tls else 'false'}"
        if tls:
            q += f"&tlsCAFile={pki}/ca.pem"
        if auth:
            with pymongo.MongoClient(f"mongodb://127.0.0.1:{self.port}/?{q}") as c:
                c.admin.command("createUser", USER, pwd=PWD, roles=["root"],
                                mechanisms=["SCRAM-SHA-256"])
            self.uri = f"mongodb://{USER}:{PWD}@127.0.0.1:{self.port}/?{q}&authMechanism=SCRAM-SHA-256"
        else:
            self.uri = f"mongodb://127.0.0.1:{self.port}/?{q}"

    def close(self):
        self.proc.terminate()
        self.proc.wait()
        self.dir.cleanup()


def doc(i):
    return {"_id": i, "seq": i, "ts": time.time(), "name": "x" * 40, "n": i,
            "tags": ["a", "b", "c"], "nested": {"a": 1, "b": "two"}}


def subscriber(uri, n, ready, out):
    c = pymongo.MongoClient(uri)
    got = 0
    with c.bench.docs.watch(max_await_time_ms=250) as st:
        ready.release()
        deadline = time.monotonic() + 600
        while got < n and time.monotonic() < deadline:
            if st.try_next() is not None:
                got += 1
    out.put(got)


def one_writer(srv, seconds):
    c = pymongo.MongoClient(srv.uri)
    c.bench.docs.drop()
    c.bench.create_collection("docs")
    n, t0, s0 = 0, time.monotonic(), cpu(srv.proc.pid)
    while time.monotonic() - t0 < seconds:
        c.bench.docs.insert_one(doc(n))
        n += 1
    el = time.monotonic() - t0
    return n / el, (cpu(srv.proc.pid) - s0) / n * 1e6


def fan_out(srv, k, n):
    c = pymongo.MongoClient(srv.uri)
    c.bench.docs.drop()
    c.bench.create_collection("docs")
    ready, out = mp.Semaphore(0), mp.Queue()
    ps = [mp.Process(target=subscriber, args=(srv.uri, n, ready, out)) for _ in range(k)]
    for p in ps:
        p.start()
    for _ in ps:
        ready.acquire()
    time.sleep(0.5)
    s0, t0 = cpu(srv.proc.pid), time.monotonic()
    for i in range(0, n, 100):
        c.bench.docs.insert_many([doc(i + j) for j in range(100)])
    got = sum(out.get(timeout=900) for _ in ps)
    el = time.monotonic() - t0
    for p in ps:
        p.join()
    return got / el, (cpu(srv.proc.pid) - s0) / got * 1e6 * 1000


def op_msg(i, body):
    payload = struct.pack("<I", 0) + b"\x00" + bson.encode(body)
    return struct.pack("<iiii", 16 + len(payload), i, 0, 2013) + payload


def call(sock, i, body):
    sock.sendall(op_msg(i, body))
    head = b""
    while len(head) < 4:
        head += sock.recv(4 - len(head))
    n = struct.unpack("<i", head)[0]
    data = head
    while len(data) < n:
        data += sock.recv(n - len(data))
    return bson.decode(data[21:])


def logins(srv, count):
    """SCRAM-SHA-256 by hand (RFC 5802/7677) on one plain connection."""
    s = socket.create_connection(("127.0.0.1", srv.port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    keys = {}
    t_total, s0 = 0.0, cpu(srv.proc.pid)
    for i in range(count):
        t = time.perf_counter()
        nonce = base64.b64encode(os.urandom(24)).decode()
        first_bare = f"n={USER},r={nonce}"
        r = call(s, 1, {"saslStart": 1, "mechanism": "SCRAM-SHA-256",
                        "payload": bson.Binary(("n,," + first_bare).encode()),
                        "options": {"skipEmptyExchange": True}, "$db": "admin"})
        assert r["ok"] == 1, r
        server_first = bytes(r["payload"]).decode()
        f = dict(x.split("=", 1) for x in server_first.split(","))
        key = (f["s"], f["i"])
        if key not in keys:
            salted = hashlib.pbkdf2_hmac("sha256", PWD.encode(), base64.b64decode(f["s"]), int(f["i"]))
            ck = hmac.digest(salted, b"Client Key", "sha256")
            keys[key] = (ck, hashlib.sha256(ck).digest())
        ck, stored = keys[key]
        without_proof = f"c=biws,r={f['r']}"
        auth_msg = f"{first_bare},{server_first},{without_proof}".encode()
        sig = hmac.digest(stored, auth_msg, "sha256")
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(ck, sig))).decode()
        r = call(s, 2, {"saslContinue": 1, "conversationId": r["conversationId"],
                        "payload": bson.Binary(f"{without_proof},p={proof}".encode()),
                        "$db": "admin"})
        assert r["ok"] == 1 and r["done"], r
        t_total += time.perf_counter() - t
    return t_total / count * 1e6, (cpu(srv.proc.pid) - s0) / count * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--eddy", default="target/release/eddy")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--streams", type=int, default=20)
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--logins", type=int, default=2000)
    a = ap.parse_args()
    pki = tempfile.mkdtemp()
    make_pki(pki)
    print(f"{'mode':<12} {'1 writer docs/s':>16} {'CPU us/doc':>11} "
          f"{'fan-out deliveries/s':>21} {'CPU ms/1k deliveries':>21}")
    for name, auth, tls in [("plain", False, False), ("auth", True, False),
                            ("tls", False, True), ("tls+auth", True, True)]:
        srv = Server(a.eddy, auth, tls, pki)
        try:
            w, wc = one_writer(srv, a.seconds)
            f, fc = fan_out(srv, a.streams, a.docs)
            print(f"{name:<12} {w:>16,.0f} {wc:>11,.0f} {f:>21,.0f} {fc / 1000:>21.2f}", flush=True)
            if auth and not tls:
                wall, server = logins(srv, a.logins)
                login = f"SCRAM-SHA-256 login: {wall:,.0f} us wall, {server:,.0f} us server CPU"
        finally:
            srv.close()
    print(login)


if __name__ == "__main__":
    main()
