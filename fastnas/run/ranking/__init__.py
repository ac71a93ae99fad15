"""The ranking benchmark: how well every score ranks the architectures of a ground-truth table.

``fastnas bench ranking --run RUN --truth FILE.csv`` scores each architecture of the table with the run's
trained supernet and every *variant* of the scores (:func:`plan_variants`): the parts (accuracy, angle,
flatness, the clean loss), flatness for several ``alpha``, sigma sets and noise modes, the GeNAS sums
``S + gamma/sigma1 * F`` for a sweep of ``gamma``, the baselines (parameter count, FLOPs, a seeded random
score), and the metric ``fastnas search`` uses by default. It reports Kendall tau and Spearman rho of
each against the table's test accuracy, with the seconds per candidate of the evaluations each variant
needs, and the table's noise ceiling (tau of its validation against its test accuracy).

Shared work is done once per architecture: every *evaluation* a variant needs -- the angle, the clean
(recalibrated, unperturbed) pass, and one perturbed evaluation per (sigma set, noise mode) -- runs once,
built by the run's own score functions (:meth:`fastnas.run.pipeline.Run.score_fn`). Each variant's value
then comes from :class:`fastnas.metrics.ScoreFunction` replaying those evaluations, so it equals what
``fastnas search`` computes for that metric and those settings (all alphas and gammas of a sigma set come
from the same losses).

Output directory (default ``RUN/bench-ranking``)::

    settings.json        what the scores were made with (a rerun must match it)
    scores.csv           one row per architecture: arch, test_accuracy, one column per variant, and
                         ``seconds:<evaluation>`` (``recal:clean``: its BatchNorm recalibration); appended
                         and fsync'd row by row, so a rerun skips what is there and a kill loses one row
    summary.json         {"scores": {name: {"tau", "spearman", "seconds", "n"}}, "default": name, "n", ...}
    tables.md            the tables (GeNAS Tables 1, 5, 6, 8 analogues, noise modes, baselines)
    tau_vs_seconds.png   tau against seconds per candidate; tau_per_score.png: tau per score
"""

from __future__ import annotations

from fastnas.run.ranking.bench import RankingBench
from fastnas.run.ranking.tables import summarize, tables_markdown
from fastnas.run.ranking.truth import TruthRow, load_truth
from fastnas.run.ranking.variants import (
    ALPHAS, BASELINES, COMBINATIONS, GAMMAS, GROUPS, SIGMA_SETS, Plan, Variant, plan_variants,
)

__all__ = ["ALPHAS", "GAMMAS", "SIGMA_SETS", "GROUPS", "COMBINATIONS", "BASELINES", "Variant", "Plan", "TruthRow",
           "load_truth", "plan_variants", "RankingBench", "summarize", "tables_markdown"]
