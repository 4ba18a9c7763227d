"""An S3 stand-in for tests: moto's S3 server on a free loopback port, reached over real HTTP.

The standard AWS variables (``AWS_ENDPOINT_URL_S3``, dummy credentials, a
region) point every boto3 client at it, in this process and in the child
processes tests start, so the registry under test builds its client exactly as
it does in production.

moto checks a conditional write's condition and then writes, in two steps
without a lock, and its server handles requests in threads; real S3 does the
check and the write atomically.  :class:`SerialisedMotoServer` handles one
request at a time, which gives the stand-in S3's atomicity (without it two
racing ``If-None-Match: *`` writes can both succeed on moto, and the
concurrency tests would test moto instead of the registry).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

BUCKET = "mlops-registry-tests"
ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


class _OneAtATime:
    """A WSGI app that lets one request through at a time (its whole response included)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with self.lock:
            return list(self.app(environ, start_response))


class SerialisedMotoServer(ThreadedMotoServer):
    """moto's threaded server with requests serialised (see the module docstring); port 0 picks a free one."""

    def _server_entry(self) -> None:
        app = _OneAtATime(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()


def running_s3() -> Iterator[str]:
    """Start the stand-in, set the AWS variables, create :data:`BUCKET`; yields the endpoint URL."""
    import boto3

    server = SerialisedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {key: os.environ.get(key) for key in [*ENVIRONMENT, "AWS_ENDPOINT_URL_S3"]}
    os.environ.update(ENVIRONMENT, AWS_ENDPOINT_URL_S3=endpoint)
    try:
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


def registry_uri(scratch: Path) -> str:
    """A registry prefix of its own for each test's scratch folder, in the shared bucket."""
    return f"s3://{BUCKET}/{hashlib.sha256(str(scratch).encode()).hexdigest()[:16]}/models"
