"""The report's figures (matplotlib, written as PNG bytes so the HTML can embed them)."""

from __future__ import annotations

import functools
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sweep.training.checks import STRONGEST  # noqa: E402

# Labels carry store text (run names, studies, variants): drawn as written, never parsed as mathtext
# ("$\\frac{" in a run name stopped the whole report).
STYLE = {"text.parse_math": False}


def drawn(plot):
    """`plot` drawn under STYLE (matplotlib reads it as each text is made)."""
    @functools.wraps(plot)
    def inside_style(*args, **kwargs):
        with plt.rc_context(STYLE):
            return plot(*args, **kwargs)
    return inside_style


BASELINE_STYLES = {STRONGEST: "-", "zero_shot": ":"}  # drawn as lines; every variant forms the band


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _baselines(ax, baselines: dict[str, float]) -> None:
    """The spread of all baseline variants as a band; the strongest and zero-shot ones as lines."""
    if len(baselines) > 1:
        values = list(baselines.values())
        ax.axhspan(min(values), max(values), color="gray", alpha=0.15, label=f"{len(values)} baseline variants")
    for name, value in baselines.items():
        style = BASELINE_STYLES.get(name.split("=")[0].split("-")[0])
        if style or len(baselines) == 1:
            ax.axhline(value, color="black" if style == "-" else "gray", linestyle=style or "--", label=name)


@drawn
def metric_vs(points: dict[str, list[tuple[float, float]]], baselines: dict[str, float], x_label: str,
              metric: str, log_x: bool = False, lines: bool = True) -> bytes:
    """`metric` against x, one series per key of `points` ({label: [(x, y), ...]}), baselines as a
    band and lines."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, xy in sorted(points.items()):
        xy = sorted(xy)
        ax.plot([p[0] for p in xy], [p[1] for p in xy], "o-" if lines else "o", label=label)
    _baselines(ax, baselines)
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


@drawn
def loss_curves(curves: dict[str, list[tuple[int, float]]]) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, steps in sorted(curves.items()):
        ax.plot([s for s, _ in steps], [v for _, v in steps], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)


@drawn
def optimization_history(values: list[tuple[int, float]], objective: str, maximize: bool) -> bytes:
    """Each finished trial's objective, and the best so far."""
    values = sorted(values)
    best, running = [], None
    for _, v in values:
        running = v if running is None else (max(running, v) if maximize else min(running, v))
        best.append(running)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot([n for n, _ in values], [v for _, v in values], "o", label="trial")
    ax.plot([n for n, _ in values], best, "-", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(objective)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


@drawn
def pareto_front(points: list[tuple[float, float]], front: list[tuple[float, float]], names: list[str]) -> bytes:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot([p[0] for p in points], [p[1] for p in points], "o", color="C0", alpha=0.5, label="trial")
    front = sorted(front)
    ax.plot([p[0] for p in front], [p[1] for p in front], "o-", color="C3", label="Pareto front")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


@drawn
def utilisation(panels: dict[str, dict[str, list[tuple[float, float]]]]) -> bytes:
    """One panel per machine quantity ({y label: {run: [(seconds since start, value), ...]}}), one
    line per run: was a trial busy, idle, or waiting for its input?"""
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), sharex=True, squeeze=False)
    for ax, (label, series) in zip(axes[:, 0], panels.items()):
        for run, points in sorted(series.items()):
            ax.plot([t for t, _ in points], [v for _, v in points], ".-", label=run)
        ax.set_ylabel(label, fontsize=8)
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel("seconds since the run started")
    return _png(fig)


@drawn
def crossover(sizes: list[int], adapter, baseline, n_star: float, interval: tuple[float, float], metric: str) -> bytes:
    """Both arms' curves (rows mean, low, high) against labelled examples (log), n* and its interval."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, curve, color in (("adapter", adapter, "C0"), ("strongest baseline", baseline, "black")):
        ax.plot(sizes, curve[0], "o-", color=color, label=label)
        ax.fill_between(sizes, curve[1], curve[2], color=color, alpha=0.15)
    low, high = (min(max(v, sizes[0]), sizes[-1]) for v in interval)  # (a censored bound drawn at the edge)
    ax.axvspan(low, high, color="C3", alpha=0.1, label="n* interval")
    if sizes[0] < n_star < float("inf"):
        ax.axvline(n_star, color="C3", linestyle="--", label=f"n* = {n_star:,.0f}")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("labelled examples (log)")
    ax.set_ylabel(f"test {metric}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


@drawn
def cost_fronts(panels: dict[str, list[tuple[float, float, str, bool]]], metric: str) -> bytes:
    """One panel per query volume ({title: [(total FLOPs, score, method, on the front), ...]}): every
    run, the front of those no other run beats on both cost and score."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, (title, points) in zip(axes[0], panels.items()):
        for i, method in enumerate(sorted({p[2] for p in points})):
            mine = [p for p in points if p[2] == method]
            ax.plot([p[0] for p in mine], [p[1] for p in mine], "o", color=f"C{i}", alpha=0.7, label=method)
        front = sorted((p[0], p[1]) for p in points if p[3])
        ax.plot([p[0] for p in front], [p[1] for p in front], "-", color="C3", label="front")
        ax.set_xscale("log")
        ax.set_xlabel("FLOPs: training + queries (log)")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0, 0].set_ylabel(f"test {metric}")
    axes[0, 0].legend(fontsize=7)
    return _png(fig)


@drawn
def importance(rows: list[tuple[str, float, float, float]], score: str, level: float) -> bytes:
    """A forest plot of each setting's and pair's share of the variance beyond its shadow's (rows: name,
    estimate, interval low, high): an interval clear of zero is an effect the runs tell from noise."""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    for y, (_, estimate, low, high) in enumerate(reversed(rows)):
        color = "C0" if low > 0 else "grey"
        ax.plot([low, high], [y, y], "-", color=color, linewidth=2)
        ax.plot([estimate], [y], "o", color=color)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)], fontsize=8)
    ax.set_xlabel("share of the variance beyond its shadow's")
    ax.set_title(f"{score}: {level:.0%} bootstrap intervals", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    return _png(fig)
