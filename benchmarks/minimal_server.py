"""Reference servers for the serving benchmark: the least an ASGI app on uvicorn can do per predict.

    python -m benchmarks.minimal_server --model VERSION_DIR --port 8601          # parse, call, answer
    python -m benchmarks.minimal_server --port 8602 --fixed                      # a fixed answer, no model

Both run under uvicorn with the settings the model server uses (uvloop, httptools, no access log) and
answer every request alike, whatever its path.  ``model``: read the body with orjson, call the
SavedModel's ``serving_default`` signature as the bare-model baseline does, and write
``{"predictions": ...}`` with orjson -- no TF Serving formats, errors, routes or metrics.
``fixed``: the same 30-byte answer to every request, the round trip of HTTP on uvicorn alone.  What the
model server takes beyond ``model`` is its own work; what ``model`` takes beyond the bare model is
HTTP, uvicorn and the load generator on this machine.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Message = dict[str, Any]
ASGIApp = Callable[[Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

FIXED_ANSWER = b'{"predictions": [[0.12345678]]}'
READY = b'{"state": "AVAILABLE"}'


def build_app(answer: Callable[[bytes], bytes]) -> ASGIApp:
    """An ASGI app that answers every HTTP request with ``answer(body)`` as JSON."""

    async def app(
        scope: Message, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        request = b"".join(chunks)
        body = answer(request) if request else READY  # a GET: the benchmark's readiness check
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def model_answer(version_dir: Path) -> Callable[[bytes], bytes]:
    """``{"instances": rows}`` -> ``{"predictions": ...}`` through the SavedModel, nothing checked."""
    import numpy as np
    import orjson

    from include.mlops.training.savedmodel import load_serving_fn

    predict = load_serving_fn(version_dir)

    def answer(body: bytes) -> bytes:
        rows = np.asarray(orjson.loads(body)["instances"], dtype=np.float32)
        return orjson.dumps({"predictions": predict(rows).tolist()})

    return answer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.minimal_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a SavedModel folder (a registry version); not with --fixed")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fixed", action="store_true", help="answer a fixed body; load no model")
    args = parser.parse_args(argv)
    if (args.model is None) != args.fixed:
        parser.error("give either --model or --fixed")
    import uvicorn

    answer = (lambda _: FIXED_ANSWER) if args.fixed else model_answer(args.model)
    uvicorn.run(build_app(answer), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
