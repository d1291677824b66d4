"""Access control and TLS as real clients use them: PyMongo over TLS (with and without a
client certificate, the certificates made by openssl), SCRAM logins through PyMongo, and
mongosh's `-u/-p`, `db.createUser` and `db.getUsers()`.

Each test starts its own eddy (EDDY_BIN, default target/release/eddy) on a free port with
a temporary data directory."""
import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure, ServerSelectionTimeoutError

ROOT = Path(__file__).resolve().parents[2]
EDDY = os.environ.get("EDDY_BIN", str(ROOT / "target/release/eddy"))
MONGOSH = ROOT / "tests/node/node_modules/.bin/mongosh"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Eddy:
    def __init__(self, *args):
        self.dir = tempfile.TemporaryDirectory()
        self.port = free_port()
        self.proc = subprocess.Popen(
            [EDDY, "--port", str(self.port), "--dbpath", self.dir.name, "--quiet", *args]
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert self.proc.poll() is None, "eddy exited at start"
                time.sleep(0.05)
        raise RuntimeError("eddy did not start listening")

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.dir.cleanup()


@pytest.fixture
def eddy_factory():
    started = []

    def start(*args):
        e = Eddy(*args)
        started.append(e)
        return e

    yield start
    for e in started:
        e.close()


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki():
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, each
    leaf written as certificate + key in one PEM (what --tlsCertificateKeyFile takes)."""
    d = tempfile.TemporaryDirectory()
    p = Path(d.name)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=Eddy test CA", cwd=p)
    for name, ext in [
        ("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ]:
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=p)
        (p / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                "-out", f"{name}.crt", cwd=p)
        (p / f"{name}.pem").write_text((p / f"{name}.crt").read_text() + (p / f"{name}.key").read_text())
    yield p
    d.cleanup()


def client(port, **kw):
    return MongoClient("127.0.0.1", port, directConnection=True, serverSelectionTimeoutMS=3000, **kw)


def round_trip(c):
    coll = c.t.c
    coll.drop()
    with coll.watch() as stream:
        coll.insert_one({"_id": 1, "pad": "x" * 100_000})
        ev = stream.next()
    assert ev["operationType"] == "insert" and ev["fullDocument"]["_id"] == 1
    assert coll.find_one({"_id": 1})["pad"] == "x" * 100_000


def test_pymongo_over_tls_without_a_client_certificate(eddy_factory, pki):
    e = eddy_factory("--tlsMode", "requireTLS", "--tlsCertificateKeyFile", str(pki / "server.pem"),
                     "--tlsCAFile", str(pki / "ca.pem"), "--tlsAllowConnectionsWithoutCertificates")
    with client(e.port, tls=True, tlsCAFile=str(pki / "ca.pem")) as c:
        round_trip(c)
    # Plain connections are refused on a requireTLS port.
    with client(e.port) as c, pytest.raises(ServerSelectionTimeoutError):
        c.admin.command("ping")


def test_pymongo_over_tls_with_a_client_certificate(eddy_factory, pki):
    e = eddy_factory("--tlsMode", "requireTLS", "--tlsCertificateKeyFile", str(pki / "server.pem"),
                     "--tlsCAFile", str(pki / "ca.pem"))
    with client(e.port, tls=True, tlsCAFile=str(pki / "ca.pem"),
                tlsCertificateKeyFile=str(pki / "client.pem")) as c:
        round_trip(c)
    # Without a certificate, the handshake fails.
    with client(e.port, tls=True, tlsCAFile=str(pki / "ca.pem")) as c, \
            pytest.raises(ServerSelectionTimeoutError):
        c.admin.command("ping")


def test_pymongo_scram_login_over_tls_with_auth(eddy_factory, pki):
    e = eddy_factory("--auth", "--tlsMode", "preferTLS",
                     "--tlsCertificateKeyFile", str(pki / "server.pem"),
                     "--tlsAllowConnectionsWithoutCertificates")
    # The localhost exception: the first user, created over a plain connection.
    with client(e.port) as c:
        c.admin.command("createUser", "root", pwd="secret", roles=["root"])
        with pytest.raises(OperationFailure) as err:
            c.t.c.insert_one({})
        assert err.value.code == 13
    for mech in ["SCRAM-SHA-256", "SCRAM-SHA-1"]:
        with client(e.port, tls=True, tlsCAFile=str(pki / "ca.pem"), username="root",
                    password="secret", authMechanism=mech) as c:
            round_trip(c)
            status = c.admin.command("connectionStatus")["authInfo"]
            assert status["authenticatedUsers"] == [{"user": "root", "db": "admin"}]
    with client(e.port, tls=True, tlsCAFile=str(pki / "ca.pem"), username="root",
                password="wrong") as c, pytest.raises(OperationFailure) as err:
        c.admin.command("ping")
    assert err.value.code == 18


def mongosh(port, script, *args):
    r = subprocess.run(
        [str(MONGOSH), f"mongodb://127.0.0.1:{port}/?directConnection=true", "--quiet",
         "--norc", *args, "--eval", script],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "MONGOSH_SKIP_NODE_VERSION_CHECK": "1"},
    )
    return r


@pytest.mark.skipif(not MONGOSH.exists(), reason="npm ci in tests/node installs mongosh")
def test_mongosh_users(eddy_factory):
    e = eddy_factory("--auth")
    r = mongosh(e.port, 'db.getSiblingDB("admin").createUser('
                        '{user: "boss", pwd: "pw1", roles: ["root"]}); print("made")')
    assert r.returncode == 0 and "made" in r.stdout, r.stderr + r.stdout

    script = """
      const app = db.getSiblingDB("app");
      app.createUser({user: "writer", pwd: "pw2", roles: [{role: "readWrite", db: "app"}]});
      print(JSON.stringify(app.getUsers().users.map(u => ({user: u.user, roles: u.roles}))));
    """
    r = mongosh(e.port, script, "-u", "boss", "-p", "pw1", "--authenticationDatabase", "admin")
    assert r.returncode == 0, r.stderr + r.stdout
    users = json.loads(r.stdout.strip().splitlines()[-1])
    assert users == [{"user": "writer", "roles": [{"role": "readWrite", "db": "app"}]}]

    script = """
      db.getSiblingDB("app").c.insertOne({x: 1});
      print("count", db.getSiblingDB("app").c.countDocuments({}));
      try { db.getSiblingDB("other").c.insertOne({x: 1}); print("inserted elsewhere"); }
      catch (e) { print("refused", e.code); }
    """
    r = mongosh(e.port, script, "-u", "writer", "-p", "pw2", "--authenticationDatabase", "app")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "count 1" in r.stdout and "refused 13" in r.stdout, r.stdout

    r = mongosh(e.port, "print('in')", "-u", "writer", "-p", "nope", "--authenticationDatabase", "app")
    assert r.returncode != 0 and "in" not in r.stdout.split()
    assert "Authentication failed" in r.stdout + r.stderr, r.stdout + r.stderr
