"""fastnas.metrics: score parts of a candidate (accuracy, angle, flatness, ...), metrics (weighted sums of
parts), score functions and rank correlation."""

from __future__ import annotations

from fastnas.metrics.accuracy import accuracy
from fastnas.metrics.angle import ANGLE_CONVENTIONS, AngleScorer, angle, angle_pieces
from fastnas.metrics.combine import Score, combined, flatness_score
from fastnas.metrics.evaluator import (
    NOISE_MODES, PRECISIONS, SCOPES, EvalResult, MultiSigmaEvaluator, calibration_batches, noise_stream,
)
from fastnas.metrics.fastcopy import foldable_copy
from fastnas.metrics.flatness import PRESETS, FlatnessConfig, FlatnessResult, flatness, supernet_flatness
from fastnas.metrics.flips import FlipReport, flip_report, negative_flip_rate, relative_nfr
from fastnas.metrics.metric import METRIC_PRESETS, Metric, Term
from fastnas.metrics.parts import (
    NEEDS, PartContext, ScorePart, get_score_part, list_score_parts, register_score_part,
)
from fastnas.metrics.rank import RankResult, correlate, kendall_tau, load_ground_truth, scatter_plot, spearman
from fastnas.metrics.scores import DEFAULT_GAMMA, METRICS, ScoreFunction, default_flatness_config, make_score_fn

__all__ = [
    "accuracy", "angle", "angle_pieces", "AngleScorer", "ANGLE_CONVENTIONS",
    "Score", "combined", "flatness_score",
    "MultiSigmaEvaluator", "EvalResult", "NOISE_MODES", "PRECISIONS", "SCOPES", "calibration_batches",
    "foldable_copy", "noise_stream",
    "FlatnessConfig", "FlatnessResult", "flatness", "supernet_flatness", "PRESETS",
    "FlipReport", "flip_report", "negative_flip_rate", "relative_nfr",
    "RankResult", "kendall_tau", "spearman", "load_ground_truth", "correlate", "scatter_plot",
    "make_score_fn", "ScoreFunction", "METRICS", "DEFAULT_GAMMA", "default_flatness_config",
    "Metric", "Term", "METRIC_PRESETS",
    "register_score_part", "list_score_parts", "get_score_part", "ScorePart", "PartContext", "NEEDS",
]
