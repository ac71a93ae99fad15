"""The report of a run: ``history.csv``, ``result.json``, the plots, and a one-screen summary.

``result.json`` holds the found architecture under ``"arch"`` (its canonical text), its score and score
parts, params (of the network ``fastnas export`` writes; ``"params_benchmark"``: the space's benchmark
convention, e.g. NAS-Bench-201's affine cells or DARTS's 36-channel 20-cell network), FLOPs, the test accuracy when it was retrained, the search outcome, the seconds per
phase (under ``"timings"``: the only part that differs between a resumed and an uninterrupted run)
and the kernel backends.
"""

from __future__ import annotations

import csv
import io
import logging
import platform
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from fastnas.run.config import PHASE_KEYS
from fastnas.run.rundir import write_json_atomic, write_text_atomic

__all__ = ["write_report", "history_csv", "summary_lines", "backends_used", "PHASE_LABELS"]

logger = logging.getLogger(__name__)

#: Rows of the timing table: key in ``timings`` -> label.
PHASE_LABELS = {
    "data": "data loading",
    "train": "supernet training",
    "recalibration": "BN recalibration",
    "scoring": "scoring",
    "search_other": "search (proposals, state)",
    "retrain": "retraining",
    "report": "report and plots",
}


def _flat_parts(parts: Mapping[str, Any]) -> Dict[str, Any]:
    """Score parts as CSV cells: a list/tuple part becomes ``name[0]``, ``name[1]``, ..."""
    out: Dict[str, Any] = {}
    for key, value in parts.items():
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                out[f"{key}[{i}]"] = v
        elif isinstance(value, Mapping):
            for k, v in value.items():
                out[f"{key}.{k}"] = v
        else:
            out[key] = value
    return out


def history_csv(records: Sequence[Any]) -> str:
    """Every scored candidate, one row each: index, generation, origin, arch, score, flagged, params,
    flops, then every score part (in order of first appearance)."""
    rows = []
    part_names: List[str] = []
    for i, r in enumerate(records):
        parts = _flat_parts(r.parts)
        for k in parts:
            if k not in part_names:
                part_names.append(k)
        rows.append((i, r, parts))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "generation", "origin", "arch", "score", "flagged", "params", "flops"] + part_names)
    for i, r, parts in rows:
        w.writerow([i, r.generation, r.origin, r.text, repr(float(r.score)), int(bool(r.flagged)),
                    "" if r.params is None else r.params, "" if r.flops is None else repr(float(r.flops))]
                   + [_cell(parts.get(k)) for k in part_names])
    return buf.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def backends_used(device: Any) -> Dict[str, Any]:
    """Which backend each kernel uses on ``device``, and every backend's availability."""
    import torch

    import fastnas
    from fastnas.ops._dispatch import all_dispatchers

    used = {}
    for d in all_dispatchers():
        try:
            used[d.op] = d.pick(torch.device(device), [torch.float32]).name
        except (NotImplementedError, ValueError, RuntimeError) as e:
            used[d.op] = f"none ({e})"
    return {"used": used, "available": {name: s.available for name, s in fastnas.backends().items()}}


def _shares(timings: Mapping[str, float]) -> Dict[str, float]:
    total = sum(v for k, v in timings.items() if k in PHASE_LABELS)
    return {k: (timings.get(k, 0.0) / total if total > 0 else 0.0) for k in PHASE_LABELS if k in timings}


def write_report(run: Any, timed_report_seconds: Callable[[], float]) -> Dict[str, Any]:
    """Writes the report files of ``run`` (a :class:`fastnas.run.pipeline.Run` after its search)."""
    import torch

    import fastnas
    from fastnas.run import plots

    c, space, d = run.config, run.space, run.dir
    result = run.search_result
    records = list(result.history)
    best = result.best
    write_text_atomic(d / d.HISTORY, history_csv(records))
    plot_dir = d / d.PLOTS
    plot_dir.mkdir(exist_ok=True)
    written: Dict[str, str] = {}

    def attempt(name: str, fn: Callable[[], Any]) -> Any:
        # A plot that fails (an odd score, a matplotlib quirk) must not lose the result.
        try:
            out = fn()
            written[name] = f"{d.PLOTS}/{name}.png"
            return out
        except Exception as e:  # noqa: BLE001
            logger.warning("plot %s failed: %s: %s", name, type(e).__name__, e)
            return None

    attempt("search_progress", lambda: plots.plot_search_progress(
        [{"generation": r.generation, "score": r.score} for r in records], plot_dir / "search_progress.png",
        title=f"{c.searcher} search, metric {c.metric}"))
    if best is not None:
        attempt("cell", lambda: plots.plot_cell(space, best.arch, plot_dir / "cell.png"))
    if c.uses("flatness"):
        series = plots.loss_vs_sigma_series(result.topk, c.sigmas)  # result.json's top 5, in its order
        if series:
            attempt("loss_vs_sigma", lambda: plots.plot_loss_vs_sigma(series, c.sigmas,
                                                                      plot_dir / "loss_vs_sigma.png"))
    kendall = None
    if c.truth is not None:
        from fastnas.metrics.rank import load_ground_truth, scatter_plot

        truth = load_ground_truth(c.truth)
        canon = _canonicalizer(space)
        rank = attempt("kendall", lambda: scatter_plot({r.text: r.score for r in records}, truth,
                                                       plot_dir / "kendall.png", title=f"metric {c.metric}",
                                                       canonicalize=canon,
                                                       flagged={r.text for r in records if r.flagged}))
        if rank is not None:
            kendall = rank.to_dict()

    tr = run.train_result
    identity = {k: v for k, v in c.to_dict().items() if any(k in keys for keys in PHASE_KEYS.values())}
    timings = dict(run.state["timings"])
    timings["report"] = timings.get("report", 0.0) + timed_report_seconds()
    out: Dict[str, Any] = {
        "fastnas_version": fastnas.__version__,
        "space": space.name,
        "arch": best.text if best is not None else None,
        "score": best.to_dict()["score"] if best is not None else None,
        "parts": best.to_dict()["parts"] if best is not None else {},
        "flagged": best.flagged if best is not None else None,
        "params": best.params if best is not None else None,
        "params_benchmark": _params_benchmark(space, best.arch) if best is not None else None,
        "flops": best.flops if best is not None else None,
        "test_accuracy": run.retrain_result["test_accuracy"] if run.retrain_result else None,
        "retrain": run.retrain_result,
        "topk": [r.to_dict() for r in result.topk],
        "search": {"searcher": c.searcher, "metric": c.metric, "n_scored": len(records),
                   "equivalent_proposals": result.equivalent,
                   "generations": result.generations, "exhausted": result.exhausted},
        "supernet": tr.to_dict() if tr is not None else None,
        "kendall": kendall,
        "scoring": run.state.get("scoring", {"route": None, "route_reason": None}),
        "plots": written,
        "config": identity,
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "device": str(run.device), "backends": backends_used(run.device)},
        "timings": {"seconds": timings, "total": sum(timings.get(k, 0.0) for k in PHASE_LABELS),
                    "share": _shares(timings), "sessions": run.state.get("sessions", 1),
                    "per_epoch": tr.to_dict().get("epoch_time") if tr is not None else None,
                    "scoring": run.score_stats},
    }
    if out["supernet"] is not None:
        out["supernet"].pop("epoch_time", None)  # a timing: kept under "timings"
        out["supernet"].pop("resumed_from_epoch", None)  # differs between resumed and uninterrupted runs
    if run.retrain_result is not None:
        out["retrain"] = dict(run.retrain_result)
    run.state["timings"] = timings
    extra = getattr(run, "extra_result", None)
    if callable(extra):  # a run kind's own fields (NAR's ops, params, FLOPs against the base), in the same file
        out.update(extra(out))
    write_json_atomic(d / d.RESULT, out)
    return out


def _params_benchmark(space: Any, arch: Any) -> Optional[int]:
    """The space's benchmark-convention count of ``arch`` where it has one (``params`` is the exported
    network's)."""
    fn = getattr(space, "params_benchmark", None)
    if fn is None:
        return None
    try:
        value = fn(arch)
    except NotImplementedError:
        return None
    return None if value is None else int(value)


def _canonicalizer(space: Any) -> Callable[[str], str]:
    def canon(text: str) -> str:
        try:
            return space.format(space.parse(text))
        except ValueError:
            return text
    return canon


def _fmt_seconds(s: float) -> str:
    return f"{s:6.1f} s" if s < 120 else f"{s / 60:6.1f} min"


def summary_lines(result: Mapping[str, Any], run_path: str) -> List[str]:
    """A one-screen text summary of ``result`` (what ``fastnas search`` prints at the end)."""
    lines = [f"found architecture ({result['space']}):", f"  {result['arch']}"]
    score = result.get("score")
    parts = result.get("parts") or {}
    simple = {k: v for k, v in parts.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    lines.append(f"score {result['search']['metric']}: {_num(score)}"
                 + (("  (" + ", ".join(f"{k} {_num(v)}" for k, v in simple.items()) + ")") if simple else ""))
    params, flops = result.get("params"), result.get("flops")
    lines.append(f"params {params:,}" if isinstance(params, int) else "params n/a")
    bench = result.get("params_benchmark")
    if isinstance(bench, int) and bench != params:
        lines[-1] += f" ({bench:,} in the {result['space']} benchmark's convention)"
    lines[-1] += f", FLOPs {flops:.3f} M" if isinstance(flops, (int, float)) else ""
    if result.get("test_accuracy") is not None:
        lines.append(f"retrained {result['retrain']['epochs']} epochs from scratch: test accuracy "
                     f"{100 * result['test_accuracy']:.2f}%")
    s = result["search"]
    lines.append(f"searched {s['n_scored']} candidates ({s['searcher']}, {s['generations']} generation(s))")
    if s.get("equivalent_proposals"):
        lines.append(f"skipped {s['equivalent_proposals']} proposals equivalent to scored architectures")
    if result.get("kendall"):
        k = result["kendall"]
        lines.append(f"Kendall tau {k['tau']:.3f}, Spearman {k['spearman']:.3f} (n={k['n']})")
    t = result["timings"]
    lines.append(f"time {_fmt_seconds(t['total']).strip()} in {t['sessions']} session(s):")
    for key, label in PHASE_LABELS.items():
        if key in t["seconds"]:
            lines.append(f"  {label:<27}{_fmt_seconds(t['seconds'][key])}  {100 * t['share'].get(key, 0):5.1f}%")
    lines.append(f"report: {run_path}/result.json (plots in {run_path}/plots)")
    return lines


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)
