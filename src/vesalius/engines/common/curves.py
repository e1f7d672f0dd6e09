"""Figures as PNG: matplotlib without a display, saved one way; and training curves (loss per epoch and the
validation metric, for a glance at convergence)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (no display on a server), imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path | str, dpi: int = 120) -> Path:
    """Lay out, write ``path`` (parent folders created) and close ``figure``; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(target, dpi=dpi)
    pyplot().close(figure)
    return target


def plot_curves(
    path: Path | str,
    losses: Sequence[float],
    validation: Mapping[str, Sequence[float | None]],
    title: str = "",
) -> Path:
    """Loss on the left axis, validation metrics (one line each) on the right; writes ``path``."""
    plt = pyplot()
    figure, loss_axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    epochs = list(range(1, len(losses) + 1))
    loss_axis.plot(epochs, losses, color="tab:blue", label="training loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss", color="tab:blue")
    metric_axis = loss_axis.twinx()
    colours = ["tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for index, (name, values) in enumerate(validation.items()):
        points = [(e, v) for e, v in zip(epochs, values, strict=False) if v is not None]
        if points:
            metric_axis.plot(*zip(*points, strict=True), marker=".", label=name, color=colours[index % len(colours)])
    metric_axis.set_ylabel("validation")
    metric_axis.set_ylim(0.0, 1.0)
    handles = loss_axis.get_legend_handles_labels()[0] + metric_axis.get_legend_handles_labels()[0]
    labels = loss_axis.get_legend_handles_labels()[1] + metric_axis.get_legend_handles_labels()[1]
    loss_axis.legend(handles, labels, loc="center right")
    loss_axis.set_title(title)
    return save_figure(figure, path, dpi=100)
