"""evaluate's ``plot.png``: predicted vs actual for regression, a confusion matrix for classification."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from include.mlops.config import ModelConfig
    from include.mlops.training.modeling import Dataset


def evaluation_plot(
    config: ModelConfig, test: Dataset, outputs: np.ndarray, path: Path, champion_outputs: np.ndarray | None = None
) -> None:
    """``plot.png``: predicted against actual (regression, the champion in grey) or the confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    try:
        if config.task == "regression":
            if champion_outputs is not None:
                ax.scatter(test.labels, champion_outputs[:, 0], s=12, alpha=0.4, color="grey", label="champion")
            ax.scatter(test.labels, outputs[:, 0], s=14, alpha=0.8, label="candidate")
            low = float(min(test.labels.min(), outputs.min()))
            high = float(max(test.labels.max(), outputs.max()))
            ax.plot([low, high], [low, high], "k--", linewidth=1, label="perfect")
            ax.set_xlabel(f"actual {config.label}")
            ax.set_ylabel(f"predicted {config.label}")
            ax.set_title(f"{config.name}: predicted vs actual ({len(test)} test rows)")
            ax.legend(loc="upper left")
        else:
            classes = config.num_classes or outputs.shape[1]
            matrix = np.zeros((classes, classes), dtype=int)
            np.add.at(matrix, (test.labels, outputs.argmax(axis=1)), 1)
            ax.imshow(matrix, cmap="Blues")
            for i in range(classes):
                for j in range(classes):
                    if matrix[i, j]:
                        color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
                        ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8, color=color)
            ax.set_xticks(range(classes))
            ax.set_yticks(range(classes))
            ax.set_xlabel("predicted class")
            ax.set_ylabel("actual class")
            ax.set_title(f"{config.name}: confusion matrix ({len(test)} test rows)")
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
