"""fastnas: one-shot neural architecture search with fused native kernels.

The small public API, re-exported here:

* kernels: :func:`perturb_`, :func:`restore_`, :func:`perturbed`, :func:`perturbed_copies`,
  :func:`noise`, :func:`philox_words`, :class:`ParamLayout`, :class:`ParamSlice`, :func:`path_params`,
  :func:`backends`;
* scores: :func:`flatness` (drop-in, any ``nn.Module``), :class:`FlatnessConfig`,
  :class:`MultiSigmaEvaluator`, :func:`accuracy`, :func:`angle`, :func:`make_score_fn`, :class:`Score`,
  :class:`Metric`, :func:`register_score_part`, :func:`kendall_tau`, :func:`spearman`;
* spaces and search: :func:`create_space`, :func:`list_spaces`, :class:`NB201`, :class:`DARTS`,
  the ask/tell protocol (:class:`Searcher`, :func:`create_searcher`, :class:`SearchConfig`,
  :func:`run_search`), :func:`evolve`, :class:`EvolutionConfig`, :func:`random_search`, :func:`exhaustive`;
* training and data: :func:`train_supernet`, :class:`TrainConfig`, :func:`load_dataset`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from fastnas import _native  # noqa: F401  (loads fastnas._C once, warns once if it is missing)
from fastnas.data import load_dataset
from fastnas.metrics import (FlatnessConfig, FlatnessResult, Metric, MultiSigmaEvaluator, Score, accuracy, angle,
                             flatness, flip_report, kendall_tau, make_score_fn, negative_flip_rate,
                             register_score_part, relative_nfr, spearman)
from fastnas.ops import (Backup, BackendStatus, ParamLayout, ParamSlice, backends, noise, path_params, perturb_,
                         perturbed, perturbed_copies, philox_words, restore_)
from fastnas.search import (EvolutionConfig, SearchConfig, Searcher, create_searcher, evolve, exhaustive,
                            random_search, run_search)
from fastnas.spaces import DARTS, NB201, create_space, list_spaces
from fastnas.train import TrainConfig, train_supernet

__all__ = [
    "__version__",
    "Backup", "BackendStatus", "ParamLayout", "ParamSlice", "backends", "noise", "path_params", "perturb_",
    "perturbed", "perturbed_copies", "philox_words", "restore_",
    "FlatnessConfig", "FlatnessResult", "Metric", "MultiSigmaEvaluator", "Score", "accuracy", "angle", "flatness",
    "kendall_tau", "make_score_fn", "register_score_part", "spearman",
    "flip_report", "negative_flip_rate", "relative_nfr",
    "DARTS", "NB201", "create_space", "list_spaces",
    "EvolutionConfig", "SearchConfig", "Searcher", "create_searcher", "evolve", "exhaustive", "random_search",
    "run_search",
    "TrainConfig", "train_supernet", "load_dataset",
    "refine", "RefineResult",
]


def __getattr__(name: str):
    # fastnas.refine (NAR) lives in the run layer; imported on first use to keep `import fastnas` light
    if name in ("refine", "RefineResult"):
        from fastnas.run import refine as _refine_module

        return getattr(_refine_module, name)
    raise AttributeError(f"module 'fastnas' has no attribute {name!r}")
