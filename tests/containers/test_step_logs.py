"""Readable step logs on the local backend: the step's own lines as they are, the ML runtime's at its own level."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
from airflow.sdk import DAG

from mlops_airflow.operators import LifecycleStepOperator
from mlops_airflow.step_logs import SHOW_ALL_ENV, StepLogRouter, has_nvidia_gpu

DAY = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
CUINIT = (
    "E0000 00:00:1795780069.087334   21460 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)"
)
NODEDEF = (
    "E0000 00:00:1795780071.154165   21460 node_def_util.cc:682] NodeDef mentions attribute "
    "use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset; ...>"
)
STEP_LINE = "2026-11-27 11:47:51,915 INFO include.mlops.training.train: train diabetes: epoch 1/2 loss=9687 mae=83.51"
OOM = "2026-11-27 11:00:00.123456: W tensorflow/core/framework/cpu_allocator_impl.cc:83] Allocation exceeds 10%"


def test_router_levels() -> None:
    cpu = StepLogRouter(cpu_only=True)
    assert cpu.level(STEP_LINE) == logging.INFO
    assert cpu.level('{"model_uri": "/x"}') == logging.INFO
    assert cpu.level(CUINIT) is None and cpu.level(NODEDEF) is None
    assert cpu.level(OOM) == logging.WARNING
    gpu = StepLogRouter(cpu_only=False)
    # On a GPU machine a failed cuInit is a real error.
    assert gpu.level(CUINIT) == logging.ERROR
    everything = StepLogRouter(cpu_only=True, show_all=True)
    assert everything.level(CUINIT) == logging.ERROR and everything.level(NODEDEF) == logging.ERROR


def run_train_step(tmp_path: Path) -> list[dict[str, Any]]:
    """The real train step through the local operator; the task log's events."""
    from include.mlops.config import find_model_config
    from include.mlops.data.snapshot import snapshot

    data = snapshot(find_model_config("diabetes"), DAY - dt.timedelta(days=1), DAY, tmp_path / "snap")["data_uri"]
    with structlog.testing.capture_logs() as events:
        with DAG(dag_id="step_logs", schedule=None):
            task = LifecycleStepOperator(
                task_id="train", step="train", model="diabetes", arguments={"data": data, "overrides": {"epochs": 1}}
            )
        task.execute(
            {"dag_run": SimpleNamespace(run_id="manual__logs"), "ti": SimpleNamespace(map_index=-1, try_number=1)}
        )  # type: ignore[arg-type]
    return events


def rendered(event: dict[str, Any]) -> str:
    args = event.get("positional_args") or ()
    return str(event["event"]) % tuple(args) if args else str(event["event"])


@pytest.mark.slow
def test_train_log_keeps_step_lines_and_drops_cpu_noise(
    tmp_path: Path, artifact_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if has_nvidia_gpu():
        pytest.skip("this machine has an NVIDIA GPU, so the CUDA lines are not noise here")
    monkeypatch.delenv(SHOW_ALL_ENV, raising=False)
    events = run_train_step(tmp_path)
    texts = [rendered(e) for e in events]
    epoch = [
        (e["log_level"], t)
        for e, t in zip(events, texts, strict=True)
        if "include.mlops.training.train: train diabetes: epoch 1/1" in t
    ]
    assert len(epoch) == 1 and epoch[0][0] == "info"
    assert not [t for t in texts if "failed call to cuInit" in t or "use_unbounded_threadpool" in t]
    assert not [t for t in texts if "absl::InitializeLog" in t]


@pytest.mark.slow
def test_show_everything_switch_keeps_runtime_lines_at_their_level(
    tmp_path: Path, artifact_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SHOW_ALL_ENV, "all")
    events = run_train_step(tmp_path)
    levels = {rendered(e): e["log_level"] for e in events}
    cuinit = [level for text, level in levels.items() if "failed call to cuInit" in text]
    nodedef = [level for text, level in levels.items() if "use_unbounded_threadpool" in text]
    assert cuinit and set(cuinit) == {"error"}
    assert nodedef and set(nodedef) == {"error"}
    assert any(
        "include.mlops.training.train: train diabetes: epoch 1/1" in text and level == "info"
        for text, level in levels.items()
    )
