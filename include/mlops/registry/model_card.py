"""The model card stored with each registered version as ``assets.extra/model_card.md``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from include.mlops.config import BUDGET_METRICS, METRICS, ModelConfig
from include.mlops.evaluation.gate import GateDecision, UnscoredChampion
from include.mlops.evaluation.reports import render


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
    """The human-readable card stored as ``assets.extra/model_card.md`` (``templates/model_card.md``).

    ``champion`` is evaluate's record of the champion, whose figures it
    measured on the champion's own served bytes.  A version gated without its
    champion (``accept_without_champion``, in the decision or the lineage)
    says which champion could not be scored and why.
    """
    unscored = (gate_decision.champion_unscored if gate_decision else None) or UnscoredChampion.from_dict(
        lineage.get("champion_unscored")
    )
    champ_metrics = dict(champion.get("metrics") or {}) if champion else {}
    champ_version = champion.get("version") if champion else None
    known = {**METRICS[config.task], **BUDGET_METRICS}
    ordered = [*config.metrics, *[m for m in sorted(metrics) if m not in config.metrics]]
    rows = [
        {
            "metric": metric,
            "candidate": _num(metrics.get(metric)),
            "champion": _num(champ_metrics.get(metric)),
            "change": _change(metrics.get(metric), champ_metrics.get(metric), known.get(metric)),
        }
        for metric in ordered
    ]
    return render(
        "model_card.md",
        config=config,
        version=version,
        lineage=lineage,
        champion=champion,
        champion_label=f"champion (v{champ_version})" if champ_version is not None else "champion",
        rows=rows,
        gate_decision=gate_decision,
        unscored=unscored,
        signature=signature,
        has_tflite=has_tflite,
        unknown=_unknown,
    )


def _unknown(value: Any) -> str:
    return str(value) if value not in (None, "") else "unknown"


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
