"""Batched multi-sigma loss evaluation: the losses of every (noise level, sample) of a candidate in one call.

The work of one flatness score is ``levels * samples`` passes over the validation set with perturbed
weights. :class:`MultiSigmaEvaluator` does them with as little overhead as the device allows:

* the validation set is staged once on the device as tensors (no DataLoader), in the memory format the
  model runs fastest in;
* no host synchronisation per batch: loss sums (``cross_entropy(reduction="sum")``) and correct counts
  accumulate on the device, one ``tolist()`` per candidate;
* BatchNorm is recalibrated once per candidate, before any perturbation (the noise is on parameters; the
  running statistics are buffers and are not perturbed, as in the reference code);
* each (level, sample) is ``perturb_`` in place (backup buffer reused) -> forward under
  ``torch.inference_mode`` -> ``restore_`` (exact, bit for bit);
* a supernet candidate runs as its extracted standalone module (``supernet.extract(arch,
  return_map=True)``, a copy: the supernet's weights and statistics are never touched). Its parameters
  are perturbed with the *supernet's* layout offsets through the space's name map, so the noise equals
  perturbing the whole supernet (a slice of a nested family, ``weight[:out, :in]``, is perturbed in a
  private copy of its full tensor, where its noise is keyed by the full tensor's index, and copied into
  the module's parameter). After each perturbation a "fast" copy is refreshed: every Conv2d
  directly followed by a BatchNorm2d inside an ``nn.Sequential`` is folded into one convolution with
  bias, and the copy is in channels-last format;
* where the space compiles its extracted networks (``supernet.batched_forward().compile(net, ...)``,
  NB201's :class:`~fastnas.spaces.nb201_fast.CompiledNB201`), the compiled forward replaces both the fast
  copy and the module's recalibration: channels-last (and bf16 under ``precision="bf16"``) recalibration
  and eval, dead edges skipped, the stem's train-mode output cached across candidates
  (``report()["compiled"]`` and ``"stem_cache"``). Its results equal the module's to float rounding
  (``compiled=False`` keeps the generic route).

On CPU the first evaluator of a process lets glibc keep freed activations in its heap (see
:func:`keep_freed_memory`): measured on a KVM guest, page faults on freshly mapped activations were
about a quarter of scoring's CPU time.

Routes (``report()["route"]``, with the reason in ``report()["route_reason"]``): ``"extracted"`` (above),
``"supernet"`` (the supernet's own path perturbed in place: ``extract=False``, or the space gives no name
map), ``"batched"`` (the space's batched forward, :meth:`~fastnas.spaces.base.Supernet.batched_forward`,
over out-of-place perturbed copies) and ``"model"`` (a plain module). A route is chosen by what the model
declares, never by catching an exception.

Noise streams: the noise of level ``i``, sample ``s`` uses ``stream = s * 65536 + i`` with the given seed
(``"shared"``: ``stream = s * 65536`` for every level). Streams depend on nothing else, so two candidates
sharing an edge see the same noise on it (common random numbers).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import numbers
import pickle
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fastnas.metrics.combine import check_sigmas
from fastnas.metrics.fastcopy import foldable_copy, refresh_folds
from fastnas.ops.layout import ParamLayout, ParamSlice
from fastnas.ops.perturb import Backup, perturb_, restore_
from fastnas.ops.reduce import loss_correct_
from fastnas.spaces.base import BatchedForward, recalibrate_bn
from fastnas._hints import did_you_mean

__all__ = [
    "MultiSigmaEvaluator", "EvalResult", "NOISE_MODES", "PRECISIONS", "SCOPES", "BN_MODES", "noise_stream",
    "calibration_batches", "check_sigmas", "check_choice", "keep_freed_memory",
]

logger = logging.getLogger(__name__)

NOISE_MODES = ("independent", "cumulative", "shared")
PRECISIONS = ("fp32", "bf16")
SCOPES = ("path", "cells")
BN_MODES = ("exact", "momentum")
STREAM_STRIDE = 1 << 16  # streams of sample s start at s * STREAM_STRIDE; levels must be fewer


# ---- argument checks (shared with flatness.py and scores.py) -------------------------------------

_WARNED: set = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def _entry_name(entry: Any) -> str:
    """The parameter name of a path entry: the name itself, or a slice's ``.name``."""
    return entry if isinstance(entry, str) else entry.name


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else ``ValueError`` naming the argument with close matches."""
    if isinstance(value, str) and value in choices:
        return value
    hint = did_you_mean(str(value), list(choices), n=2, joiner=" or ")
    raise ValueError(f"{name}={value!r}: expected one of {list(choices)}{hint}")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}={value!r}: expected an integer >= {minimum}")
    return int(value)


def noise_stream(level: int, sample: int, noise: str = "independent") -> int:
    """The Philox stream of ``(level, sample)``; see the module docstring."""
    if noise == "shared":
        return sample * STREAM_STRIDE
    return sample * STREAM_STRIDE + level


# ---- results -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalResult:
    """Losses and accuracies of one candidate at every (level, sample).

    Attributes:
        sigmas: the noise levels.
        losses: ``losses[i][s]``: mean loss over the validation samples at level ``i``, sample ``s``.
        accuracies: ``accuracies[i][s]``: top-1 fraction at level ``i``, sample ``s``.
        n: validation samples.
        clean_loss, clean_accuracy: unperturbed loss and top-1 (``None`` unless asked for).
        nfrs: ``nfrs[i][s]``: negative flip rate against the reference at level ``i``, sample ``s``
            (empty unless a reference is set: :meth:`MultiSigmaEvaluator.set_reference`).
        clean_nfr: the unperturbed negative flip rate (``None`` unless asked for with a reference set).
    """

    sigmas: Tuple[float, ...]
    losses: Tuple[Tuple[float, ...], ...]
    accuracies: Tuple[Tuple[float, ...], ...]
    n: int
    clean_loss: Optional[float] = None
    clean_accuracy: Optional[float] = None
    nfrs: Tuple[Tuple[float, ...], ...] = ()
    clean_nfr: Optional[float] = None

    @property
    def mean_losses(self) -> Tuple[float, ...]:
        """Loss per level, averaged over samples."""
        return tuple(sum(row) / len(row) for row in self.losses)

    @property
    def mean_accuracies(self) -> Tuple[float, ...]:
        return tuple(sum(row) / len(row) for row in self.accuracies)

    @property
    def finite(self) -> bool:
        vals = [v for row in self.losses for v in row]
        if self.clean_loss is not None:
            vals.append(self.clean_loss)
        return all(math.isfinite(v) for v in vals)


# ---- data staging ----------------------------------------------------------------------------------

def calibration_batches(x: torch.Tensor, n_batches: int, batch_size: int, seed: int = 0) -> List[torch.Tensor]:
    """``n_batches`` batches of ``batch_size`` images drawn deterministically from ``x``.

    Indices come from seeded random permutations of ``range(len(x))`` (a new permutation when one is
    used up), so every candidate is recalibrated on the same images.
    """
    from fastnas.data import Batches  # the one batcher (its recalibration mode draws exactly this stream)

    if int(x.shape[0]) == 0 or n_batches == 0:
        return []
    return [xb for xb, _ in Batches(x, None, batch_size, order_seed=int(seed), num_batches=n_batches)]


def _bn_buffers(module: nn.Module) -> List[torch.Tensor]:
    out = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            out += [b for b in m.buffers(recurse=False) if b is not None]
    return out


@contextlib.contextmanager
def _preserved(module: nn.Module, buffers: bool):
    """Restores every submodule's train/eval flag (and, if ``buffers``, the BatchNorm buffers) on exit."""
    modes = [(m, m.training) for m in module.modules()]
    saved = [(b, b.detach().clone()) for b in _bn_buffers(module)] if buffers else []
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)
        for m, t in modes:
            m.training = t


_HEAP_KEPT = False


def keep_freed_memory() -> bool:
    """Makes glibc keep freed activation-sized blocks in its heap, once per process; ``True`` when done.

    glibc serves a block above its mmap threshold (128 KiB at start) with a fresh ``mmap``, and every page
    of it faults on first touch; each free returns it to the system. Freeing one mmapped block raises
    the threshold to that block's size (glibc's dynamic threshold, at most 32 MiB on 64-bit, and the heap
    trim threshold to twice that), after which activations up to 32 MiB are recycled from the heap. This
    allocates and frees one 32 MiB tensor to trigger it: the same state any process reaches after it
    frees such a tensor. Other allocators (jemalloc, tcmalloc, macOS, Windows) are unaffected.
    """
    global _HEAP_KEPT
    if not _HEAP_KEPT:
        _HEAP_KEPT = True
        torch.empty((32 << 20) - (1 << 16), dtype=torch.uint8)  # allocated and freed at once
    return _HEAP_KEPT


def _default_batch_size(device: torch.device, n: int, precision: str) -> int:
    # Measured on a 2-core AVX-512 CPU (a C=16 cell supernet, 32x32, channels-last): fp32 fastest at 64 (activations
    # stay in cache), bf16 at 128; on a GPU the whole set (up to 2048) fills the device better.
    if device.type == "cpu":
        return max(1, min(n, 64 if precision == "fp32" else 128))
    return max(1, min(n, 2048))


def _loss_sum_fn(criterion: Optional[Callable]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(logits, y) -> sum of per-sample losses`` (a 0-dim tensor)."""
    if criterion is None:
        return lambda logits, y: F.cross_entropy(logits.float(), y, reduction="sum")
    reduction = getattr(criterion, "reduction", "mean")

    def fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = criterion(logits.float(), y)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(out, dtype=torch.float32, device=logits.device)
        if out.dim() > 0:
            return out.float().sum()
        return out.float() if reduction == "sum" else out.float() * y.shape[0]

    return fn


# ---- the prepared candidate ----------------------------------------------------------------------

@dataclass
class _Prepared:
    targets: List[Tuple[str, torch.Tensor]]      # (layout name, tensor) perturbed in place
    forward: Callable[[torch.Tensor], torch.Tensor]
    refresh: Callable[[], None] = lambda: None
    folded: int = 0
    channels_last: bool = False
    path: str = "model"
    reason: str = ""
    compiled: bool = False
    cleanup: List[Any] = field(default_factory=list)


class MultiSigmaEvaluator:
    """Losses of a model (or a supernet candidate) at several Gaussian weight perturbations.

    Args:
        model: a :class:`~fastnas.spaces.base.Supernet` (call :meth:`evaluate` with an architecture) or any
            ``nn.Module`` mapping a batch ``x`` to logits (call :meth:`evaluate` without one).
        valid_x, valid_y: validation images ``(N, ...)`` and int64 labels ``(N,)``; staged on the device
            once.
        sigmas: noise levels, positive and strictly increasing (may be empty: clean evaluation only).
        samples: noise samples per level, averaged.
        noise: ``"independent"`` (fresh ``N(0, sigma_i^2)`` around the weights at each level),
            ``"cumulative"`` (the reference code: increments of std ``sigma_i - sigma_(i-1)`` added on top of
            each other, one restore at the end; the effective std at level ``i`` is
            ``sqrt(sum of squared increments)``) or ``"shared"`` (one direction ``z`` per sample, scaled by
            each sigma).
        seed: noise seed, an integer in ``[0, 2**32)``.
        precision: ``"fp32"``, or ``"bf16"`` (forward under ``torch.autocast(dtype=torch.bfloat16)``,
            losses accumulated in fp32/fp64).
        batch_size: validation batch size (``None``: on CPU 64 for fp32, 128 for bf16; on a GPU the whole
            set up to 2048).
        device: where to evaluate (default: the model's device).
        channels_last: run the fast copy in channels-last format (``None``: when the model has 4-D
            convolution weights).
        fold_bn: fold Conv2d + BatchNorm2d pairs of the fast copy.
        calib_x: images for BatchNorm recalibration (the supernet-train split); ``None``: ``valid_x``.
        bn_batches: recalibration batches per candidate (``0``: keep the running statistics).
        bn_batch_size: images per recalibration batch.
        bn_mode: ``"exact"`` or ``"momentum"`` (see :func:`~fastnas.spaces.base.recalibrate_bn`).
        bn_seed: seeds the choice of recalibration images.
        scope: ``"path"`` (every parameter of the candidate) or ``"cells"`` (only parameters inside the
            searched cells: the modules under the supernet's ``searched_prefixes()``, e.g. NB201's search
            cells without the residual blocks; a ``ValueError`` when it names none).
        criterion: ``criterion(logits, y)``, a batch mean (or ``reduction="sum"``); default cross-entropy.
        params: for a plain model, the parameters to perturb: names or tensors of ``model`` (default all).
        extract: run a supernet candidate as ``supernet.extract(arch, return_map=True)`` (with
            ``False``, or when the supernet's ``extract`` gives no name map, the supernet path itself runs,
            perturbed in place; the report says why). A name map that does not match the path is an error.
        batched: for a supernet with a batched forward (``supernet.batched_forward()``, e.g. NB201's
            mixed-op forward :mod:`fastnas.spaces.nb201_batched`) and ``independent`` or ``shared`` noise,
            evaluate all (level, sample) weight sets in one pass over out-of-place
            :func:`~fastnas.ops.perturb.perturbed_copies`. ``"auto"``: on a GPU when the batched forward
            measures itself faster (``choose``); never on CPU, where the benchmark measured it slower
            (``benchmarks/bench_supernet.py``). ``True`` forces it (a ``ValueError`` when it cannot be
            used), ``False`` never uses it.
        compiled: run extracted candidates through the space's compiled forward
            (``supernet.batched_forward().compile``, e.g. :class:`~fastnas.spaces.nb201_fast.CompiledNB201`)
            for recalibration and eval. ``"auto"``: when the space has one, ``fold_bn`` is on and the
            candidate is supported (else the report says why not); ``True``: required (a ``ValueError``
            when the space has none or a candidate is not supported); ``False``: never.
    """

    def __init__(self, model: nn.Module, valid_x: torch.Tensor, valid_y: torch.Tensor, *,
                 sigmas: Sequence[float] = (), samples: int = 1, noise: str = "independent", seed: int = 0,
                 precision: str = "fp32", batch_size: Optional[int] = None, device=None,
                 channels_last: Optional[bool] = None, fold_bn: bool = True,
                 calib_x: Optional[torch.Tensor] = None, bn_batches: int = 0, bn_batch_size: int = 64,
                 bn_mode: str = "exact", bn_seed: int = 0, scope: str = "path",
                 criterion: Optional[Callable] = None, params: Optional[Iterable] = None,
                 extract: bool = True, batched: Any = "auto", compiled: Any = "auto") -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model: expected an nn.Module, got {type(model).__name__}")
        self.model = model
        self.is_supernet = hasattr(model, "path_parameters") and hasattr(model, "space")
        self.sigmas = check_sigmas(sigmas) if len(tuple(sigmas)) else ()
        self.samples = _check_int("samples", samples, 1)
        if self.samples > STREAM_STRIDE or len(self.sigmas) >= STREAM_STRIDE:
            raise ValueError(f"samples={samples}, {len(self.sigmas)} sigmas: expected fewer than {STREAM_STRIDE}")
        self.noise = check_choice("noise", noise, NOISE_MODES)
        self.seed = _check_int("seed", seed, 0)
        if self.seed >= 2 ** 32:
            raise ValueError(f"seed={seed}: expected an integer in [0, 2**32)")
        self.precision = check_choice("precision", precision, PRECISIONS)
        self.scope = check_choice("scope", scope, SCOPES)
        self.bn_mode = check_choice("bn_mode", bn_mode, BN_MODES)
        self.bn_batches = _check_int("bn_batches", bn_batches, 0)
        self.bn_batch_size = _check_int("bn_batch_size", bn_batch_size, 1)
        self.fold_bn = bool(fold_bn)
        self.use_extract = bool(extract)
        if batched not in ("auto", True, False):
            raise ValueError(f"batched={batched!r}: expected 'auto', True or False")
        if compiled not in ("auto", True, False):
            raise ValueError(f"compiled={compiled!r}: expected 'auto', True or False")
        self.batched = batched
        self.compiled = compiled
        make = getattr(model, "batched_forward", None) if self.is_supernet else None
        space_forward = make() if callable(make) and (batched is not False or compiled is not False) else None
        self._batched_forward = space_forward if batched is not False else None
        compile_fn = getattr(space_forward, "compile", None) if compiled is not False else None
        declared = callable(compile_fn) and getattr(type(space_forward), "compile", None) is not BatchedForward.compile
        self._compile = compile_fn if declared else None  # the protocol's default compiles nothing
        self._space_forward = space_forward
        if compiled is True and self._compile is None:
            raise ValueError(f"compiled=True: {type(model).__name__} has no compiled forward (batched_forward() "
                             "is None or has no compile()); expected compiled='auto' or False")
        if batched is True:
            if self._batched_forward is None:
                raise ValueError(f"batched=True: {type(model).__name__} has no batched forward "
                                 "(batched_forward() is None); expected batched='auto' or False")
            if self.noise == "cumulative":
                raise ValueError("batched=True: noise='cumulative' perturbs in steps on top of each other, which "
                                 "the batched route cannot; expected noise='independent' or 'shared'")
        self.criterion = criterion
        self._loss_sum = _loss_sum_fn(criterion)

        first = next(model.parameters(), None)
        self.device = torch.device(device) if device is not None else (
            first.device if first is not None else torch.device("cpu"))
        if self.device.type == "cpu":
            keep_freed_memory()
        if not isinstance(valid_x, torch.Tensor) or not isinstance(valid_y, torch.Tensor):
            raise ValueError("valid_x, valid_y: expected tensors (images (N, ...) and labels (N,))")
        if valid_x.shape[0] != valid_y.shape[0] or valid_x.shape[0] == 0:
            raise ValueError(f"valid_x has {valid_x.shape[0]} rows and valid_y {valid_y.shape[0]}: expected the "
                             "same number, at least 1")
        n = int(valid_x.shape[0])
        self.n = n
        if batch_size is None:
            batch_size = _default_batch_size(self.device, n, self.precision)
        self.batch_size = _check_int("batch_size", batch_size, 1)
        has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
        self.channels_last = bool(has_conv and valid_x.dim() == 4) if channels_last is None else bool(channels_last)
        if self.channels_last and valid_x.dim() != 4:
            raise ValueError(f"channels_last=True needs 4-D images; valid_x has shape {tuple(valid_x.shape)}")

        x = valid_x.to(self.device, torch.float32 if valid_x.is_floating_point() else valid_x.dtype)
        self._x_plain = x.contiguous()
        self._x_fast = x.contiguous(memory_format=torch.channels_last) if self.channels_last else self._x_plain
        self._y = valid_y.to(self.device, torch.long)
        self._labels_checked = False  # the label range is checked by the first reduction only (one sync)
        self._ref_correct: Optional[torch.Tensor] = None  # (n,) bool: samples the reference gets right
        self._flips: Optional[torch.Tensor] = None  # (slots,) int64 during one evaluation with a reference
        calib = valid_x if calib_x is None else calib_x
        self._calib = [b.to(self.device, torch.float32).contiguous()
                       for b in calibration_batches(calib, self.bn_batches, self.bn_batch_size, bn_seed)]

        self.layout = ParamLayout.from_module(model)
        self._named = dict(model.named_parameters())
        self._subset = self._resolve_params(params) if params is not None else None
        self._cell_prefixes = self._searched_prefixes() if self.scope == "cells" else ()
        self._backup: Optional[Backup] = None
        self._scratch: Optional[Backup] = None
        self._last: Dict[str, Any] = {}
        self.evaluations = 0
        self.recal_seconds = 0.0  # wall time spent in BatchNorm recalibration, all evaluations

    # ---- setup helpers

    def _recalibrate(self, run: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        try:
            run()
        finally:
            self.recal_seconds += time.perf_counter() - t0

    def _resolve_params(self, params: Iterable) -> List[str]:
        by_id = {id(t): n for n, t in self._named.items()}
        out = []
        for k, p in enumerate(params):
            if isinstance(p, str):
                self.layout.offset(p)  # ValueError with close matches
                out.append(p)
            elif isinstance(p, torch.Tensor) and id(p) in by_id:
                out.append(by_id[id(p)])
            elif isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str):
                self.layout.offset(p[0])
                out.append(p[0])
            else:
                raise ValueError(f"params[{k}]: expected a parameter name or a parameter tensor of the model, "
                                 f"got {type(p).__name__}")
        return out

    def _searched_prefixes(self) -> Tuple[str, ...]:
        """The supernet's ``searched_prefixes()`` (``scope="cells"``); a ``ValueError`` when there are none."""
        get = getattr(self.model, "searched_prefixes", None) if self.is_supernet else None
        prefixes = tuple(get()) if callable(get) else ()
        if not prefixes:
            raise ValueError(f"scope='cells': {type(self.model).__name__} names no searched cells "
                             "(searched_prefixes() is empty or missing); expected scope='path'")
        return prefixes

    def _in_scope(self, entry: Any) -> bool:
        return self.scope == "path" or _entry_name(entry).startswith(self._cell_prefixes)

    def _targets(self, entries: Iterable[Any]) -> List[Tuple[Any, torch.Tensor]]:
        """The perturbation targets of supernet path entries in scope: ``(name, tensor)`` for a whole
        parameter, ``(slice, full tensor)`` for a slice (as ``fastnas.ops.path_params`` makes them)."""
        return [(e, self._named[_entry_name(e)]) for e in entries if self._in_scope(e)]

    def _extract_route(self, arch: Any) -> Tuple[Optional[nn.Module], Optional[Dict[str, str]], str]:
        """``(net, name_map, reason)``: the extracted module and its checked name map, or ``None``s and why
        the supernet path runs instead."""
        model = self.model
        if not self.use_extract:
            return None, None, "extract=False"
        extract = getattr(model, "extract", None)
        if not callable(extract):
            return None, None, f"{type(model).__name__} has no extract()"
        if "return_map" not in inspect.signature(extract).parameters:
            return None, None, (f"{type(model).__name__}.extract() gives no name map (no return_map argument), so "
                                "the extracted module cannot be perturbed with the supernet's noise layout")
        net, mapping = extract(arch, return_map=True)
        path = list(model.path_parameters(arch))
        self._check_map(arch, net, mapping, path)
        return net, mapping, "the extracted module's parameters map onto the supernet's (name map checked)"

    def _supernet_value(self, entry: Any) -> Optional[torch.Tensor]:
        """The supernet tensor (or the view of a slice) a name-map value names; ``None`` when it names none."""
        if isinstance(entry, ParamSlice):
            full = self._named.get(entry.name)
            if full is None:
                return None
            try:
                return entry.view(full)
            except ValueError:  # the box does not fit the tensor
                return None
        return self._named.get(entry) if isinstance(entry, str) else None

    def _check_map(self, arch: Any, net: nn.Module, mapping: Dict[str, Any], path: List[Any]) -> None:
        """``ValueError`` unless ``mapping`` maps every parameter of ``net`` one-to-one onto the path's, with
        equal values: a wrong map would perturb with the wrong noise."""
        where = f"{type(self.model).__name__}.extract({arch!r}, return_map=True)"
        ext = dict(net.named_parameters())
        if set(mapping) != set(ext):
            missing = sorted(set(ext) - set(mapping))[:3]
            extra = sorted(set(mapping) - set(ext))[:3]
            raise ValueError(f"{where}: the name map's keys are not the module's parameters (unmapped: "
                             f"{missing}, unknown: {extra})")
        values = list(mapping.values())
        if len(set(values)) != len(values) or set(values) != set(path):
            raise ValueError(f"{where}: the name map does not map one-to-one onto path_parameters(arch) "
                             f"(outside the path: {sorted(map(str, set(values) - set(path)))[:3]}, path not "
                             f"covered: {sorted(map(str, set(path) - set(values)))[:3]})")
        with torch.no_grad():
            for en, sn in mapping.items():
                a, b = ext[en], self._supernet_value(sn)
                if b is None or a.shape != b.shape or not torch.equal(a, b):
                    raise ValueError(f"{where}: {en!r} maps to {sn!r}, whose values differ")

    def _build_fast(self, source: nn.Module) -> Tuple[Optional[nn.Module], Callable[[], None], int]:
        """The fast copy of ``source`` (folded, channels-last) and its refresh function."""
        if not (self.fold_bn or self.channels_last):
            return None, lambda: None, 0
        if self.fold_bn:
            fast, folds = foldable_copy(source)
        else:
            fast, folds = copy.deepcopy(source), []
        fast.eval()
        if self.channels_last:
            fast = fast.to(memory_format=torch.channels_last)
        folded_names = set()
        fast_mods = {id(f.fused) for f in folds}
        for mname, m in fast.named_modules():
            if id(m) in fast_mods:
                folded_names.update(f"{mname}.{p}" if mname else p for p, _ in m.named_parameters(recurse=False))
        src = dict(source.named_parameters())
        pairs = [(src[n], p) for n, p in fast.named_parameters() if n not in folded_names and n in src]

        def refresh() -> None:
            with torch.no_grad():
                for s, d in pairs:
                    d.copy_(s)
                refresh_folds(folds)

        return fast, refresh, len(folds)

    def _extracted_targets(self, net: nn.Module, mapping: Dict[str, Any]
                           ) -> Tuple[List[Tuple[Any, torch.Tensor]], List[Tuple[torch.Tensor, torch.Tensor]]]:
        """``(targets, copies)`` of an extracted module: a whole-tensor entry perturbs the module's
        parameter in place; a slice's noise is keyed by its index in the full supernet tensor, so it is
        perturbed in a private copy of that tensor (one per name, never the supernet's) and ``copies``
        holds ``(box view of the copy, module parameter)`` pairs to copy after each change."""
        ext = dict(net.named_parameters())
        targets: List[Tuple[Any, torch.Tensor]] = []
        copies: List[Tuple[torch.Tensor, torch.Tensor]] = []
        shadows: Dict[str, torch.Tensor] = {}
        for en, sn in mapping.items():
            if not self._in_scope(sn):
                continue
            if isinstance(sn, ParamSlice):
                full = shadows.get(sn.name)
                if full is None:
                    full = shadows[sn.name] = self._named[sn.name].detach().clone()
                targets.append((sn, full))
                copies.append((sn.view(full), ext[en]))
            else:
                targets.append((sn, ext[en]))
        return targets, copies

    @staticmethod
    def _copy_then(copies: List[Tuple[torch.Tensor, torch.Tensor]], refresh: Callable[[], None]
                   ) -> Callable[[], None]:
        """A refresh that first copies each perturbed slice into the module's parameter."""

        def run() -> None:
            with torch.no_grad():
                for src, dst in copies:
                    dst.copy_(src)
            refresh()

        return run

    def _recalibrate_module(self, net: nn.Module) -> None:
        """``recalibrate_bn`` of an extracted module, in channels-last format when the evaluator runs in it
        (measured 2x faster for CPU convolutions; the parameters are converted back afterwards, in place,
        so the perturbation targets stay the same tensors)."""
        if not self.channels_last:
            recalibrate_bn(net, net, self._calib, mode=self.bn_mode)
            return
        net.to(memory_format=torch.channels_last)
        try:
            batches = [b.contiguous(memory_format=torch.channels_last) if b.dim() == 4 else b for b in self._calib]
            recalibrate_bn(net, net, batches, mode=self.bn_mode)
        finally:
            net.to(memory_format=torch.contiguous_format)

    def _compiled_program(self, net: nn.Module) -> Tuple[Optional[Any], str]:
        """``(program, "")``: the space's compiled forward of the extracted ``net``, or ``(None, why not)``."""
        if self._compile is None:
            return None, ("compiled=False" if self.compiled is False else
                          f"{type(self.model).__name__} has no compiled forward")
        if not self.fold_bn:
            if self.compiled is True:
                raise ValueError("compiled=True needs fold_bn=True (the compiled forward folds BatchNorm)")
            return None, "no compiled forward: fold_bn=False"
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        program, why = self._compile(net, dtype=dtype, channels_last=self.channels_last)
        if program is None:
            if self.compiled is True:
                raise ValueError(f"compiled=True: the compiled forward cannot run this candidate: {why}")
            _warn_once(f"{type(self.model).__name__}: the generic fast copy runs instead of the compiled "
                       f"forward: {why}")
            return None, f"no compiled forward: {why}"
        return program, ""

    def _prepare(self, arch: Any, stack: contextlib.ExitStack, reason: str = "") -> _Prepared:
        model = self.model
        if self.is_supernet:
            if arch is None:
                raise ValueError("arch: this model is a supernet; pass the architecture to evaluate")
            net, mapping, why = self._extract_route(arch)
            why = f"{reason}; {why}" if reason else why
            if mapping is not None:
                net.eval()
                program, why_not = self._compiled_program(net)
                if program is not None:
                    if self._calib:
                        self._recalibrate(lambda: program.recalibrate(self._calib, mode=self.bn_mode))
                    targets, copies = self._extracted_targets(net, mapping)
                    refresh = self._copy_then(copies, program.refresh) if copies else program.refresh
                    return _Prepared(targets, program, refresh, program.folded(), self.channels_last, "extracted",
                                     f"{why}; compiled forward ({type(program).__name__})", compiled=True)
                why = f"{why}; {why_not}"
                if self._calib:
                    self._recalibrate(lambda: self._recalibrate_module(net))
                targets, copies = self._extracted_targets(net, mapping)
                fast, refresh, folded = self._build_fast(net)
                if copies:
                    refresh = self._copy_then(copies, refresh)
                runner = fast if fast is not None else net
                return _Prepared(targets, runner, refresh, folded, fast is not None and self.channels_last,
                                 "extracted", why)
            if self.use_extract:
                _warn_once(f"{type(model).__name__}: the supernet path runs instead of the faster extracted "
                           f"module: {why}")
            # The supernet path itself, perturbed in place; its BatchNorm buffers are put back afterwards.
            stack.enter_context(_preserved(model, buffers=bool(self._calib)))
            if self._calib:
                self._recalibrate(lambda: model.recalibrate(arch, self._calib, mode=self.bn_mode))
            model.eval()
            return _Prepared(self._targets(model.path_parameters(arch)), lambda x: model(x, arch),
                             path="supernet", reason=why)
        if arch is not None:
            raise ValueError("arch: this model is not a supernet (it has no path_parameters); call evaluate()")
        stack.enter_context(_preserved(model, buffers=bool(self._calib)))
        if self._calib:
            self._recalibrate(lambda: recalibrate_bn(model, model, self._calib, mode=self.bn_mode))
        model.eval()
        names = self._subset if self._subset is not None else list(self._named)
        targets = [(n, self._named[n]) for n in names]
        why = "a plain module"
        try:
            fast, refresh, folded = self._build_fast(model)
        except (TypeError, RuntimeError, copy.Error, pickle.PickleError) as exc:  # a model deepcopy refuses
            why = f"a plain module, run as it is: no fast copy ({type(exc).__name__}: {exc})"
            _warn_once(f"{type(model).__name__}: {why}")
            fast, refresh, folded = None, lambda: None, 0
        runner = fast if fast is not None else model
        return _Prepared(targets, runner, refresh, folded, fast is not None and self.channels_last, "model", why)

    # ---- evaluation

    def _accumulate(self, logits: torch.Tensor, yb: torch.Tensor, acc: torch.Tensor, correct: torch.Tensor,
                    k: int, start: int = 0) -> None:
        """Adds the loss sum and correct count of ``logits`` ``(B, classes)`` or ``(K, B, classes)`` (slots
        ``k ..``; the batch begins at validation sample ``start``) on the device: the fused reduction kernel
        for the default cross-entropy, which also counts negative flips when a reference is set."""
        flips = self._flips
        ref = None if flips is None else self._ref_correct[start:start + yb.shape[0]]
        if self.criterion is None and logits.dim() in (2, 3):
            # The labels never change: check their range once, not with a host sync per batch.
            loss_correct_(logits, yb, acc, correct, slot=k, check_labels=not self._labels_checked,
                          ref_correct=ref, flips_acc=flips)
            self._labels_checked = True
            return
        for j, lg in enumerate(logits if logits.dim() == 3 else logits[None]):
            acc[k + j] += self._loss_sum(lg, yb).double()
            right = lg.argmax(1) == yb
            correct[k + j] += right.sum()
            if flips is not None:
                flips[k + j] += (ref & ~right).sum()

    def _pass(self, forward: Callable, x_all: torch.Tensor, acc: torch.Tensor, correct: torch.Tensor,
              k: int) -> None:
        """Adds the loss sum and correct count of one pass over the validation set into ``acc[k]``, ``correct[k]``."""
        bs = self.batch_size
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16"
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            for start in range(0, self.n, bs):
                xb = x_all[start:start + bs]
                yb = self._y[start:start + bs]
                self._accumulate(forward(xb), yb, acc, correct, k, start)

    def evaluate(self, arch: Any = None, *, clean: bool = False, perturbed: bool = True) -> EvalResult:
        """Losses at every (level, sample) (and, with ``clean``, unperturbed) of ``arch`` (or the model).

        The model's parameters are bit-identical afterwards, also when the forward pass or the criterion
        raises; a supernet's BatchNorm statistics are untouched.
        """
        levels = len(self.sigmas) if perturbed else 0
        runs = levels * self.samples
        slots = runs + (1 if clean else 0)
        reason = ""
        if runs and self.is_supernet:
            use, reason = self._use_batched(arch)
            if use:
                return self._evaluate_batched(arch, levels, clean, reason)
        with contextlib.ExitStack() as stack, torch.no_grad():
            prep = self._prepare(arch, stack, reason)
            x_all = self._x_fast if prep.channels_last else self._x_plain
            acc = torch.zeros(max(slots, 1), dtype=torch.float64, device=self.device)
            correct = torch.zeros(max(slots, 1), dtype=torch.int64, device=self.device)
            stack.enter_context(self._counting_flips(max(slots, 1)))
            prep.refresh()
            if clean:
                self._pass(prep.forward, x_all, acc, correct, runs)
            if runs:
                self._perturbed_passes(prep, x_all, acc, correct)
            sums, counts, flips = self._read(acc, correct)  # the one host sync
        self.evaluations += 1
        self._last = {"path": prep.path, "route_reason": prep.reason, "folded_bn": prep.folded,
                      "channels_last": prep.channels_last, "perturbed_tensors": len(prep.targets),
                      "compiled": prep.compiled}
        n = self.n
        losses = tuple(tuple(sums[i * self.samples + s] / n for s in range(self.samples)) for i in range(levels))
        accs = tuple(tuple(counts[i * self.samples + s] / n for s in range(self.samples)) for i in range(levels))
        return EvalResult(self.sigmas if perturbed else (), losses, accs, n,
                          sums[runs] / n if clean else None, counts[runs] / n if clean else None,
                          *self._nfrs(flips, levels, runs, clean))

    # ---- negative flips against a reference

    def set_reference(self, correct: Optional[torch.Tensor]) -> None:
        """Counts negative flips from now on: ``correct`` (bool ``(n,)``) marks the validation samples a
        reference model classifies correctly; each evaluation then reports, per slot, the fraction of
        samples the reference gets right and the candidate wrong (``EvalResult.nfrs``, ``clean_nfr``),
        counted in the same reduction as the loss. ``None`` stops counting."""
        if correct is None:
            self._ref_correct = None
            return
        if not isinstance(correct, torch.Tensor) or correct.dim() != 1 or correct.shape[0] != self.n:
            shape = tuple(correct.shape) if isinstance(correct, torch.Tensor) else type(correct).__name__
            raise ValueError(f"reference: expected a bool tensor of shape ({self.n},) (one entry per validation "
                             f"sample), got {shape}")
        if correct.dtype != torch.bool:
            raise ValueError(f"reference: expected dtype torch.bool, got {correct.dtype}")
        self._ref_correct = correct.to(self.device).contiguous()

    def predictions(self, arch: Any = None) -> torch.Tensor:
        """The predicted labels ``(n,)`` (int64, on the device) of the unperturbed ``arch`` (or the model)
        on the validation set, after the same BatchNorm recalibration as :meth:`evaluate`."""
        with contextlib.ExitStack() as stack, torch.no_grad():
            prep = self._prepare(arch, stack, "predictions of a reference")
            x_all = self._x_fast if prep.channels_last else self._x_plain
            prep.refresh()
            out = torch.empty(self.n, dtype=torch.long, device=self.device)
            autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16"
                        else contextlib.nullcontext())
            with torch.inference_mode(), autocast:
                for start in range(0, self.n, self.batch_size):
                    logits = prep.forward(x_all[start:start + self.batch_size])
                    out[start:start + logits.shape[0]] = logits.argmax(1)
        return out

    def reference_correct(self, arch: Any = None) -> torch.Tensor:
        """``predictions(arch) == labels``: the mask :meth:`set_reference` takes."""
        return self.predictions(arch) == self._y

    @property
    def labels(self) -> torch.Tensor:
        """The validation labels ``(n,)`` (int64, on the device)."""
        return self._y

    @contextlib.contextmanager
    def _counting_flips(self, slots: int) -> Iterator[None]:
        self._flips = (None if self._ref_correct is None
                       else torch.zeros(slots, dtype=torch.int64, device=self.device))
        try:
            yield
        finally:
            self._flips = None

    def _read(self, acc: torch.Tensor, correct: torch.Tensor) -> Tuple[list, list, Optional[list]]:
        if self._flips is None:
            return acc.tolist(), correct.tolist(), None
        both = torch.cat([correct, self._flips]).tolist()
        return acc.tolist(), both[:correct.shape[0]], both[correct.shape[0]:]

    def _nfrs(self, flips: Optional[list], levels: int, runs: int, clean: bool
              ) -> Tuple[Tuple[Tuple[float, ...], ...], Optional[float]]:
        if flips is None:
            return (), None
        n = self.n
        per = tuple(tuple(flips[i * self.samples + s] / n for s in range(self.samples)) for i in range(levels))
        return per, (flips[runs] / n if clean else None)

    # ---- batched route: K perturbed copies in one mixed-op pass

    def _use_batched(self, arch: Any) -> Tuple[bool, str]:
        """Whether the batched route runs ``arch``, and why (or why not)."""
        if self.batched is False:
            return False, "batched=False"
        if self._batched_forward is None:
            return False, "the supernet has no batched forward"
        if self.noise == "cumulative":
            return False, "noise='cumulative' cannot run batched"
        if self.batched is True:
            return True, "batched=True"
        if self.device.type == "cpu":
            return False, "batched='auto' never batches on CPU (measured slower there)"
        k = len(self.sigmas) * self.samples
        choice = self._batched_forward.choose(self._x_plain[:self.batch_size], [arch] * k)
        return choice == "batched", f"batched='auto': the batched forward measured {choice} faster on {self.device}"

    def _evaluate_batched(self, arch: Any, levels: int, clean: bool, reason: str) -> EvalResult:
        from fastnas.ops.perturb import perturbed_copies

        model = self.model
        runs = levels * self.samples
        with contextlib.ExitStack() as stack, torch.no_grad():
            stack.enter_context(_preserved(model, buffers=bool(self._calib)))
            if self._calib:
                self._recalibrate(lambda: model.recalibrate(arch, self._calib, mode=self.bn_mode))
            model.eval()
            names = [n for n, _ in self._targets(model.path_parameters(arch))]
            sigmas = [self.sigmas[i] for i in range(levels) for _ in range(self.samples)]
            streams = [noise_stream(i, s, self.noise) for i in range(levels) for s in range(self.samples)]
            weights: List[Dict[str, torch.Tensor]] = [{} for _ in range(runs + (1 if clean else 0))]
            if names:
                copies = perturbed_copies([(n, self._named[n]) for n in names], sigmas, self.seed, streams,
                                          layout=self.layout)
                for k in range(runs):
                    weights[k] = {n: c[k] for n, c in zip(names, copies)}
            batched = self._batched_forward
            plan = batched.prepare([arch] * len(weights), weights)
            acc = torch.zeros(len(weights), dtype=torch.float64, device=self.device)
            correct = torch.zeros(len(weights), dtype=torch.int64, device=self.device)
            stack.enter_context(self._counting_flips(len(weights)))
            autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision == "bf16"
                        else contextlib.nullcontext())
            with torch.inference_mode(), autocast:
                for start in range(0, self.n, self.batch_size):
                    xb, yb = self._x_plain[start:start + self.batch_size], self._y[start:start + self.batch_size]
                    self._accumulate(batched.forward(plan, xb), yb, acc, correct, 0, start)  # (K, B, classes)
            sums, counts, flips = self._read(acc, correct)  # the one host sync
        self.evaluations += 1
        self._last = {"path": "batched", "route_reason": reason, "folded_bn": 0, "channels_last": False,
                      "perturbed_tensors": len(names)}
        n = self.n
        losses = tuple(tuple(sums[i * self.samples + s] / n for s in range(self.samples)) for i in range(levels))
        accs = tuple(tuple(counts[i * self.samples + s] / n for s in range(self.samples)) for i in range(levels))
        return EvalResult(self.sigmas, losses, accs, n, sums[runs] / n if clean else None,
                          counts[runs] / n if clean else None, *self._nfrs(flips, levels, runs, clean))

    def _perturbed_passes(self, prep: _Prepared, x_all: torch.Tensor, acc: torch.Tensor,
                          correct: torch.Tensor) -> None:
        targets, layout, seed = prep.targets, self.layout, self.seed
        if not targets:  # nothing to perturb (e.g. scope="cells" on a path without cell weights)
            for i in range(len(self.sigmas)):
                for s in range(self.samples):
                    self._pass(prep.forward, x_all, acc, correct, i * self.samples + s)
            return
        if self.noise == "cumulative":
            for s in range(self.samples):
                first: Optional[Backup] = None
                try:
                    prev = 0.0
                    for i, sigma in enumerate(self.sigmas):
                        step = sigma - prev
                        prev = sigma
                        b = perturb_(targets, step, seed, noise_stream(i, s, self.noise), layout=layout,
                                     backup=self._backup if first is None else self._scratch)
                        if first is None:
                            first = self._backup = b
                        else:
                            self._scratch = b
                        prep.refresh()
                        self._pass(prep.forward, x_all, acc, correct, i * self.samples + s)
                finally:
                    if first is not None:
                        restore_(targets, first)
            prep.refresh()
            return
        for i, sigma in enumerate(self.sigmas):
            for s in range(self.samples):
                b = perturb_(targets, sigma, seed, noise_stream(i, s, self.noise), layout=layout,
                             backup=self._backup)
                self._backup = b
                try:
                    prep.refresh()
                    self._pass(prep.forward, x_all, acc, correct, i * self.samples + s)
                finally:
                    restore_(targets, b)
        prep.refresh()

    def report(self) -> Dict[str, Any]:
        """How the last evaluation ran: ``route`` (``"extracted"``, ``"supernet"``, ``"batched"`` or
        ``"model"``; also under its older name ``path``) and ``route_reason`` (why that route, including
        why a faster one was not taken), device, channels_last, folded_bn, precision, batch_size, ..."""
        return {"device": str(self.device), "precision": self.precision, "batch_size": self.batch_size,
                "channels_last": self._last.get("channels_last", self.channels_last),
                "folded_bn": self._last.get("folded_bn", 0), "route": self._last.get("path"),
                "route_reason": self._last.get("route_reason"), "path": self._last.get("path"),
                "perturbed_tensors": self._last.get("perturbed_tensors"), "noise": self.noise,
                "samples": self.samples, "sigmas": list(self.sigmas), "n": self.n,
                "bn_batches": self.bn_batches, "evaluations": self.evaluations,
                "recal_seconds": self.recal_seconds, "compiled": self._last.get("compiled", False),
                "stem_cache": self._stem_cache_stats()}

    def _stem_cache_stats(self) -> Optional[Dict[str, int]]:
        cache = getattr(self._space_forward, "stem_cache", None)
        return None if cache is None else {"hits": cache.hits, "misses": cache.misses}
