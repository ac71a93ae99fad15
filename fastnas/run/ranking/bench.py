"""The ranking benchmark's run: the shared evaluations of each architecture, the variants' values from
them, the resumable ``scores.csv``, and the summary, tables and plots (see :mod:`fastnas.run.ranking`)."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from fastnas.run.ranking.tables import summarize, tables_markdown
from fastnas.run.ranking.truth import TruthRow, load_truth
from fastnas.run.ranking.variants import ALPHAS, GAMMAS, plan_variants
from fastnas.run.rundir import read_json, write_json_atomic, write_text_atomic
from fastnas.seeds import derive_seed

__all__ = ["RankingBench"]

logger = logging.getLogger(__name__)

_VERSION = 1


class _Replay:
    """An evaluator that hands back evaluations already made, so that a
    :class:`~fastnas.metrics.ScoreFunction` combines them exactly as it combines its own."""

    def __init__(self, clean: Any, perturbed: Any) -> None:
        self.clean, self.perturbed = clean, perturbed

    def evaluate(self, arch: Any = None, *, clean: bool = False, perturbed: bool = True) -> Any:
        if (clean and self.clean is None) or (perturbed and self.perturbed is None):  # pragma: no cover
            raise RuntimeError("the benchmark planned no such evaluation")
        if not perturbed:
            return self.clean
        if not clean:
            return self.perturbed
        return replace(self.perturbed, clean_loss=self.clean.clean_loss, clean_accuracy=self.clean.clean_accuracy)


def _random_value(seed: int, text: str) -> float:
    """A uniform value in [0, 1) of ``(seed, architecture)``: the same for every order, limit and resume."""
    index = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:15], 16)
    return (derive_seed(seed, "bench-random", index) >> 10) / float(1 << 53)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _cell(value: float) -> str:
    return repr(float(value))


class RankingBench:
    """The ranking benchmark of one trained run against one ground-truth table.

    The constructor validates everything and writes nothing: the run has a trained supernet, the truth
    file is a well-formed table of the run's space, the options are valid, and an existing output
    directory holds scores of the same settings. :meth:`run_all` then scores the architectures not yet in
    ``scores.csv`` and writes the summary, tables and plots.

    Args:
        run: a read-only :class:`~fastnas.run.pipeline.Run` (``prepare_from_run(..., read_only=True)``).
        truth: the ground-truth CSV (:func:`load_truth`).
        out_dir: the output directory (default ``<run>/bench-ranking``).
        select: groups or variant names (see :func:`plan_variants`); ``None``: all.
        limit: score only the first ``limit`` architectures of the table.
        seed: seed of the random baseline.
        alphas, gammas, sigma_sets: the sweeps (see :func:`plan_variants`).
        names: how errors name the run, the truth file and the output directory (the CLI's flags).
    """

    SETTINGS = "settings.json"
    SCORES = "scores.csv"
    SUMMARY = "summary.json"
    TABLES = "tables.md"
    PLOT_COST = "tau_vs_seconds.png"
    PLOT_BARS = "tau_per_score.png"

    def __init__(self, run: Any, truth: "os.PathLike[str] | str", *, out_dir: Optional["os.PathLike[str] | str"] = None,
                 select: Optional[Sequence[str]] = None, limit: Optional[int] = None, seed: int = 0,
                 alphas: Sequence[float] = ALPHAS, gammas: Sequence[float] = GAMMAS,
                 sigma_sets: Optional[Sequence[Sequence[float]]] = None,
                 names: Optional[Mapping[str, str]] = None) -> None:
        names = {"run": "run", "truth": "truth", "out": "out", **(names or {})}
        self.run = run
        self.truth_path = str(truth)
        run_path = str(run.dir.path)
        if run.state["phases"].get("train") != "done" or not (run.dir / run.dir.SUPERNET).is_file():
            raise ValueError(f"{names['run']} {run_path}: the run has no trained supernet yet; train it first "
                             f"(fastnas train-supernet --resume {run_path})")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit={limit!r}: expected an integer >= 1")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed={seed!r}: expected an integer >= 0")
        self.truth = load_truth(truth, run.space, name=names["truth"])
        self.rows = self.truth[:limit] if limit is not None else self.truth
        self.plan = plan_variants(run.config, alphas=alphas, gammas=gammas, sigma_sets=sigma_sets, select=select)
        self.seed = seed
        self.out = Path(out_dir) if out_dir is not None else run.dir.path / "bench-ranking"
        self._out_name = names["out"]
        self.columns = (["arch", "test_accuracy"] + list(self.plan.variants)
                        + [f"seconds:{k}" for k in self.plan.evaluations()] + ["recal:clean"])
        self.settings = self._settings()
        self.done = self._read_existing()  # {text: row} already scored (checked against settings and truth)

    # ---- settings and resume

    def _settings(self) -> Dict[str, Any]:
        from fastnas.run.scoring import flatness_config

        c, p = self.run.config, self.run.p
        d = self.run.dir
        return {"version": _VERSION, "kind": "fastnas bench ranking",
                "supernet": _file_digest(d / d.SUPERNET), "space": self.run.space.name,
                "space_config": dict(self.run.space.config()), "data": c.data, "seed": c.seed,
                "valid_images": int(p.valid[1].shape[0]), "calibration_images": int(p.train[1].shape[0]),
                "score": flatness_config(c).to_dict(), "random_seed": self.seed,
                "variants": {n: v.to_dict() for n, v in self.plan.variants.items()}}

    def _read_existing(self) -> Dict[str, Dict[str, str]]:
        import json

        out, scores, settings = self.out, self.out / self.SCORES, self.out / self.SETTINGS
        where = f"{self._out_name} {out}"
        if out.exists() and not out.is_dir():
            raise ValueError(f"{where}: exists and is not a directory")
        if not scores.exists():
            return {}
        if not settings.is_file():
            raise ValueError(f"{where}: has {self.SCORES} but no {self.SETTINGS}; it was not written by this "
                             "benchmark: choose another output directory")
        saved = read_json(settings, "benchmark settings")
        now = json.loads(json.dumps(self.settings))
        if not isinstance(saved, dict) or saved != now:
            keys = sorted(k for k in set(now) | set(saved if isinstance(saved, dict) else {})
                          if not isinstance(saved, dict) or saved.get(k) != now.get(k))
            detail = ", ".join(keys)
            if "variants" in keys and isinstance(saved, dict) and isinstance(saved.get("variants"), dict):
                a, b = set(saved["variants"]), set(now["variants"])
                detail += f" (saved only: {sorted(a - b)}; now only: {sorted(b - a)})" if a != b else ""
            raise ValueError(f"{where}: holds scores made with other settings ({detail}); rerun with the same "
                             "run, options and score settings, or choose another output directory")
        with open(scores, newline="", encoding="utf-8") as fh:
            text = fh.read()
        if not text.endswith("\n"):  # a kill in the middle of a row's write: that row is scored again
            text = text[:text.rfind("\n") + 1]
        truth = {r.text: r for r in self.truth}
        done: Dict[str, Dict[str, str]] = {}
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if header != self.columns:
            raise ValueError(f"{scores}: its columns {header} are not this benchmark's; choose another "
                             "output directory")
        for line, cells in enumerate(reader, start=2):
            if len(cells) != len(header):
                raise ValueError(f"{scores}:{line}: {len(cells)} cells, expected {len(header)}; the file is "
                                 "damaged: delete that line or choose another output directory")
            row = dict(zip(header, cells))
            t = truth.get(row["arch"])
            if t is None:
                raise ValueError(f"{scores}:{line}: architecture {row['arch']!r} is not in the truth table "
                                 "(the table changed); choose another output directory")
            try:
                values = [float(v) for v in cells[1:]]
            except ValueError:
                raise ValueError(f"{scores}:{line}: a cell is not a number; the file is damaged") from None
            if values[0] != t.test_accuracy:
                raise ValueError(f"{scores}:{line}: {row['arch']!r} has test_accuracy {values[0]!r} but the "
                                 f"truth table now says {t.test_accuracy!r} (line {t.line}); choose another "
                                 "output directory")
            done[row["arch"]] = row
        return done

    @staticmethod
    def _truncate_partial_row(path: Path) -> None:
        """Cuts a last line that a kill left without its newline (the row of the architecture in progress)."""
        with open(path, "rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                end = data.rfind(b"\n") + 1
                logger.info("%s: dropping an incomplete last row", path)
                fh.truncate(end)

    # ---- scoring

    def _evaluators(self) -> Dict[str, Any]:
        """The score function (of the run's own kind) behind each evaluation key."""
        c = self.run.config
        fns: Dict[str, Any] = {}
        for key in self.plan.evaluations():
            if key == "angle":
                fns[key] = self.run.score_fn(c.replace(metric="angle")).fn
            elif key == "clean":
                fns[key] = self.run.score_fn(c.replace(metric="accuracy")).fn
            elif key.startswith("perturbed["):
                v = next(v for v in self.plan.variants.values() if key in v.evaluations())
                fns[key] = self.run.score_fn(c.replace(metric="flatness", sigmas=v.sigmas, noise=v.noise)).fn
        return fns

    def _evaluate(self, fns: Mapping[str, Any], row: TruthRow) -> Tuple[Dict[str, Any], Dict[str, float]]:
        space = self.run.space
        results: Dict[str, Any] = {}
        seconds: Dict[str, float] = {"recal:clean": 0.0}
        for key in self.plan.evaluations():
            t0 = time.perf_counter()
            if key == "angle":
                results[key] = fns[key].context(row.arch).angle_scorer(row.arch)
            elif key in ("clean",) or key.startswith("perturbed["):
                ev = fns[key].evaluator
                recal0 = ev.recal_seconds
                results[key] = fns[key].context(row.arch).result
                if key == "clean":
                    seconds["recal:clean"] = ev.recal_seconds - recal0
            elif key == "params":
                results[key] = float(space.params(row.arch))
            elif key == "flops":
                results[key] = float(space.flops(row.arch))
            elif key == "random":
                results[key] = _random_value(self.seed, row.text)
            seconds[f"seconds:{key}"] = time.perf_counter() - t0
        return results, seconds

    def _values(self, results: Mapping[str, Any], row: TruthRow) -> Dict[str, float]:
        """Each variant's value from the shared evaluations, combined by a ScoreFunction as the search does."""
        from fastnas.metrics import Metric, ScoreFunction
        from fastnas.run.scoring import flatness_config

        c = self.run.config
        out: Dict[str, float] = {}
        for name, v in self.plan.variants.items():
            if v.baseline is not None:
                out[name] = results[v.baseline]
                continue
            keys = v.evaluations()
            perturbed = next((results[k] for k in keys if k.startswith("perturbed[")), None)
            angle = results.get("angle")
            fn = ScoreFunction(Metric.parse(v.metric).with_gamma(v.gamma), self.run.space,
                               (lambda arch, _a=angle: _a) if angle is not None else None,
                               _Replay(results.get("clean"), perturbed),
                               flatness_config(c.replace(sigmas=v.sigmas, alpha=v.alpha, noise=v.noise)), cache=False)
            out[name] = fn(row.arch).value  # -inf when flagged, as in the search
        return out

    def run_all(self, progress: Optional[Callable[[str, Dict[str, Any]], None]] = None) -> Dict[str, Any]:
        """Scores the architectures not yet scored, then writes the summary, tables and plots.

        ``progress(event, info)``: ``bench:start`` (``total``, ``done``), ``bench:arch`` (``n_done``,
        ``total``, ``text``, ``seconds``) after each row is on disk, ``bench:end``.

        Returns:
            The summary (:func:`summarize`), also written to ``summary.json``.
        """
        progress = progress or (lambda event, info: None)
        todo = [r for r in self.rows if r.text not in self.done]
        total = len(self.rows)
        progress("bench:start", {"total": total, "done": total - len(todo)})
        if todo:
            self._score(todo, total, progress)
        progress("bench:end", {})
        rows = [self.done[r.text] for r in self.rows]
        summary = summarize(self.plan, rows, self.rows, self.run.space)
        summary.update(run=str(self.run.dir.path), truth=self.truth_path)
        write_json_atomic(self.out / self.SUMMARY, summary)
        write_text_atomic(self.out / self.TABLES, tables_markdown(summary, self.plan))
        self._plots(summary)
        return summary

    def _score(self, todo: List[TruthRow], total: int, progress: Callable[[str, Dict[str, Any]], None]) -> None:
        self.run.load_trained()
        fns = self._evaluators()
        scores = self.out / self.SCORES
        if scores.exists():
            self._truncate_partial_row(scores)
        else:
            write_json_atomic(self.out / self.SETTINGS, self.settings)
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerow(self.columns)
            write_text_atomic(scores, buf.getvalue())
        with open(scores, "a", newline="", encoding="utf-8") as fh:
            for row in todo:
                t0 = time.perf_counter()
                results, seconds = self._evaluate(fns, row)
                values = self._values(results, row)
                record = {"arch": row.text, "test_accuracy": _cell(row.test_accuracy),
                          **{n: _cell(values[n]) for n in self.plan.variants},
                          **{k: _cell(s) for k, s in seconds.items()}}
                buf = io.StringIO()
                csv.writer(buf, lineterminator="\n").writerow([record[k] for k in self.columns])
                fh.write(buf.getvalue())  # one write, then flush + fsync: a kill loses this row at most
                fh.flush()
                os.fsync(fh.fileno())
                self.done[row.text] = record
                progress("bench:arch", {"n_done": len(self.done), "total": total, "text": row.text,
                                        "seconds": time.perf_counter() - t0})

    def _plots(self, summary: Mapping[str, Any]) -> None:
        from fastnas.run.plots import plot_tau_bars, plot_tau_vs_seconds

        group: Dict[str, str] = {}
        for g, rows in self.plan.tables.items():
            for _, n in rows:
                group.setdefault(n, g)  # a variant of several tables takes the colour of its first
        points = [(n, group.get(n, ""), s["tau"], s["seconds"]) for n, s in summary["scores"].items()]
        ceiling = (summary.get("noise_ceiling") or {}).get("tau")
        title = f"{summary['n']} architectures of {Path(summary.get('truth', '')).name or 'the truth'}"
        plot_tau_vs_seconds(points, self.out / self.PLOT_COST, ceiling=ceiling, default=self.plan.default,
                            title=title)
        plot_tau_bars(points, self.out / self.PLOT_BARS, ceiling=ceiling, default=self.plan.default, title=title)
