#!/usr/bin/env python3
"""A remote plugin endpoint for the tests: answers POST {"event", "context"} with a
PluginResult. Prints its port on stdout, then serves until killed. Behaviour follows the
event's payload "mode": "fail" -> HTTP 500; "slow" -> answers after 3 s; "garbage" -> a
body that is not JSON; anything else -> success with the event type in metadata and one
generated event. Every request body is appended (one JSON line) to the file given as
argv[1]."""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = sys.argv[1]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with open(LOG, "a") as f:
            f.write(body.decode() + "\n")
        doc = json.loads(body)
        event = doc["event"]
        mode = event.get("payload", {}).get("mode", "")
        if mode == "fail":
            self.answer(500, b'{"error":"remote failure"}')
            return
        if mode == "slow":
            time.sleep(3)
        if mode == "garbage":
            self.answer(200, b"not json at all")
            return
        result = {
            "success": True,
            "metadata": {"remoteSaw": event["type"], "previous": [r["pluginId"] for r in doc["context"]["previousResults"]]},
            "generatedEvents": [{
                "aggregateId": "remote-" + event["aggregateId"],
                "type": "remote.noted",
                "aggregateType": "remote",
                "payload": {"of": event["id"]},
            }],
        }
        self.answer(200, json.dumps(result).encode())

    def answer(self, status, data):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
