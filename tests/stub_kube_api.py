"""A Kubernetes API server stand-in on loopback, and a kubeconfig that points at it.

For the operator tests that need the provider's real client code paths (read a
pod, label it, delete it) without a cluster: the handler class decides what
each request gets.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{{name: stub, cluster: {{server: "{server}"}}}}]
users: [{{name: nobody, user: {{}}}}]
contexts: [{{name: stub, context: {{cluster: stub, user: nobody}}}}]
current-context: stub
"""


@contextmanager
def stub_kubeconfig(handler: type[http.server.BaseHTTPRequestHandler], folder: Path) -> Iterator[Path]:
    """Serve ``handler`` on a free loopback port while the block runs; yield a kubeconfig file for it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    path = folder / "kubeconfig"
    path.write_text(KUBECONFIG.format(server=f"http://127.0.0.1:{server.server_address[1]}"))
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()
