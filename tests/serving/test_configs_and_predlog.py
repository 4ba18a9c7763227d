"""Production parity of the config files (parsed with TF Serving's protos) and the prediction log's bounds."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from tensorflow_serving.config import model_server_config_pb2

from include.mlops.config import PROJECT_ROOT
from include.mlops.registry.filesystem import Registry
from include.mlops.serving.predlog import PredictionLogger, log_files, read_prediction_log
from tests.serving.conftest import MODEL

MONITORING = PROJECT_ROOT / "include" / "monitoring"


def monitoring_config_class() -> type:
    """TF Serving's MonitoringConfig (tensorflow_serving/config/monitoring_config.proto).

    The tensorflow-serving-api wheel does not ship monitoring_config_pb2, so
    the two messages are declared here field for field (same package, names,
    numbers and types as upstream) in a private descriptor pool.
    """
    file = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    prometheus = file.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=8, label=1)  # bool
    prometheus.field.add(name="path", number=2, type=9, label=1)  # string
    monitoring = file.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config", number=1, type=11, label=1, type_name=".tensorflow.serving.PrometheusConfig"
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


def test_monitoring_config_parses_and_matches_the_server_path() -> None:
    from include.mlops.serving.app import METRICS_PATH

    config = text_format.Parse((MONITORING / "monitoring.config").read_text(), monitoring_config_class()())
    assert config.prometheus_config.enable is True
    assert config.prometheus_config.path == METRICS_PATH


def test_models_config_example_and_registry_output_parse_with_tf_serving_protos(tmp_path: Path, saved_models) -> None:  # type: ignore[no-untyped-def]
    example = text_format.Parse((MONITORING / "models.config").read_text(), model_server_config_pb2.ModelServerConfig())
    entries = {entry.name: entry for entry in example.model_config_list.config}
    assert set(entries) == {"diabetes", "digits"}
    for entry in entries.values():
        assert entry.base_path == f"/models/{entry.name}" and entry.model_platform == "tensorflow"
        # TF Serving only labels loaded versions: every label must name a version of the policy.
        assert set(entry.version_labels.values()) <= set(entry.model_version_policy.specific.versions)

    registry = Registry(tmp_path / "models")
    registry.register(MODEL, saved_models[1.0], metrics={}, lineage={"dag_id": "d", "run_id": "r"})
    registry.set_label(MODEL, "stable", 1)
    written = text_format.Parse(registry.config_path.read_text(), model_server_config_pb2.ModelServerConfig())
    (entry,) = written.model_config_list.config
    assert dict(entry.version_labels) == {"stable": 1}
    assert list(entry.model_version_policy.specific.versions) == [1]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
def test_prometheus_scrape_config_is_valid() -> None:
    check = subprocess.run(
        ["promtool", "check", "config", str(MONITORING / "prometheus.yml")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "/monitoring/prometheus/metrics" in (MONITORING / "prometheus.yml").read_text()


# --------------------------------------------------------------------------- prediction log


def rows(n: int, value: float) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, 3), value, dtype="float32"), np.full((n, 1), value * 2, dtype="float32")


def test_offer_never_blocks_and_drops_when_the_queue_is_full(tmp_path: Path) -> None:
    logger = PredictionLogger(tmp_path, sample_rate=1.0, queue_size=2)  # writer not started: nothing drains
    start = time.perf_counter()
    outcomes = [logger.offer(MODEL, 1, *rows(2, 1.0)) for _ in range(50)]
    assert time.perf_counter() - start < 1.0
    assert outcomes[:2] == [True, True] and not any(outcomes[2:])
    assert logger.dropped == 48


def test_sampling_rate_is_honoured(tmp_path: Path) -> None:
    logger = PredictionLogger(tmp_path, sample_rate=0.25, queue_size=10_000, seed=7)
    queued = sum(logger.offer(MODEL, 1, *rows(1, 1.0)) for _ in range(2000))
    assert 400 < queued < 600
    assert not any(PredictionLogger(tmp_path, sample_rate=0.0).offer(MODEL, 1, *rows(1, 1.0)) for _ in range(50))


def test_log_files_are_bounded_and_rotated(tmp_path: Path) -> None:
    logger = PredictionLogger(tmp_path, sample_rate=1.0, max_rows_per_file=4, max_files=3, max_rows_per_request=3)
    logger.start()
    try:
        for i in range(20):
            assert logger.offer(MODEL, 2, *rows(5, float(i)), label="stable")  # 5 rows, capped at 3 per request
        assert logger.flush()
    finally:
        logger.stop()
    files = log_files(tmp_path, MODEL)
    assert len(files) == 3  # older files were rotated out
    frame = read_prediction_log(tmp_path, MODEL)
    assert 0 < len(frame) <= 3 * 6  # each file holds at most max_rows_per_file + one request
    # The newest rows survive rotation.
    assert float(frame["inputs"].iloc[-1][0]) == 19.0 and list(frame["outputs"].iloc[-1]) == [38.0]
    assert set(frame["model_version"]) == {2} and set(frame["version_label"]) == {"stable"}
    assert logger.written_rows == 60
    assert not list((tmp_path / "predictions" / MODEL).glob(".*"))  # no temporary files left behind


def test_a_failing_write_drops_rows_without_raising(tmp_path: Path) -> None:
    blocker = tmp_path / "predictions"
    blocker.mkdir()
    (blocker / MODEL).write_text("a file where the model's folder should be")
    logger = PredictionLogger(tmp_path, sample_rate=1.0)
    logger.start()
    try:
        assert logger.offer(MODEL, 1, *rows(2, 1.0))
        assert logger.flush()
    finally:
        logger.stop()
    assert logger.written_rows == 0 and logger.dropped == 1


def test_prediction_log_rate_and_flush_default_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from include.mlops.serving.__main__ import build_parser

    assert build_parser().parse_args([]).predlog_sample_rate == 0.1
    monkeypatch.setenv("MLOPS_PREDLOG_SAMPLE_RATE", "1")
    monkeypatch.setenv("MLOPS_PREDLOG_FLUSH_SECONDS", "2")
    args = build_parser().parse_args([])
    assert (args.predlog_sample_rate, args.predlog_flush_seconds) == (1.0, 2.0)
    assert build_parser().parse_args(["--predlog-sample-rate", "0.5"]).predlog_sample_rate == 0.5
