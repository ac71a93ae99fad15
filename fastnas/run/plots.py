"""The report's plots (PNG): search progress, loss against sigma, the found cell as a graph.

matplotlib's Agg canvas is used directly (no pyplot, no global backend change), imported inside the
functions so that importing fastnas never imports matplotlib. Cells are drawn with plain matplotlib
patches (no graphviz).
"""

from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["plot_search_progress", "plot_loss_vs_sigma", "plot_cell", "sigma_losses", "plot_tau_vs_seconds",
           "plot_tau_bars"]

# One colour per op family, so the same op looks the same in every cell drawing.
_OP_COLOURS = {"conv": "#1f77b4", "sep": "#1f77b4", "dil": "#9467bd", "pool": "#2ca02c", "skip": "#7f7f7f",
               "none": "#d62728"}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _finite(values: Sequence[float]) -> List[float]:
    return [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def plot_search_progress(records: Sequence[Mapping[str, Any]], path: "os.PathLike[str] | str",
                         title: str = "") -> None:
    """Best and mean score per generation and the best so far (one generation: running best per candidate).

    ``records`` are history rows with ``generation`` and ``score``.
    """
    fig = _figure(5.5, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    gens = sorted({int(r["generation"]) for r in records})
    if len(gens) > 1:
        best, mean, so_far, running = [], [], [], -math.inf
        for g in gens:
            scores = _finite([float(r["score"]) for r in records if int(r["generation"]) == g])
            best.append(max(scores) if scores else math.nan)
            mean.append(sum(scores) / len(scores) if scores else math.nan)
            running = max([running] + scores)
            so_far.append(running if math.isfinite(running) else math.nan)
        ax.plot(gens, best, "o-", label="best of generation")
        ax.plot(gens, mean, "s--", label="mean of generation")
        ax.plot(gens, so_far, "k:", label="best so far")
        ax.set_xlabel("generation")
        ax.set_xticks(gens)
    else:
        running, xs, ys, allx, ally = -math.inf, [], [], [], []
        for i, r in enumerate(records):
            s = float(r["score"])
            if math.isfinite(s):
                allx.append(i)
                ally.append(s)
                running = max(running, s)
            if math.isfinite(running):
                xs.append(i)
                ys.append(running)
        ax.scatter(allx, ally, s=6, alpha=0.5, label="candidate")
        ax.plot(xs, ys, "k-", label="best so far")
        ax.set_xlabel("candidate")
    ax.set_ylabel("score")
    ax.set_title(title or "search progress", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")


def sigma_losses(parts: Mapping[str, Any], sigmas: Sequence[float]) -> Optional[List[float]]:
    """The per-level losses a flatness score recorded in its parts, or None when there are none.

    Reads ``loss@<sigma>`` entries (fastnas.metrics), else a list under ``losses``, else ``loss_0``, ...
    """
    keys = [f"loss@{s:g}" for s in sigmas]
    if all(k in parts for k in keys):
        try:
            return [float(parts[k]) for k in keys]
        except (TypeError, ValueError):
            return None
    n_levels = len(sigmas)
    for key in ("losses", "flatness_losses", "sigma_losses", "loss"):
        v = parts.get(key)
        if isinstance(v, (list, tuple)) and len(v) == n_levels:
            try:
                return [float(x) for x in v]
            except (TypeError, ValueError):
                return None
    for pattern in ("loss_{}", "loss[{}]", "losses[{}]", "L{}", "loss{}"):
        for base in (0, 1):
            keys = [pattern.format(i + base) for i in range(n_levels)]
            if all(k in parts for k in keys):
                try:
                    return [float(parts[k]) for k in keys]
                except (TypeError, ValueError):
                    return None
    return None


def plot_loss_vs_sigma(rows: Sequence[Tuple[str, List[float]]], sigmas: Sequence[float],
                       path: "os.PathLike[str] | str", title: str = "") -> None:
    """Validation loss against perturbation level for a few candidates (``rows``: label, losses)."""
    fig = _figure(6.0, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    for label, losses in rows:
        ax.plot(list(sigmas), losses, "o-", label=label if len(label) <= 48 else label[:45] + "...")
    ax.set_xscale("log")
    ax.set_xlabel("sigma (perturbation std)")
    ax.set_ylabel("validation loss")
    ax.set_title(title or "loss against sigma (flatter and lower is better)", fontsize=9)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")


def _op_colour(op: str) -> str:
    for key, colour in _OP_COLOURS.items():
        if key in op:
            return colour
    return "#ff7f0e"


def _draw_dag(ax: Any, nodes: Dict[Any, Tuple[str, Tuple[float, float]]],
              edges: Sequence[Tuple[Any, Any, str]], title: str) -> None:
    """Nodes as labelled circles, edges as curved arrows labelled with their op."""
    from matplotlib.patches import Circle, FancyArrowPatch

    radius = 0.22
    for key, (label, (x, y)) in nodes.items():
        ax.add_patch(Circle((x, y), radius, facecolor="#f2f2f2", edgecolor="black", zorder=3))
        ax.text(x, y, label, ha="center", va="center", fontsize=8, zorder=4)
    # Edges between the same pair of columns bend by how far they jump, so they do not overlap.
    for src, dst, op in edges:
        (x0, y0), (x1, y1) = nodes[src][1], nodes[dst][1]
        span = abs(x1 - x0) + abs(y1 - y0)
        rad = 0.0 if span <= 1.01 else 0.25 + 0.05 * span
        colour = _op_colour(op) if op else "#b0b0b0"
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), connectionstyle=f"arc3,rad={rad}",
                                     arrowstyle="-|>", mutation_scale=10, color=colour, lw=1.4,
                                     shrinkA=11, shrinkB=11, zorder=2))
        if not op:
            continue
        # label at the arc's midpoint: the chord midpoint moved along the normal by rad * chord / 2
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        dx, dy = x1 - x0, y1 - y0
        mx, my = mx + rad * dy / 2, my - rad * dx / 2
        ax.text(mx, my, op, ha="center", va="center", fontsize=6, color=colour, zorder=5,
                bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.85))
    xs = [p[0] for _, p in nodes.values()]
    ys = [p[1] for _, p in nodes.values()]
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    ax.set_ylim(min(ys) - 1.3, max(ys) + 1.3)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=8)


def _layout(graph: Any) -> Dict[Any, Tuple[str, Tuple[float, float]]]:
    """Positions of a cell graph: its inputs in the first column, then one column per node in order.

    With one input every node sits on one line; with several, the inputs are stacked and the inner nodes
    alternate above and below the line of the output (the last node).
    """
    nodes, n_in = list(graph.nodes), int(getattr(graph, "inputs", 1))
    out: Dict[Any, Tuple[str, Tuple[float, float]]] = {}
    for k, label in enumerate(nodes[:n_in]):
        y = 0.0 if n_in == 1 else 0.9 - 1.8 * k / (n_in - 1)
        out[label] = (label, (0.0, y))
    rest = nodes[n_in:]
    for k, label in enumerate(rest):
        y = 0.0 if n_in == 1 or k == len(rest) - 1 else (0.9 if k % 2 == 0 else -0.9)
        out[label] = (label, (1.6 * (k + 1), y))
    return out


def plot_cell(space: Any, arch: Any, path: "os.PathLike[str] | str", title: str = "") -> None:
    """The found cell(s) as graphs (``space.cell_graph(arch)``, one row per cell kind), or the text form
    when the space draws no graph."""
    graphs = list(space.cell_graph(arch)) if hasattr(space, "cell_graph") else []
    if len(graphs) == 1:
        fig = _figure(7.0, 2.6)
        g = graphs[0]
        _draw_dag(fig.add_subplot(1, 1, 1), _layout(g), g.edges, title or g.title)
    elif graphs:
        fig = _figure(8.0, 2.8 * len(graphs))
        for row, g in enumerate(graphs):
            _draw_dag(fig.add_subplot(len(graphs), 1, row + 1), _layout(g), g.edges, g.title)
        if title:
            fig.suptitle(title, fontsize=8)
    else:
        fig = _figure(6.0, 1.5)
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, space.format(arch), ha="center", va="center", fontsize=7, wrap=True)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")


# ---- the ranking benchmark (fastnas.run.ranking)

_GROUP_COLOURS = {"parts": "#1f77b4", "alpha": "#ff7f0e", "sigmas": "#2ca02c", "noise": "#9467bd",
                  "gamma": "#8c564b", "baselines": "#7f7f7f", "default": "#d62728"}


def plot_tau_vs_seconds(points: Sequence[Tuple[str, str, Optional[float], Optional[float]]],
                        path: "os.PathLike[str] | str", *, ceiling: Optional[float] = None,
                        default: Optional[str] = None, title: str = "") -> None:
    """Kendall tau of each score against its seconds per candidate (log scale): "tau per CPU minute".

    ``points``: ``(name, group, tau, seconds)``; scores without a tau or a positive time are left out. The
    noise ceiling, when given, is a dashed line; the default metric is ringed.
    """
    fig = _figure(7.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    shown = [(n, g, t, s) for n, g, t, s in points if t is not None and s is not None and s > 0]
    for group in dict.fromkeys(g for _, g, _, _ in shown):
        xs = [s for _, g, _, s in shown if g == group]
        ys = [t for _, g, t, _ in shown if g == group]
        ax.scatter(xs, ys, s=18, color=_GROUP_COLOURS.get(group, "#17becf"), label=group or "other", zorder=3)
    clusters: Dict[Tuple[float, float], List[str]] = {}  # points that would print on top of each other
    for name, _, tau, sec in shown:
        clusters.setdefault((round(4 * math.log10(sec)), round(20 * tau)), []).append(name)
        if name == default:
            ax.scatter([sec], [tau], s=90, facecolors="none", edgecolors="black", zorder=4)
    for names in clusters.values():
        first = next(p for p in shown if p[0] == names[0])
        label = names[0] + (f" (+{len(names) - 1} more)" if len(names) > 1 else "")
        ax.annotate(label, (first[3], first[2]), fontsize=5, xytext=(3, 2), textcoords="offset points")
    if ceiling is not None:
        ax.axhline(ceiling, color="black", ls="--", lw=1, label=f"noise ceiling {ceiling:.2f}")
    if shown:
        ax.set_xscale("log")
    ax.axhline(0.0, color="#b0b0b0", lw=0.8)
    ax.set_xlabel("seconds per candidate (log)")
    ax.set_ylabel("Kendall tau against test accuracy")
    ax.set_title(title or "rank correlation against scoring cost", fontsize=9)
    ax.grid(True, alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")


def plot_tau_bars(points: Sequence[Tuple[str, str, Optional[float], Optional[float]]],
                  path: "os.PathLike[str] | str", *, ceiling: Optional[float] = None,
                  default: Optional[str] = None, title: str = "") -> None:
    """A horizontal bar of Kendall tau per score (in the given order, coloured by group); the noise ceiling,
    when given, as a dashed line, the default metric's bar outlined."""
    rows = [(n, g, t) for n, g, t, _ in points]
    fig = _figure(6.5, max(2.5, 0.18 * len(rows) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    ys = list(range(len(rows)))[::-1]
    taus = [t if t is not None else 0.0 for _, _, t in rows]
    bars = ax.barh(ys, taus, color=[_GROUP_COLOURS.get(g, "#17becf") for _, g, _ in rows], height=0.7)
    for bar, (name, _, tau) in zip(bars, rows):
        if name == default:
            bar.set_edgecolor("black")
            bar.set_linewidth(1.5)
        if tau is None:
            ax.text(0.0, bar.get_y() + bar.get_height() / 2, " n/a", va="center", fontsize=5)
    ax.set_yticks(ys)
    ax.set_yticklabels([n for n, _, _ in rows], fontsize=5)
    if ceiling is not None:
        ax.axvline(ceiling, color="black", ls="--", lw=1, label=f"noise ceiling {ceiling:.2f}")
        ax.legend(fontsize=6, loc="lower right")
    ax.axvline(0.0, color="#b0b0b0", lw=0.8)
    ax.set_xlabel("Kendall tau against test accuracy")
    ax.set_title(title or "rank correlation per score", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
