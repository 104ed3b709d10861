"""A fault-injecting HTTP proxy for an OpenAI-compatible server (chaos tests of a collection).

It listens on loopback, forwards each request to ``upstream`` and, drawn per request from a seeded
generator, injects one of these faults instead of a clean answer:

* ``http500``: answers HTTP 500 without forwarding;
* ``malformed``: forwards, then returns the upstream's 200 body cut in half (invalid JSON);
* ``slow``: waits ``slow_s`` seconds before forwarding (set it past the client's timeout);
* ``drop``: closes the connection without an answer.

``refuse(seconds)`` closes the listening socket for a while (connections are refused), then listens on
the same port again. When the upstream itself is down (killed), the proxy answers 502, as a gateway
does. ``counts`` tallies what happened to every request (each fault kind, ``forwarded``, ``bad_gateway``
and ``refused`` windows).

    python scripts/fault_proxy.py --upstream http://127.0.0.1:8000 --port 18600 \\
        --rate http500=0.05 --rate malformed=0.05 --rate slow=0.02 --rate drop=0.05 --slow-s 10

Used by tests/integration/test_vllm_faults.py against the real vLLM CPU server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("http500", "malformed", "slow", "drop")
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the default backlog of 5 resets connections in a burst of requests


class FaultProxy:
    """Args:
      upstream: the server's base URL (scheme, host, port; a path such as ``/v1`` is ignored: request
        paths are forwarded as they come).
      port: where to listen (0: a free port).
      rates: fault kind -> probability per request (their sum at most 1).
      seed: seeds the per-request draw, so a run's fault sequence repeats in request order.
      slow_s: the delay of a ``slow`` fault.
      upstream_timeout: seconds the proxy waits for the upstream's answer.
    """

    def __init__(self, upstream: str, port: int = 0, *, rates: dict[str, float] | None = None, seed: int = 0,
                 slow_s: float = 10.0, upstream_timeout: float = 300.0, host: str = "127.0.0.1"):
        u = urlsplit(upstream)
        if not u.hostname or not u.port:
            raise ValueError(f"upstream must be like http://host:port, got {upstream!r}")
        self.upstream = (u.hostname, u.port)
        self.host, self.port = host, port
        self.slow_s, self.upstream_timeout = float(slow_s), float(upstream_timeout)
        self.set_rates(**(rates or {}))
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control
    def set_rates(self, **rates: float) -> None:
        bad = set(rates) - set(FAULTS)
        if bad:
            raise ValueError(f"unknown fault kinds {sorted(bad)}; known: {FAULTS}")
        if any(r < 0 for r in rates.values()) or sum(rates.values()) > 1:
            raise ValueError(f"fault rates must be >= 0 and sum to at most 1, got {rates}")
        self.rates = {k: float(rates.get(k, 0.0)) for k in FAULTS}

    def _draw(self) -> str | None:
        with self._lock:
            u = self._rng.random()
        acc = 0.0
        for kind, r in self.rates.items():
            acc += r
            if u < acc:
                return kind
        return None

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "FaultProxy":
        self._server = _Server((self.host, self.port), self._handler())
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def refuse(self, seconds: float) -> None:
        """Stop listening now (connections are refused) and listen again after ``seconds``."""
        self.stop()
        self._count("refused_windows")
        t = threading.Timer(seconds, self._reopen)
        t.daemon = True
        t.start()

    def _reopen(self) -> None:
        for _ in range(100):  # the old socket may linger a moment
            try:
                self.start()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"fault proxy could not listen on port {self.port} again")

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ the handler
    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one request per connection: no keep-alive races

            def log_message(self, *a):
                pass

            def _reply(self, status: int, body: bytes, headers=()) -> None:
                try:
                    self.send_response(status)
                    for k, v in headers:
                        if k.lower() not in _HOP:
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
                    self.close_connection = True

            def _forward(self, body: bytes | None):
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=proxy.upstream_timeout)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    return resp.status, resp.read(), resp.getheaders()
                finally:
                    conn.close()

            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                fault = proxy._draw() if self.command == "POST" else None
                if fault == "drop":
                    proxy._count("drop")
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault == "http500":
                    proxy._count("http500")
                    err = {"error": {"message": "injected fault", "type": "InternalServerError", "code": 500}}
                    self._reply(500, json.dumps(err).encode(), [("Content-Type", "application/json")])
                    return
                if fault == "slow":
                    proxy._count("slow")
                    time.sleep(proxy.slow_s)
                try:
                    status, data, headers = self._forward(body)
                except OSError as e:  # upstream down: a gateway error
                    proxy._count("bad_gateway")
                    err = {"error": {"message": f"upstream unreachable: {e}", "code": 502}}
                    self._reply(502, json.dumps(err).encode(), [("Content-Type", "application/json")])
                    return
                if fault == "malformed" and status == 200:
                    proxy._count("malformed")
                    data = data[: len(data) // 2]
                elif fault != "slow":  # a slow answer is counted as "slow" only
                    proxy._count("forwarded")
                self._reply(status, data, headers)

            do_POST = do_GET = _handle

        return Handler


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--rate", action="append", default=[], help="KIND=P, KIND in " + ", ".join(FAULTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slow-s", type=float, default=10.0)
    args = ap.parse_args(argv)
    rates = {k: float(v) for k, v in (r.split("=", 1) for r in args.rate)}
    proxy = FaultProxy(args.upstream, args.port, rates=rates, seed=args.seed, slow_s=args.slow_s).start()
    print(f"fault proxy on {proxy.url} -> {args.upstream} (rates {proxy.rates})", flush=True)
    try:
        while True:
            time.sleep(5)
            print(dict(proxy.counts), flush=True)
    except KeyboardInterrupt:
        proxy.stop()


if __name__ == "__main__":
    main()
