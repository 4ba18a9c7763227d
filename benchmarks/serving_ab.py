"""A/B of the model server's code: two source trees served side by side, load windows alternated.

    git worktree add --detach /tmp/before <rev>
    python -m benchmarks.serving_ab /tmp/before .        # writes benchmarks/results/serving_ab.json

The plain serving benchmark runs one tree at a time, and on a shared 2-core
machine its figures drift by more than the differences a change to request
parsing or response writing makes.  Here both servers run at once on the same
registry (each in its own process, from its own tree), and every load window
on one is followed by one on the other, the order flipping each round, so
both see the same machine.  Reported per case: medians of p50 and throughput,
and the median of the paired throughput ratios (B / A).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.serving import (
    BATCHES,
    CONCURRENCY,
    PROJECT_ROOT,
    SECONDS_PER_RUN,
    _build_registry,
    _free_port,
    _load_window,
    _wait_ready,
    model_server_argv,
    serve,
)

ROUNDS = 6


def _revision(tree: Path) -> str:
    """The commit a tree is checked out at (what the results name), or 'unknown' outside git."""
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def _window(port: int, path: str, body: Path, clients: int) -> tuple[float, float]:
    window = _load_window(port, path, body, clients)
    return window["p50_ms"], window["requests_per_s"]


def run(tree_a: Path, tree_b: Path, results_dir: Path, rounds: int = ROUNDS) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="serving-ab-") as tmp:
        root = Path(tmp)
        config, _, rows = _build_registry(root)
        name = config.serving_name
        ports = {"a": _free_port(), "b": _free_port()}
        trees = {"a": tree_a, "b": tree_b}
        servers = {key: serve(model_server_argv(root / "models", ports[key]), tree) for key, tree in trees.items()}
        windows: dict[str, dict[str, list[tuple[float, float]]]] = {}
        try:
            for key, server in servers.items():
                _wait_ready(f"http://127.0.0.1:{ports[key]}/v1/models/{name}/labels/stable", server)
            path = f"/v1/models/{name}/labels/stable:predict"
            for round_ in range(rounds):
                for batch in BATCHES:
                    body = root / f"body-{batch}.json"
                    body.write_text(json.dumps({"instances": rows[:batch].tolist()}))
                    for clients in CONCURRENCY:
                        case = windows.setdefault(f"batch_{batch}_clients_{clients}", {"a": [], "b": []})
                        for key in ("a", "b") if round_ % 2 == 0 else ("b", "a"):
                            case[key].append(_window(ports[key], path, body, clients))
                print(f"round {round_ + 1}/{rounds} done", file=sys.stderr, flush=True)
        finally:
            for server in servers.values():
                server.terminate()
                server.wait(timeout=30)
    cases = {}
    for case, by_tree in windows.items():
        p50 = {key: statistics.median(w[0] for w in ws) for key, ws in by_tree.items()}
        rps = {key: statistics.median(w[1] for w in ws) for key, ws in by_tree.items()}
        paired = statistics.median(b[1] / a[1] for a, b in zip(by_tree["a"], by_tree["b"], strict=True))
        cases[case] = {
            "p50_ms": p50,
            "requests_per_s": rps,
            "p50_ratio_b_over_a": p50["b"] / p50["a"],
            "throughput_ratio_b_over_a_paired_median": paired,
        }
    results = {
        "benchmark": "serving_ab",
        "tree_a": {"path": str(tree_a), "commit": _revision(tree_a)},
        "tree_b": {"path": str(tree_b), "commit": _revision(tree_b)},
        "rounds": rounds,
        "seconds_per_window": SECONDS_PER_RUN,
        "cpu_count": os.cpu_count(),
        "cases": cases,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "serving_ab.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving_ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("tree_a", type=Path, help="the baseline source tree (e.g. a worktree of the previous commit)")
    parser.add_argument("tree_b", type=Path, help="the source tree to compare with it")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"load windows per tree and case (default {ROUNDS})")
    parser.add_argument("--results-dir", type=Path, default=PROJECT_ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    print(json.dumps(run(args.tree_a.resolve(), args.tree_b.resolve(), args.results_dir, args.rounds), indent=2))


if __name__ == "__main__":
    main()
