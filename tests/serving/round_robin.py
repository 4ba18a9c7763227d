"""Several model servers behind one address, as replicas behind a Kubernetes Service.

Requests go to the backends in strict turn (a Service balances at random; turn
by turn makes "the next request reaches the other replica" certain rather
than likely).  Only what a deploy sends is relayed: GET and POST with a JSON body.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


@contextlib.contextmanager
def round_robin(backends: Sequence[str]) -> Iterator[str]:
    """Serve ``backends`` (base URLs) behind one local URL, which the block gets."""
    turn = itertools.cycle(backends)
    lock = threading.Lock()
    client = httpx.Client(timeout=30)

    class Relay(BaseHTTPRequestHandler):
        def _relay(self) -> None:
            with lock:
                backend = next(turn)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
            response = client.request(self.command, backend + self.path, content=body or None, headers=headers)
            self.send_response(response.status_code)
            self.send_header("Content-Type", response.headers.get("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(response.content)))
            self.end_headers()
            self.wfile.write(response.content)

        do_GET = do_POST = _relay

        def log_message(self, format: str, *args: object) -> None:
            pass

    try:
        with http_server(Relay, "round-robin") as url:
            yield url
    finally:
        client.close()


@contextlib.contextmanager
def http_server(handler: type[BaseHTTPRequestHandler], name: str) -> Iterator[str]:
    """Run ``handler`` on a free loopback port in a thread; the block gets the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
