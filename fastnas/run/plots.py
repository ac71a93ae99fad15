"""The report's plots (PNG): search progress, loss against sigma, the found cell as a graph.

matplotlib's Agg canvas is used directly (no pyplot, no global backend change), imported inside the
functions so that importing fastnas never imports matplotlib. Cells are drawn with plain matplotlib
patches (no graphviz).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["plot_search_progress", "plot_loss_vs_sigma", "loss_vs_sigma_series", "SigmaSeries", "plot_cell",
           "cell_layout", "edge_labels", "sigma_losses", "plot_tau_vs_seconds", "plot_tau_bars", "plot_family"]

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


@dataclass(frozen=True)
class SigmaSeries:
    """One curve of ``loss_vs_sigma.png``: a top-k candidate and its loss at each perturbation level.

    Attributes:
        rank: its place in the search's top-k (1 = the found architecture), as in ``result.json``'s ``topk``.
        text: its architecture text (in full: the plot lists it under the axes).
        score: its score.
        losses: the validation loss at each sigma.
    """

    rank: int
    text: str
    score: float
    losses: Tuple[float, ...]

    @property
    def label(self) -> str:
        """The legend entry: short and unique (the rank), the full text is listed under the axes."""
        return f"#{self.rank}  score {self.score:.4g}"


def loss_vs_sigma_series(topk: Sequence[Any], sigmas: Sequence[float], n: int = 5) -> List[SigmaSeries]:
    """The curves ``loss_vs_sigma.png`` draws: the first ``n`` records of the search's top-k (the order of
    ``result.json``'s ``topk``) whose score parts hold one loss per sigma (records without are left out).

    ``topk``: records with ``text``, ``score`` and ``parts`` (:class:`~fastnas.search.SearchRecord`).
    """
    out = []
    for rank, r in enumerate(list(topk)[:n], start=1):
        losses = sigma_losses(r.parts, sigmas)
        if losses is not None:
            out.append(SigmaSeries(rank, r.text, float(r.score), tuple(losses)))
    return out


# Distinct marker, line style and a small horizontal offset per curve, so that curves with equal values
# (equal or nearly equal candidates) stay visible on top of each other.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
_LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)), (0, (8, 2)))


def _wrap(text: str, width: int) -> List[str]:
    """``text`` cut into lines of at most ``width`` characters, preferring breaks after ``|``, ``,`` or ``+``."""
    lines, rest = [], text
    while len(rest) > width:
        cut = max(rest.rfind(ch, 0, width) for ch in "|,+ ")
        cut = cut + 1 if cut > width // 2 else width
        lines.append(rest[:cut])
        rest = rest[cut:].lstrip()
    return lines + [rest]


def plot_loss_vs_sigma(series: Sequence[SigmaSeries], sigmas: Sequence[float], path: "os.PathLike[str] | str",
                       title: str = "") -> Any:
    """Validation loss against perturbation level for the top candidates (``series``, from
    :func:`loss_vs_sigma_series`): a short legend (rank and score) beside the axes and the full
    architecture texts listed under them, so no two candidates look alike. Returns the figure."""
    from matplotlib.ticker import NullFormatter, NullLocator

    width_chars = 110
    listing = []
    for s in series:
        wrapped = _wrap(s.text, width_chars - 5)
        listing.append(f"#{s.rank:<3} " + wrapped[0])
        listing.extend("     " + line for line in wrapped[1:])
    text_h = 0.12 * len(listing) + 0.15
    fig = _figure(7.5, 3.6 + text_h)
    top = 1.0 - 0.35 / (3.6 + text_h)
    bottom = (text_h + 0.5) / (3.6 + text_h)
    ax = fig.add_axes((0.1, bottom, 0.62, top - bottom))
    xs = [float(v) for v in sigmas]
    k = len(series)
    # the best is drawn last (on top); offsets spread the curves by a few percent of each sigma
    for i in reversed(range(k)):
        s = series[i]
        shift = 1.0 + 0.025 * (i - (k - 1) / 2) if len(xs) > 1 else 1.0
        ax.plot([x * shift for x in xs], list(s.losses), marker=_MARKERS[i % len(_MARKERS)],
                linestyle=_LINESTYLES[i % len(_LINESTYLES)], markersize=5, linewidth=1.4, label=s.label,
                color=f"C{i % 10}", zorder=3 + k - i, markerfacecolor="white" if i % 2 else None)
    if all(x > 0 for x in xs):
        ax.set_xscale("log")
        lo, hi = min(xs), max(xs)
        ax.set_xlim(lo / 1.25, hi * 1.25)
    # one tick per sigma, as written in the config (no minor-tick labels colliding with them)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{x:g}" for x in xs], rotation=30 if len(xs) > 4 else 0, fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("sigma (perturbation std)", fontsize=8)
    ax.set_ylabel("validation loss", fontsize=8)
    ax.set_title(title or "loss against sigma (flatter and lower is better)", fontsize=9)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda j: int(labels[j].split()[0][1:]))  # #1 first
    ax.legend([handles[j] for j in order], [labels[j] for j in order], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, title="top-k", title_fontsize=7)
    fig.text(0.02, text_h / (3.6 + text_h), "\n".join(listing), family="monospace", fontsize=6.5,
             va="top", ha="left")
    fig.savefig(os.fspath(path), format="png")
    return fig


def _op_colour(op: str) -> str:
    for key, colour in _OP_COLOURS.items():
        if key in op:
            return colour
    return "#ff7f0e"


#: Short edge labels (the colour says the op family; the full names are long and collide).
_SHORT_OPS = {"nor_conv_1x1": "conv1x1", "nor_conv_3x3": "conv3x3", "avg_pool_3x3": "avg pool",
              "max_pool_3x3": "max pool", "skip_connect": "skip", "sep_conv_3x3": "sep3x3",
              "sep_conv_5x5": "sep5x5", "dil_conv_3x3": "dil3x3", "dil_conv_5x5": "dil5x5"}

_RADIUS = 0.24  # node circles, in data units
_CHAR_W, _LABEL_H = 0.075, 0.17  # an edge label's character width and height, in data units
_INCH = 0.85  # inches per data unit


def cell_layout(graph: Any) -> Dict[str, Tuple[float, float]]:
    """Node positions of a cell graph, layered left to right.

    The inputs form layer 0; every other node sits one layer right of its rightmost predecessor
    (``graph.nodes`` lists them in topological order); nodes of one layer are stacked, centred on
    ``y = 0``, in the order listed.
    """
    nodes, n_in = list(graph.nodes), int(getattr(graph, "inputs", 1))
    preds: Dict[str, List[str]] = {n: [] for n in nodes}
    for src, dst, _ in graph.edges:
        preds[dst].append(src)
    layer: Dict[str, int] = {n: 0 for n in nodes[:n_in]}
    for n in nodes[n_in:]:
        layer[n] = 1 + max((layer[p] for p in preds[n] if p in layer), default=0)
    columns: Dict[int, List[str]] = {}
    for n in nodes:
        columns.setdefault(layer[n], []).append(n)
    pos: Dict[str, Tuple[float, float]] = {}
    for col, members in columns.items():
        for i, n in enumerate(members):
            pos[n] = (2.0 * col, 1.3 * ((len(members) - 1) / 2 - i))
    return pos


def _bend(edges: Sequence[Tuple[str, str, str]], pos: Mapping[str, Tuple[float, float]]) -> List[float]:
    """Each edge's ``arc3`` bend: straight when the straight line passes no other node, else the gentlest
    bend (alternately up and down first) whose curve keeps clear of the other nodes (the clearest one
    when none does)."""
    out, flip = [], 1.0
    for src, dst, _ in edges:
        others = [p for n, p in pos.items() if n not in (src, dst)]

        def clearance(rad: float) -> float:
            points = [_on_arc(pos[src], pos[dst], rad, t / 20) for t in range(2, 19)]
            return min((math.hypot(x - ox, y - oy) for x, y in points for ox, oy in others), default=math.inf)

        if clearance(0.0) >= 1.6 * _RADIUS:
            out.append(0.0)
            continue
        tries = [sign * r for r in (0.2, 0.3, 0.42, 0.55) for sign in (flip, -flip)]
        good = [r for r in tries if clearance(r) >= 1.6 * _RADIUS]
        rad = good[0] if good else max(tries, key=clearance)
        flip = -1.0 if rad > 0 else 1.0
        out.append(rad)
    return out


def _on_arc(p0: Tuple[float, float], p1: Tuple[float, float], rad: float, t: float) -> Tuple[float, float]:
    """The point at parameter ``t`` of matplotlib's ``arc3,rad=rad`` curve from ``p0`` to ``p1`` (a
    quadratic Bezier through the control point ``midpoint + rad * (dy, -dx)``)."""
    (x0, y0), (x1, y1) = p0, p1
    cx, cy = (x0 + x1) / 2 + rad * (y1 - y0), (y0 + y1) / 2 - rad * (x1 - x0)
    u = 1.0 - t
    return (u * u * x0 + 2 * u * t * cx + t * t * x1, u * u * y0 + 2 * u * t * cy + t * t * y1)


Box = Tuple[float, float, float, float]  # x_min, y_min, x_max, y_max


def _overlap(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def edge_labels(graph: Any, pos: Mapping[str, Tuple[float, float]]) -> List[Tuple[str, Tuple[float, float], Box]]:
    """Where each labelled edge's label goes: ``(text, centre, box)``, in ``graph.edges`` order.

    A label sits on its edge (at the point of the curve the edge is drawn as); of a few points along
    the edge, the first whose box overlaps no node and no label placed before is taken (else the
    one overlapping least).
    """
    bends = _bend(graph.edges, pos)
    nodes = [(x - _RADIUS, y - _RADIUS, x + _RADIUS, y + _RADIUS) for x, y in pos.values()]
    placed: List[Box] = []
    out = []
    for (src, dst, op), rad in zip(graph.edges, bends):
        if not op:
            continue
        text = _SHORT_OPS.get(op, op)
        w, h = _CHAR_W * len(text) + 0.06, _LABEL_H
        best = None
        for t in (0.6, 0.5, 0.7, 0.4, 0.78, 0.3):  # fan-outs (cell inputs) spread out towards the targets
            x, y = _on_arc(pos[src], pos[dst], rad, t)
            box = (x - w / 2, y - h / 2, x + w / 2, y + h / 2)
            cost = sum(_overlap(box, b) for b in nodes + placed)
            if best is None or cost < best[0]:
                best = (cost, (x, y), box)
            if cost == 0.0:
                break
        placed.append(best[2])
        out.append((text, best[1], best[2]))
    return out


def _draw_dag(ax: Any, graph: Any, title: str) -> None:
    """Nodes as labelled circles, edges as arrows (curved where they jump layers), each op's short name on
    its edge in a white box placed not to cover another label or a node."""
    from matplotlib.patches import Circle, FancyArrowPatch

    pos = cell_layout(graph)
    n_in = int(getattr(graph, "inputs", 1))
    for i, (label, (x, y)) in enumerate(pos.items()):
        face = "#dde8f5" if i < n_in else ("#f5e6cc" if label == graph.nodes[-1] else "#f2f2f2")
        ax.add_patch(Circle((x, y), _RADIUS, facecolor=face, edgecolor="black", lw=0.8, zorder=3))
        ax.text(x, y, label, ha="center", va="center", fontsize=7, zorder=4)
    for (src, dst, op), rad in zip(graph.edges, _bend(graph.edges, pos)):
        colour = _op_colour(op) if op else "#b8b8b8"
        ax.add_patch(FancyArrowPatch(pos[src], pos[dst], connectionstyle=f"arc3,rad={rad}",
                                     arrowstyle="-|>", mutation_scale=9, color=colour, lw=1.3 if op else 0.9,
                                     shrinkA=10, shrinkB=10, zorder=2))
    for (src, dst, op), (text, (x, y), _) in zip([e for e in graph.edges if e[2]], edge_labels(graph, pos)):
        ax.text(x, y, text, ha="center", va="center", fontsize=6, color=_op_colour(op), zorder=5,
                bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor=_op_colour(op), lw=0.4))
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
    ax.set_ylim(min(ys) - 0.9, max(ys) + 0.9)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title, fontsize=8)


def _extent(graph: Any) -> Tuple[float, float]:
    pos = cell_layout(graph)
    xs = [p[0] for p in pos.values()]
    ys = [p[1] for p in pos.values()]
    return max(xs) - min(xs) + 1.0, max(ys) - min(ys) + 1.8


def plot_cell(space: Any, arch: Any, path: "os.PathLike[str] | str", title: str = "") -> Any:
    """The found cell(s) as graphs (``space.cell_graph(arch)``, one row per cell kind), or the text form
    when the space draws no graph. Returns the figure."""
    graphs = list(space.cell_graph(arch)) if hasattr(space, "cell_graph") else []
    if graphs:
        sizes = [_extent(g) for g in graphs]
        width = max(4.0, _INCH * max(w for w, _ in sizes))
        heights = [_INCH * h + 0.3 for _, h in sizes]
        fig = _figure(width, sum(heights) + (0.3 if title and len(graphs) > 1 else 0.0))
        grid = fig.add_gridspec(len(graphs), 1, height_ratios=heights)
        chars = int(width * 72 / (0.6 * 8))  # a title line that fits the figure (NB201's title is its text)
        for row, g in enumerate(graphs):
            name = (title or g.title) if len(graphs) == 1 else g.title
            _draw_dag(fig.add_subplot(grid[row, 0]), g, "\n".join(_wrap(name, chars)))
        if title and len(graphs) > 1:
            fig.suptitle(title, fontsize=8)
    else:
        fig = _figure(6.0, 1.5)
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, space.format(arch), ha="center", va="center", fontsize=7, wrap=True)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
    return fig


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


def plot_family(members: Sequence[Mapping[str, Any]], path: "os.PathLike[str] | str", *,
                reference: Optional[Mapping[str, Any]] = None, title: str = "") -> None:
    """A model family: test top-1 against FLOPs per member, an arrow from each member to the next labelled
    with the negative flip rate between them (``members``: ``result.json``'s rows with ``flops``, ``top1``,
    ``nfr``, ``params``, ``tier``; ``reference``: the upgraded model's row, drawn as a grey square)."""
    fig = _figure(6.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    chain = ([dict(reference, tier="ref")] if reference else []) + [dict(m) for m in members]
    xs = [float(m["flops"]) for m in chain]
    ys = [100 * float(m["top1"]) for m in chain]
    for m, x, y in zip(chain, xs, ys):
        is_ref = m["tier"] == "ref"
        ax.plot([x], [y], "s" if is_ref else "o", color="#7f7f7f" if is_ref else "#1f77b4", markersize=7)
        ax.annotate(f"{m['tier']}: {int(m['params']):,} params", (x, y), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=7)
    for i in range(1, len(chain)):
        nfr = chain[i].get("nfr")
        ax.annotate("", xy=(xs[i], ys[i]), xytext=(xs[i - 1], ys[i - 1]),
                    arrowprops=dict(arrowstyle="->", color="#d62728", lw=1.2))
        if isinstance(nfr, (int, float)) and math.isfinite(nfr):
            ax.text((xs[i] + xs[i - 1]) / 2, (ys[i] + ys[i - 1]) / 2, f"NFR {100 * nfr:.2f}%", fontsize=7,
                    color="#d62728", ha="center", va="center",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    if xs and min(xs) > 0 and max(xs) / min(xs) > 10:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log axis overlap
    ax.margins(x=0.12, y=0.12)
    ax.set_xlabel("FLOPs (M multiply-adds per image)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title or "model family", fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")


def plot_controller(trace: Sequence[Mapping[str, Any]], path: "os.PathLike[str] | str", title: str = "") -> None:
    """NAR's controller over its updates: the mean reward of each update's samples with the moving-average
    baseline (left axis) and the policy's entropy (right axis). ``trace``: ``result.json``'s
    ``refine.trace`` (``update``, ``reward``, ``baseline``, ``entropy``, ``epoch``)."""
    fig = _figure(6.0, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    steps = [int(t["update"]) + 1 for t in trace]
    ax.plot(steps, [float(t["reward"]) for t in trace], "-", color="#1f77b4", lw=1.0, label="mean reward")
    ax.plot(steps, [float(t["baseline"]) for t in trace], "--", color="#2ca02c", lw=1.2, label="baseline")
    ax.set_xlabel("controller update")
    ax.set_ylabel("reward")
    right = ax.twinx()
    right.plot(steps, [float(t["entropy"]) for t in trace], ":", color="#d62728", lw=1.4, label="entropy")
    right.set_ylabel("policy entropy (nats, summed over genes)")
    lines = ax.get_lines() + right.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="lower right")
    ax.set_title(title or "controller: reward, baseline and entropy", fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")


def plot_op_probabilities(epochs: Sequence[Mapping[str, Any]], space: Any, path: "os.PathLike[str] | str",
                          title: str = "") -> None:
    """The final policy's op probabilities per gene (a heat map, genes by candidate ops, along its greedy
    path), and the probability of keeping the original op per gene over the epochs. ``epochs``:
    ``result.json``'s ``refine.epochs`` (``epoch``, ``probs``: per gene, one value per allowed op)."""
    names = ["original", *space.candidates]
    genes = len(space.gene_ops)
    final = epochs[-1]["probs"]
    grid = [[math.nan] * len(names) for _ in range(genes)]
    for g, (ops, probs) in enumerate(zip(space.gene_ops, final)):
        for op, p in zip(ops, probs):
            grid[g][op] = float(p)
    fig = _figure(7.5, 1.6 + 0.22 * genes)
    ax = fig.add_subplot(1, 2, 1)
    import numpy as np

    values = np.array(grid, dtype=float)
    top = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
    img = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, vmax=top)  # white: not allowed there
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=6)
    ax.set_yticks(range(genes))
    ax.set_yticklabels([str(label) for label in space.gene_labels], fontsize=6)
    ax.set_title(f"final policy (epoch {int(epochs[-1]['epoch']) + 1})", fontsize=8)
    fig.colorbar(img, ax=ax, fraction=0.05)
    ax2 = fig.add_subplot(1, 2, 2)
    xs = [int(e["epoch"]) + 1 for e in epochs]
    for g in range(genes):
        ax2.plot(xs, [float(e["probs"][g][0]) for e in epochs], "-", lw=0.9, marker="o", markersize=2)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("P(keep the original op)")
    ax2.set_ylim(0.0, 1.0)
    ax2.set_title("per gene, over training", fontsize=8)
    ax2.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")
