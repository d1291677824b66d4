"""A browser's EventSource against eddy's Server-Sent Events, in headless Chromium (Debian's
chromium and chromium-driver, driven by Selenium): a page served from another origin opens
/v1/watch/<db>/<coll>, receives the inserts PyMongo makes, and when the server is killed
(kill -9) and restarted in the middle of a stream of 10,000 writes, reconnects by itself
with Last-Event-ID. At the end the page holds every insert exactly once, in order.

Run: EDDY_BIN=target/release/eddy python -m pytest tests/browser"""
import http.server
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pymongo
import pytest
from pymongo.errors import DuplicateKeyError, PyMongoError

ROOT = Path(__file__).resolve().parents[2]
EDDY = os.environ.get("EDDY_BIN", str(ROOT / "target/release/eddy"))
CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
N = 10_000

pytestmark = pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                                reason="apt install chromium chromium-driver")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


PAGE = """<!doctype html><html><body><script>
window.events = []; window.opens = 0; window.errors = 0;
const es = new EventSource("http://127.0.0.1:%(http)d/v1/watch/browser/c");
es.onopen = () => { window.opens++; };
es.onerror = () => { window.errors++; };
es.onmessage = (e) => {
  const ev = JSON.parse(e.data);
  if (ev.operationType === "insert") window.events.push(ev.fullDocument.n);
};
</script></body></html>"""


def test_event_source_reconnects_through_a_restart_and_misses_nothing():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    port, http_port, web_port = free_port(), free_port(), free_port()
    data = tempfile.mkdtemp()
    args = [EDDY, "--port", str(port), "--dbpath", data, "--quiet", "--httpPort", str(http_port),
            "--httpCorsOrigin", f"http://127.0.0.1:{web_port}"]
    server = subprocess.Popen(args)
    page = (PAGE % {"http": http_port}).encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *a):
            pass

    web = http.server.ThreadingHTTPServer(("127.0.0.1", web_port), Page)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(a)
    browser = None
    try:
        wait_port(port)
        wait_port(http_port)
        client = pymongo.MongoClient("127.0.0.1", port, directConnection=True,
                                     serverSelectionTimeoutMS=20000)
        coll = client.browser.c
        coll.insert_one({"_id": -1, "n": -1, "note": "before the page: not expected"})
        browser = webdriver.Chrome(service=Service(DRIVER), options=opts)
        browser.get(f"http://127.0.0.1:{web_port}/")
        js = lambda s: browser.execute_script("return " + s)
        end = time.time() + 30
        while js("window.opens") < 1:
            assert time.time() < end, "the EventSource never opened"
            time.sleep(0.05)

        # Inserts made by PyMongo reach the page.
        for n in range(10):
            coll.insert_one({"_id": n, "n": n})
        end = time.time() + 30
        while js("window.events.length") < 10:
            assert time.time() < end, js("window.events")
            time.sleep(0.05)
        assert js("window.events") == list(range(10))

        # 10,000 more, with the server killed and restarted in the middle.
        done = threading.Event()

        def write():
            n = 10
            while n < 10 + N:
                try:
                    coll.insert_one({"_id": n, "n": n})
                    n += 1
                except DuplicateKeyError:
                    n += 1  # it landed before the kill
                except PyMongoError:
                    time.sleep(0.05)
            done.set()

        writer = threading.Thread(target=write)
        writer.start()
        end = time.time() + 120
        while js("window.events.length") < 3000:
            assert time.time() < end, js("window.events.length")
            time.sleep(0.05)
        server.send_signal(signal.SIGKILL)
        server.wait()
        killed_at = js("window.events.length")
        time.sleep(0.5)
        server = subprocess.Popen(args)
        wait_port(port)
        writer.join(300)
        assert done.is_set(), "the writer did not finish"
        end = time.time() + 120
        while js("window.events.length") < 10 + N:
            assert time.time() < end, (js("window.events.length"), js("window.opens"))
            time.sleep(0.1)
        time.sleep(1.5)  # nothing more may come
        events = js("window.events")
        assert js("window.opens") >= 2, "the page reconnected by itself"
        assert killed_at < 10 + N, "the restart happened in the middle of the stream"
        if events != list(range(10 + N)):
            dup = next((i for i in range(1, len(events)) if events[i] <= events[i - 1]), None)
            missing = sorted(set(range(10 + N)) - set(events))[:5]
            raise AssertionError(f"{len(events)} events; first out of order at {dup}; missing {missing}")
        print(f"browser: {len(events)} events, reconnected after kill -9 at event {killed_at}, "
              f"{js('window.opens')} opens, {js('window.errors')} errors")
    finally:
        if browser is not None:
            browser.quit()
        web.shutdown()
        server.kill()
        server.wait()
        shutil.rmtree(data, ignore_errors=True)
