"""``mlops_served_version{model_name,label}``: the version each label resolves to, kept current on every reload."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from include.mlops.registry.filesystem import Registry
from include.mlops.serving.metrics import SERVED_VERSION
from tests.serving.conftest import MODEL, RunningServer, corrupt_weights, wait_for


def served_versions(client: httpx.Client) -> dict[tuple[str, str], float]:
    text = client.get("/monitoring/prometheus/metrics").text
    return {
        (sample.labels["model_name"], sample.labels["label"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == SERVED_VERSION
        for sample in family.samples
    }


def test_served_version_follows_label_moves_and_removals(running: RunningServer, registry: Registry) -> None:
    with running.client() as client:
        assert served_versions(client) == {(MODEL, "stable"): 1.0}

        registry.set_label(MODEL, "canary", 3)
        assert wait_for(lambda: served_versions(client) == {(MODEL, "stable"): 1.0, (MODEL, "canary"): 3.0}), (
            served_versions(client)
        )

        registry.set_label(MODEL, "stable", 3)
        registry.remove_label(MODEL, "canary")
        # A removed label drops its series rather than reporting the version it pointed at before.
        assert wait_for(lambda: served_versions(client) == {(MODEL, "stable"): 3.0}), served_versions(client)


def test_a_label_on_a_version_that_does_not_load_is_not_reported_as_served(
    running: RunningServer, registry: Registry
) -> None:
    corrupt_weights(registry.version_dir(MODEL, 2))
    registry.set_label(MODEL, "canary", 2)
    with running.client() as client:

        def version_2_refused() -> bool:
            response = client.get(f"/v1/models/{MODEL}/versions/2")
            return response.status_code == 200 and response.json()["model_version_status"][0]["state"] == "END"

        # Once version 2 is reported as failed, the reload that read the canary label has happened.
        assert wait_for(version_2_refused, timeout=30)
        assert served_versions(client) == {(MODEL, "stable"): 1.0}
