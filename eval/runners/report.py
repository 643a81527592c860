"""Writing runner outputs: strict JSON (NaN/inf become null), Markdown tables and matplotlib bar plots."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def to_jsonable(value: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays become Python numbers/lists, non-finite floats become None."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data: Any) -> Path:
    """Write strict JSON (allow_nan=False) with a trailing newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(data), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return path


def fmt(value: Any, digits: int = 4, percent: bool = False) -> str:
    """A table cell: numbers rounded (or as a percentage), None/NaN as an en dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return f"{100 * value:.2f}%" if percent else f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(fmt(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pyplot():
    import matplotlib  # lazy: loaded only when a plot is drawn, with its backend chosen before pyplot

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # lazy: see above

    return plt


def panel_bar_plot(
    path: Path,
    panels: Mapping[str, Mapping[str, float | None]],
    title: str = "",
) -> Path:
    """One panel per metric, one bar per series (model) in each: the layout of the paper's Figure 1.

    panels: metric label -> {series name -> value (None/NaN: no bar)}. Series keep their order and
    colour across panels; values are written above the bars.
    """
    plt = _pyplot()
    series = list(dict.fromkeys(name for values in panels.values() for name in values))
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels) + 0.6, 3.2), squeeze=False)
    for ax, (label, values) in zip(axes[0], panels.items()):
        for i, name in enumerate(series):
            v = values.get(name)
            if v is None or not math.isfinite(v):
                continue
            ax.bar(i, v, color=colours(i % 10), label=name)
            ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.set_xticks(range(len(series)))
        ax.set_xticklabels(series, rotation=30, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.15)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def grouped_bar_plot(
    path: Path,
    groups: Mapping[str, Mapping[str, float | None]],
    ylabel: str,
    title: str = "",
    percent: bool = False,
) -> Path:
    """Groups along x (e.g. splits), one bar per series inside a group (e.g. language)."""
    plt = _pyplot()
    series = list(dict.fromkeys(name for values in groups.values() for name in values))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(groups) + 2), 3.2))
    colours = plt.get_cmap("tab10")
    scale = 100.0 if percent else 1.0
    for j, name in enumerate(series):
        xs, ys = [], []
        for i, values in enumerate(groups.values()):
            v = values.get(name)
            if v is not None and math.isfinite(v):
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(v * scale)
        bars = ax.bar(xs, ys, width=width, color=colours(j % 10), label=name)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(list(groups), fontsize=8)
    ax.set_ylabel(ylabel + (" (%)" if percent else ""), fontsize=8)
    ax.margins(y=0.15)
    if len(series) > 1:
        ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
