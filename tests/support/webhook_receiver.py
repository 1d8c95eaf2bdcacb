#!/usr/bin/env python3
"""A webhook receiver for the routing tests that verifies Standard Webhooks signatures
itself (an implementation independent of the server's): HMAC-SHA256 over
"<webhook-id>.<webhook-timestamp>.<body>" keyed with the base64 after "whsec_", compared
with every "v1,<base64>" in webhook-signature. Prints its port, then serves until killed.
Usage: webhook_receiver.py LOG SECRET. Each request is appended to LOG as one JSON line
{"path", "id", "timestamp", "verified", "event"}. Behaviour by path:
  /ok -> 204; /fail -> 500; /gone -> 410; /redirect -> 302 to /ok;
  /slow -> answers 200 after 3 s;
  /limited -> 429 with Retry-After: 2 the first time an id is seen, then 200;
  /flaky -> 500 the first time an id is seen, then 200."""
import base64
import hashlib
import hmac
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = sys.argv[1]
SECRET = sys.argv[2]
KEY = base64.b64decode(SECRET[len("whsec_"):]) if SECRET.startswith("whsec_") else SECRET.encode()
seen = set()
lock = threading.Lock()


def verify(headers, body):
    msg_id = headers.get("webhook-id", "")
    ts = headers.get("webhook-timestamp", "")
    expected = base64.b64encode(hmac.new(KEY, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    for part in headers.get("webhook-signature", "").split(" "):
        version, _, sig = part.partition(",")
        if version == "v1" and hmac.compare_digest(sig, expected):
            return abs(time.time() - int(ts)) < 300
    return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        msg_id = self.headers.get("webhook-id", "")
        record = {"path": self.path, "at": time.time(), "id": msg_id, "timestamp": self.headers.get("webhook-timestamp"),
                  "verified": verify(self.headers, body), "event": json.loads(body)}
        with lock:
            with open(LOG, "a") as f:
                f.write(json.dumps(record) + "\n")
            first = (self.path, msg_id) not in seen
            seen.add((self.path, msg_id))
        if self.path == "/fail":
            return self.answer(500)
        if self.path == "/gone":
            return self.answer(410)
        if self.path == "/redirect":
            return self.answer(302, {"Location": "/ok"})
        if self.path == "/slow":
            time.sleep(3)
        if self.path == "/limited" and first:
            return self.answer(429, {"Retry-After": "2"})
        if self.path == "/flaky" and first:
            return self.answer(500)
        self.answer(204 if self.path == "/ok" else 200)

    def answer(self, status, headers=None):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
