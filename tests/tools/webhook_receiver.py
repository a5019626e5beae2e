#!/usr/bin/env python3
"""A webhook receiver for the delivery tests: verifies every request with the Standard
Webhooks reference library (`standardwebhooks` from PyPI, not IACE's code), answers a share of
the attempts with 500, and logs each accepted delivery as one JSON line.

    webhook_receiver.py PORT_FILE SECRETS_FILE LOG_FILE [--fail-rate R] [--seed S]
                        [--max-failures-per-id N] [--status-for-all CODE]

PORT_FILE gets the port it listens on (127.0.0.1, chosen by the system). SECRETS_FILE holds
the accepted secrets, one per line; it is read again on every request (the test writes it
once the endpoint exists, and again after a rotation). A request no secret verifies is
answered 401 and logged with "verified": false. With --status-for-all every request gets
that status after verification (a receiver that is gone answers 410).
"""

import argparse
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

ARGS = None
LOCK = threading.Lock()
RNG = None
FAILURES = {}


def secrets():
    try:
        with open(ARGS.secrets_file) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


def verified_by(body, headers):
    """The secrets (by index) whose signature verifies the request."""
    ok = []
    for i, secret in enumerate(secrets()):
        try:
            # Each secret is checked alone: the library accepts the request when any of the
            # signatures in the header is that secret's.
            Webhook(secret).verify(body, headers)
            ok.append(i)
        except Exception:
            pass
    return ok


def log(record):
    with LOCK:
        with open(ARGS.log_file, "a") as f:
            f.write(json.dumps(record) + "\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, code, text=b""):
        self.send_response(code)
        self.send_header("content-length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def do_POST(self):
        length = int(self.headers.get("content-length", "0"))
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        wid = headers.get("webhook-id", "")
        ok = verified_by(body, headers)
        if not ok:
            log({"id": wid, "verified": False, "signature": headers.get("webhook-signature")})
            return self.answer(401, b"bad signature")
        if ARGS.status_for_all:
            log({"id": wid, "verified": True, "answered": ARGS.status_for_all})
            return self.answer(ARGS.status_for_all, b"gone")
        with LOCK:
            fail = (
                RNG.random() < ARGS.fail_rate
                and FAILURES.get(wid, 0) < ARGS.max_failures_per_id
            )
            if fail:
                FAILURES[wid] = FAILURES.get(wid, 0) + 1
        if fail:
            return self.answer(500, b"try again")
        payload = json.loads(body)
        data = payload.get("data") or {}
        call = data.get("id") or data.get("call_id") or (data.get("call") or {}).get("id")
        log({
            "id": wid,
            "verified": True,
            "secrets": ok,
            "type": payload.get("type"),
            "call_id": call,
            "timestamp": headers.get("webhook-timestamp"),
            "received_at": time.time(),
            "payload": payload,
        })
        self.answer(204)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A sender killed mid-request (the crash tests) breaks its connection: not news.
        pass


def main():
    global ARGS, RNG
    p = argparse.ArgumentParser()
    p.add_argument("port_file")
    p.add_argument("secrets_file")
    p.add_argument("log_file")
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--max-failures-per-id", type=int, default=3)
    p.add_argument("--status-for-all", type=int, default=0)
    ARGS = p.parse_args()
    RNG = random.Random(ARGS.seed)
    server = Server(("127.0.0.1", 0), Handler)
    tmp = ARGS.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    import os
    os.replace(tmp, ARGS.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
