"""The ranking benchmark's summary (tau, Spearman and seconds per candidate of every variant, the noise
ceiling, the agreement between the parts) and its markdown tables."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

from fastnas.run.ranking.truth import TruthRow
from fastnas.run.ranking.variants import Plan

__all__ = ["summarize", "tables_markdown"]


def _finite_or_none(x: Any) -> Optional[float]:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def summarize(plan: Plan, rows: Sequence[Mapping[str, str]], truth: Sequence[TruthRow], space: Any) -> Dict[str, Any]:
    """Kendall tau, Spearman rho and seconds per candidate of every variant, from the rows of ``scores.csv``.

    Args:
        plan: the benchmark's variants.
        rows: the ``scores.csv`` rows (column name -> cell text) of the architectures to summarize.
        truth: their ground truth (the test accuracies correlated with; valid accuracies for the ceiling).
        space: the run's space (texts are compared in its canonical form).

    Returns:
        ``{"scores": {name: {"tau", "spearman", "seconds", "n"}}, "default": name, "n": int,
        "noise_ceiling": {"tau", "spearman", "n"} or None, "agreement": {part: {part: tau}}}``; a tau that
        cannot be computed (fewer than two finite pairs) is ``None``.
    """
    from fastnas.metrics import correlate, kendall_tau, spearman

    def canon(text: str) -> str:
        return space.format(space.parse(text))

    test = {r.text: r.test_accuracy for r in truth}
    scores: Dict[str, Dict[str, Any]] = {}
    for name, v in plan.variants.items():
        values = {row["arch"]: float(row[name]) for row in rows}
        rank = correlate(values, test, canon) if values else None
        keys = v.evaluations()
        shared_recal = "clean" in keys and any(k.startswith("perturbed[") for k in keys)
        per = [sum(float(row[f"seconds:{k}"]) for k in keys) - (float(row["recal:clean"]) if shared_recal else 0.0)
               for row in rows]
        scores[name] = {"tau": _finite_or_none(rank.tau if rank else math.nan),
                        "spearman": _finite_or_none(rank.spearman if rank else math.nan),
                        "seconds": sum(per) / len(per) if per else None, "n": rank.n if rank else 0}
    pairs = [(r.valid_accuracy, r.test_accuracy) for r in truth if math.isfinite(r.valid_accuracy)]
    ceiling = None
    if len(pairs) >= 2:
        va, te = zip(*pairs)
        ceiling = {"tau": _finite_or_none(kendall_tau(va, te)), "spearman": _finite_or_none(spearman(va, te)),
                   "n": len(pairs)}
    parts = [n for _, n in plan.tables.get("parts", [])]

    def column(name: str) -> List[float]:
        out = [float(row[name]) for row in rows]
        return [x if math.isfinite(x) else math.nan for x in out]

    agreement = {a: {b: _finite_or_none(kendall_tau(column(a), column(b))) for b in parts} for a in parts}
    return {"scores": scores, "default": plan.default, "n": len(rows), "noise_ceiling": ceiling,
            "agreement": agreement}


def _fmt(x: Optional[float], spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def _seconds(x: Optional[float]) -> str:
    return "n/a" if x is None else (f"{x:.3f}" if x < 10 else f"{x:.1f}")


_TITLES = {
    "parts": "Score parts (GeNAS: PBS = accuracy, ABS = angle, FBS = flatness; -loss = clean validation loss)",
    "alpha": "Flatness against alpha (GeNAS Table 6 analogue)",
    "sigmas": "Flatness against the sigma set (GeNAS Table 5 analogue)",
    "noise": "Flatness against the noise mode",
    "gamma": "Sums S + gamma/sigma1 * F against gamma (GeNAS Table 8 analogue)",
    "baselines": "Baselines (no supernet)",
    "default": "The metric `fastnas search` ranks by by default",
}


def tables_markdown(summary: Mapping[str, Any], plan: Plan) -> str:
    """The benchmark's tables as markdown: Table 1 (tau between the parts) and one table per group, each row
    with tau and Spearman against the test accuracy and the seconds per candidate."""
    scores = summary["scores"]
    lines = [f"# Ranking benchmark: {summary['n']} architectures", ""]
    ceiling = summary.get("noise_ceiling")
    if ceiling:
        lines += [f"Noise ceiling (tau of the table's validation against its test accuracy, n={ceiling['n']}): "
                  f"tau {_fmt(ceiling['tau'])}, Spearman {_fmt(ceiling['spearman'])}", ""]
    else:
        lines += ["Noise ceiling: the truth table has no validation accuracy column.", ""]
    d = scores[plan.default]
    lines += [f"Default metric `{plan.default}`: tau {_fmt(d['tau'])}, Spearman {_fmt(d['spearman'])}, "
              f"{_seconds(d['seconds'])} s per candidate", ""]
    agreement = summary.get("agreement") or {}
    if agreement:
        parts = list(agreement)
        lines += ["## Kendall tau between the scores (GeNAS Table 1 analogue)", "",
                  "| | " + " | ".join(parts) + " |", "|---" * (len(parts) + 1) + "|"]
        lines += [f"| {a} | " + " | ".join(_fmt(agreement[a][b]) for b in parts) + " |" for a in parts]
        lines.append("")
    for group, rows in plan.tables.items():
        lines += [f"## {_TITLES.get(group, group)}", "", "| setting | variant | tau | Spearman | s / candidate |",
                  "|---|---|---|---|---|"]
        for label, name in rows:
            s = scores[name]
            lines.append(f"| {label} | `{name}` | {_fmt(s['tau'])} | {_fmt(s['spearman'])} | "
                         f"{_seconds(s['seconds'])} |")
        lines.append("")
    return "\n".join(lines)
