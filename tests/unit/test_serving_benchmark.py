"""benchmarks/serving.py's summary over rounds, and the reference app of benchmarks/minimal_server.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from benchmarks.minimal_server import FIXED_ANSWER, READY, build_app, main
from benchmarks.serving import summarise


def a_round(bare_1: float, bare_32: float, http: dict[str, tuple[float, float, float]]) -> dict[str, Any]:
    """One round: the bare model's p50 per batch, and per case of server ``s`` its (p50, p99, requests/s)."""
    return {
        "bare_model": {
            "batch_1": {"p50_ms": bare_1, "p99_ms": bare_1 * 2, "calls": 100},
            "batch_32": {"p50_ms": bare_32, "p99_ms": bare_32 * 2, "calls": 100},
        },
        "http": {
            "s": {case: {"p50_ms": p50, "p99_ms": p99, "requests_per_s": rps} for case, (p50, p99, rps) in http.items()}
        },
    }


ROUNDS = [
    a_round(0.30, 0.40, {"batch_1_clients_1": (0.70, 1.0, 1400.0), "batch_32_clients_1": (0.90, 1.5, 1100.0)}),
    a_round(0.25, 0.35, {"batch_1_clients_1": (0.60, 0.9, 1600.0), "batch_32_clients_1": (1.00, 1.4, 1000.0)}),
    a_round(0.40, 0.50, {"batch_1_clients_1": (0.65, 2.0, 1500.0), "batch_32_clients_1": (0.80, 1.2, 1200.0)}),
]


def test_each_figure_is_the_median_over_the_rounds() -> None:
    summary = summarise(ROUNDS, "s")
    assert summary["bare_model"]["batch_1"] == {"p50_ms": 0.30, "p99_ms": 0.60}
    case = summary["http"]["batch_1_clients_1"]
    assert (case["batch"], case["clients"]) == (1, 1)
    assert case["p50_ms"] == 0.65  # of 0.70, 0.60, 0.65
    assert case["p99_ms"] == 1.0  # of 1.0, 0.9, 2.0
    assert case["requests_per_s"] == 1500.0
    assert case["rows_per_s"] == 1500.0
    assert summary["http"]["batch_32_clients_1"]["rows_per_s"] == 1100.0 * 32


def test_overheads_pair_each_round_with_the_bare_model_of_that_round() -> None:
    summary = summarise(ROUNDS, "s")
    # Batch 1: 0.70-0.30, 0.60-0.25, 0.65-0.40 = 0.40, 0.35, 0.25 -> 0.35; the difference of the medians
    # (0.65 - 0.30) happens to agree here, so the ratio below is the check that pairs.
    assert summary["overhead_per_request_ms_at_batch_1"] == pytest.approx(0.35)
    # Ratios 0.70/0.30, 0.60/0.25, 0.65/0.40 = 2.333, 2.4, 1.625 -> 2.333; the ratio of the medians is 2.1667.
    assert summary["http"]["batch_1_clients_1"]["ratio_p50_vs_bare_model"] == pytest.approx(0.70 / 0.30)
    # Batch 32: 0.50, 0.65, 0.30 ms -> 0.50 ms over 32 rows = 15.625 µs a row; medians alone give 0.90-0.40 too,
    # so the rounds below break that tie.
    assert summary["overhead_per_row_us_at_batch_32"] == pytest.approx(500 / 32)
    skewed = [
        *ROUNDS[:2],
        a_round(0.40, 0.10, {"batch_1_clients_1": (0.65, 2.0, 1500.0), "batch_32_clients_1": (0.80, 1.2, 1200.0)}),
    ]
    # Batch 32 now: 0.50, 0.65, 0.70 -> 0.65 ms; the difference of the medians would be 0.90 - 0.35 = 0.55.
    assert summarise(skewed, "s")["overhead_per_row_us_at_batch_32"] == pytest.approx(650 / 32)


async def call(app: Any, scope: dict[str, Any], incoming: list[dict[str, Any]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    queue = list(incoming)

    async def receive() -> dict[str, Any]:
        return queue.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def test_the_reference_app_answers_the_joined_body_with_its_length() -> None:
    seen: list[bytes] = []

    def answer(body: bytes) -> bytes:
        seen.append(body)
        return FIXED_ANSWER

    chunks = [
        {"type": "http.request", "body": b'{"inst', "more_body": True},
        {"type": "http.request", "body": b'ances": [[1]]}'},
    ]
    start, body = asyncio.run(call(build_app(answer), {"type": "http"}, chunks))
    assert seen == [b'{"instances": [[1]]}']
    assert start["status"] == 200
    assert dict(start["headers"]) == {
        b"content-type": b"application/json",
        b"content-length": str(len(FIXED_ANSWER)).encode(),
    }
    assert body == {"type": "http.response.body", "body": FIXED_ANSWER}


def test_the_reference_app_answers_a_request_without_a_body_as_ready_and_runs_its_lifespan() -> None:
    app = build_app(lambda _: pytest.fail("no body, no call"))
    _, body = asyncio.run(call(app, {"type": "http"}, [{"type": "http.request", "body": b""}]))
    assert body["body"] == READY
    lifespan = asyncio.run(
        call(app, {"type": "lifespan"}, [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    )
    assert lifespan == [{"type": "lifespan.startup.complete"}, {"type": "lifespan.shutdown.complete"}]


@pytest.mark.parametrize("argv", [["--port", "1"], ["--port", "1", "--model", "m", "--fixed"]])
def test_the_reference_server_takes_a_model_or_fixed_answers_not_both_nor_neither(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "give either --model or --fixed" in capsys.readouterr().err
