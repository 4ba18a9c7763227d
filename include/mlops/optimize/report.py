"""The optimization report: the trials table, the variants table and plots, in one browser-readable file.

The plots are matplotlib SVGs embedded as data URIs, so the file stands alone
in the run folder (and in the registry's evidence) without sibling images.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from include.mlops.config import ModelConfig
from include.mlops.evaluation.reports import render

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _svg(draw: Callable[[Axes], None]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    try:
        draw(ax)
        fig.tight_layout()
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg")
    finally:
        plt.close(fig)
    return base64.b64encode(buffer.getvalue().encode()).decode("ascii")


def plots(summary: Mapping[str, Any], trials: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(title, base64 SVG) for each plot: trial losses, and size, speed and metric change per measured variant."""
    measured = {n: v for n, v in summary["variants"].items() if v.get("size_ratio") is not None}
    names = list(measured)
    colors = ["#1a7f37" if measured[n]["kept"] else "#cf222e" for n in names]
    figures: list[tuple[str, str]] = []
    if trials and trials.get("trials"):
        done = [t for t in trials["trials"] if t.get("val_loss") is not None]

        def trial_losses(ax: Axes) -> None:
            ax.bar([str(t["trial"]) for t in done], [t["val_loss"] for t in done], color="#0969da")
            ax.set_xlabel("trial")
            ax.set_ylabel("validation loss")

        figures.append(("Validation loss per successful trial (lower is better)", _svg(trial_losses)))
    if not names:
        return figures

    def sizes(ax: Axes) -> None:
        ax.bar(names, [measured[n]["size_ratio"] for n in names], color=colors)
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_ylabel("size / float32 TFLite")

    def speedups(ax: Axes) -> None:
        positions = range(len(names))
        ax.bar([p - 0.2 for p in positions], [measured[n]["speedup_1"] for n in names], width=0.4, label="1 row")
        ax.bar([p + 0.2 for p in positions], [measured[n]["speedup_32"] for n in names], width=0.4, label="32 rows")
        ax.set_xticks(list(positions), names)
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_ylabel("speedup vs float SavedModel")
        ax.legend()

    def deltas(ax: Axes) -> None:
        ax.bar(names, [measured[n]["metric_delta"] for n in names], color=colors)
        ax.axhline(0.0, color="grey", linewidth=1)
        ax.set_ylabel(f"{summary['primary_metric']} - float")

    figures += [
        ("Size against the float32 TFLite conversion (green: kept, red: not kept)", _svg(sizes)),
        ("CPU speedup against the float SavedModel", _svg(speedups)),
        (f"Change of {summary['primary_metric']} against the float model (validation rows)", _svg(deltas)),
    ]
    return figures


def write_report(
    config: ModelConfig, summary: Mapping[str, Any], trials: Mapping[str, Any] | None, path: str | Path
) -> Path:
    """Render ``templates/optimization_report.html`` to ``path``."""
    trial_metrics = sorted({m for t in (trials or {}).get("trials", []) for m in (t.get("val_metrics") or {})})
    html = render(
        "optimization_report.html",
        config=config,
        summary=summary,
        trials=trials,
        trial_metrics=trial_metrics,
        plots=plots(summary, trials),
    )
    path = Path(path)
    path.write_text(html, encoding="utf-8")
    return path
