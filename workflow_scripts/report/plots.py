"""Figures for the report, drawn with matplotlib and returned as inline SVG markup."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

plt.rcParams.update(
    {"figure.dpi": 100, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "svg.hashsalt": "umm"}
)


def _svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def curves(series: dict[str, list[tuple[int, float]]], *, title: str, ylabel: str, log: bool = False) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 3.0))
    for label, points in series.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], label=label, linewidth=1.2)
    ax.set(title=title, xlabel="step", ylabel=ylabel)
    if log:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend(fontsize=7)
    return _svg(fig)


def aha(words: list[tuple[int, float]], reward: list[tuple[int, float]]) -> str:
    """Caption length and reward against RL step on one figure (the paper's 'aha moment')."""
    fig, left = plt.subplots(figsize=(6.4, 3.0))
    left.plot([p[0] for p in words], [p[1] for p in words], color="tab:blue", label="caption length (words)")
    left.set(xlabel="RL step (Stage 2a)", ylabel="mean caption words")
    right = left.twinx()
    right.plot([p[0] for p in reward], [p[1] for p in reward], color="tab:red", label="reward")
    right.set_ylabel("mean reward")
    right.grid(False)
    lines = left.get_lines() + right.get_lines()
    left.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="best")
    left.set_title("Caption length and reconstruction reward during Stage 2a")
    return _svg(fig)


def histogram(values: list[int], *, title: str, xlabel: str) -> str:
    fig, ax = plt.subplots(figsize=(6.4, 2.6))
    ax.hist(values, bins=min(30, max(5, len(set(values)))), color="tab:green")
    ax.set(title=title, xlabel=xlabel, ylabel="images")
    return _svg(fig)
