"""The model card stored with each registered version as ``assets.extra/model_card.md``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from include.mlops.config import BUDGET_METRICS, METRICS, ModelConfig
from include.mlops.gate import GateDecision


def model_card(
    config: ModelConfig,
    version: int,
    *,
    metrics: Mapping[str, float],
    champion: Mapping[str, Any] | None,
    lineage: Mapping[str, Any],
    gate_decision: GateDecision | None,
    signature: Mapping[str, Any] | None = None,
    has_tflite: bool = False,
) -> str:
    """The human-readable card stored as ``assets.extra/model_card.md``."""
    champ_metrics = dict(champion.get("metrics") or {}) if champion else {}
    champ_version = champion.get("version") if champion else None
    champ_label = f"champion (v{champ_version})" if champ_version is not None else "champion"
    known = {**METRICS[config.task], **BUDGET_METRICS}

    def unknown(value: Any) -> str:
        return str(value) if value not in (None, "") else "unknown"

    lines = [
        f"# Model card: {config.serving_name} version {version}",
        "",
        "## Model",
        "",
        f"- **Name**: {config.name} (served as `{config.serving_name}`), version {version}",
        f"- **Task**: {config.task}" + (f", {config.num_classes} classes" if config.num_classes else ""),
        f"- **Builder**: `include/models/{config.builder}.py`; owner: {config.owner}",
        f"- **Registered for**: {unknown(lineage.get('created_at'))}",
        "- **Format**: TF SavedModel" + (" plus `model.tflite` (quantized)" if has_tflite else ""),
    ]
    if signature:
        lines.append(
            f"- **Serving signature**: `serving_default`, input `inputs` float32 {signature['input_shape']} "
            f"(raw feature values in config order), output `outputs` float32 {signature['output_shape']}"
        )
    lines += [
        "",
        "## Intended use",
        "",
        config.description or "No description in the model config.",
        "",
        f"Inputs are the {len(config.features)} features `{', '.join(config.features[:12])}"
        + (", ..." if len(config.features) > 12 else "")
        + f"`; the label is `{config.label}`. Use it only on data that passes the validation suite of this "
        "model; it was evaluated on a held-out split of the same source and has no guarantees outside it.",
        "",
        "## Data",
        "",
        f"- **Source**: {config.source.kind}"
        + (f" dataset `{config.source.dataset}`" if config.source.dataset else f" `{config.source.uri}`"),
        f"- **Data interval**: {unknown(lineage.get('data_interval_start'))} to {unknown(lineage.get('data_interval_end'))}",
        f"- **Snapshot**: `{unknown(lineage.get('data_uri'))}`, sha256 `{unknown(lineage.get('data_sha256'))}`",
        f"- **Test fraction**: {config.test_fraction}",
        "",
        "## Metrics (test split)",
        "",
        f"| metric | candidate | {champ_label} | change |",
        "|---|---|---|---|",
    ]
    ordered = [*config.metrics, *[m for m in sorted(metrics) if m not in config.metrics]]
    for metric in ordered:
        value = metrics.get(metric)
        champ = champ_metrics.get(metric)
        lines.append(f"| {metric} | {_num(value)} | {_num(champ)} | {_change(value, champ, known.get(metric))} |")
    if not champion:
        lines += ["", "No champion: this is the first version of this model that was compared."]
    lines += ["", "## Gate", ""]
    if gate_decision is None:
        lines.append("No gate decision was recorded for this version.")
    else:
        if gate_decision.override:
            lines += [
                "> **Override**: this version FAILED the gate and was registered because the run forced it.",
                "",
            ]
        lines.append(gate_decision.to_markdown().rstrip())
    lines += [
        "",
        "## Lineage",
        "",
        f"- **DAG**: `{lineage.get('dag_id')}`, run `{lineage.get('run_id')}`",
        f"- **Code version**: `{unknown(lineage.get('code_version'))}`",
        f"- **Candidate**: `{lineage.get('model_uri')}`; evaluation `{lineage.get('evaluation_uri')}`",
        "",
    ]
    return "\n".join(lines)


def _num(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _change(value: Any, champion: Any, higher_is_better: bool | None) -> str:
    if not isinstance(value, (int, float)) or not isinstance(champion, (int, float)):
        return "-"
    if not (math.isfinite(value) and math.isfinite(champion)) or champion == 0:
        return f"{value - champion:+.4g}" if math.isfinite(value - champion) else "-"
    relative = (value - champion) / abs(champion)
    if higher_is_better is None or relative == 0:
        return f"{relative:+.2%}"
    better = (relative > 0) == higher_is_better
    return f"{relative:+.2%} ({'better' if better else 'worse'})"
