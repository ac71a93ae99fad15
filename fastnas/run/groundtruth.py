"""Ground truth on any dataset: train architectures from scratch and write a NAS-Bench-201-style table.

:func:`ground_truth` trains each architecture of a list (sampled from a space, or given) from scratch
with one recipe (:class:`Recipe`) on a seeded, stratified subset of the dataset's training set, measures
top-1 accuracy on a disjoint validation subset and on the test set, and appends one CSV row per finished
architecture (flushed and fsync'd), so a killed job loses at most the architectures in progress and a
rerun with the same settings continues. The table's columns (:data:`COLUMNS`)::

    arch,test_accuracy,valid_accuracy,params,flops,seconds,seed,epochs,train_images

Beside ``FILE.csv`` a sidecar ``FILE.json`` holds the settings (checked on resume) and the noise ceiling:
Kendall tau between validation and test accuracy of the same trained networks, the best tau against
test accuracy that a score can be expected to reach with this table. Several worker processes train
architectures in parallel (each with its own torch threads); results do not depend on the number of
workers (at equal threads per worker), because every architecture's seed is ``derive_seed(seed, "groundtruth", h)`` with ``h`` a hash of the architecture's text.
"""

from __future__ import annotations

import csv
import hashlib
import dataclasses
import io
import logging
import math
import multiprocessing as mp
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from fastnas.data import stratified_split
from fastnas.search.base import check_int
from fastnas.seeds import derive_seed

__all__ = ["Recipe", "COLUMNS", "ground_truth", "sample_archs", "read_arch_file", "read_table",
           "noise_ceiling", "cpu_has_bf16", "arch_seed_of", "GroundTruthResult"]

logger = logging.getLogger(__name__)

#: The table's columns, in order.
COLUMNS = ("arch", "test_accuracy", "valid_accuracy", "params", "flops", "seconds", "seed", "epochs",
           "train_images")
PRECISIONS = ("fp32", "bf16", "auto")
ProgressFn = Callable[[str, Dict[str, Any]], None]


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (``avx512_bf16`` or AMX-BF16), from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def arch_seed_of(seed: int, arch_text: str) -> int:
    """The training seed of one architecture of a table: ``derive_seed(seed, "groundtruth", h)``, ``h`` the
    first 60 bits of the SHA-256 of its text (independent of the order and number of architectures)."""
    h = int(hashlib.sha256(arch_text.encode("utf-8")).hexdigest()[:15], 16)
    return derive_seed(seed, "groundtruth", h)


def _check_float(name: str, value: Any, ok: Callable[[float], bool], expectation: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name}={value!r}: expected {expectation}")
    return float(value)


@dataclass(frozen=True)
class Recipe:
    """How every architecture of a table is trained from scratch and tested.

    Args:
        epochs: passes over the training subset.
        train_images: training images, a stratified subset of the dataset's training set (0: all of it
            except the validation images).
        valid_images: validation images, disjoint from the training subset (``>= 1``).
        test_images: test images, the first ones of the test set (0: all).
        batch_size, lr, lr_min, momentum, weight_decay, grad_clip: SGD with a cosine schedule.
        augment: crop-and-flip augmentation of the training batches.
        precision: ``fp32``, ``bf16`` (autocast; the CPU should have avx512_bf16 or AMX) or ``auto``
            (bf16 where the CPU has it). The resolved precision is what the table records.
    """

    epochs: int = 4
    train_images: int = 4000
    valid_images: int = 2000
    test_images: int = 0
    batch_size: int = 64
    lr: float = 0.05
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    augment: bool = False
    precision: str = "fp32"

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, 1)
        check_int("train_images", self.train_images, 0)
        check_int("valid_images", self.valid_images, 1)
        check_int("test_images", self.test_images, 0)
        check_int("batch_size", self.batch_size, 1)
        for name, ok, exp in (("lr", lambda v: v > 0, "a number > 0"),
                              ("lr_min", lambda v: 0 <= v <= self.lr, f"a number in [0, lr={self.lr!r}]"),
                              ("momentum", lambda v: v >= 0, "a number >= 0"),
                              ("weight_decay", lambda v: v >= 0, "a number >= 0"),
                              ("grad_clip", lambda v: v >= 0, "a number >= 0; 0 disables clipping")):
            object.__setattr__(self, name, _check_float(name, getattr(self, name), ok, exp))
        if not isinstance(self.augment, bool):
            raise ValueError(f"augment={self.augment!r}: expected True or False")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: expected one of {', '.join(PRECISIONS)}")

    def resolved(self) -> "Recipe":
        """This recipe with ``precision="auto"`` replaced by what this CPU supports."""
        if self.precision != "auto":
            return self
        return dataclasses.replace(self, precision="bf16" if cpu_has_bf16() else "fp32")


@dataclass
class GroundTruthResult:
    """What :func:`ground_truth` did: the table's path, rows trained now and before, the noise ceiling."""

    path: Path
    trained: int
    skipped: int
    total: int
    noise_ceiling: Dict[str, Any]
    seconds: float


# ---------------------------------------------------------------- architectures


def sample_archs(space: Any, n: int, seed: int = 0) -> List[Any]:
    """``n`` distinct architectures drawn by ``space.sample``, one per class of equivalent cells.

    Draws with ``random.Random(derive_seed(seed, "groundtruth-archs"))`` and keeps the first draw of
    each class (``space.canonical``), so the list is a function of ``(space, n, seed)``; a prefix of a
    longer list is the shorter list.

    Raises:
        ValueError: the space has fewer than ``n`` classes (after 200 * n draws).
    """
    check_int("n", n, 1)
    rng = random.Random(derive_seed(seed, "groundtruth-archs"))
    seen, out = set(), []
    for _ in range(200 * n):
        arch = space.canonical(space.sample(rng))
        key = space.format(arch)
        if key not in seen:
            seen.add(key)
            out.append(arch)
            if len(out) == n:
                return out
    raise ValueError(f"archs={n}: the space {getattr(space, 'name', space)!r} yielded only {len(out)} distinct "
                     f"architectures in {200 * n} draws; ask for fewer")


def read_arch_file(space: Any, path: os.PathLike) -> List[Any]:
    """Architectures listed in ``path``: a CSV with an ``arch``-like column, or one text per line.

    Every text is parsed (and checked) before any training; repeats are dropped (first kept).

    Raises:
        ValueError: the file is empty or a text is not an architecture of ``space`` (names the line).
    """
    try:
        return _read_arch_file(space, path)
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"--arch-file {os.fspath(path)!r} is not a readable text or CSV file ({e})") from None


def _read_arch_file(space: Any, path: os.PathLike) -> List[Any]:
    text = Path(path).read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines()]
    if not any(ln.strip() for ln in lines):
        raise ValueError(f"--arch-file {os.fspath(path)!r} is empty: expected one architecture per line or a CSV "
                         "with an arch column")
    first = lines[0].strip()
    entries: List[Tuple[int, str]]
    if "," in first and not first.startswith("|"):
        from fastnas.metrics.rank import ARCH_COLUMNS, pick_column

        reader = csv.DictReader(io.StringIO(text))
        col = pick_column(reader.fieldnames or [], None, ARCH_COLUMNS, "arch", "arch_column", path)
        entries = [(i, (row.get(col) or "").strip()) for i, row in enumerate(reader, start=2)]
    else:
        entries = [(i, ln.strip()) for i, ln in enumerate(lines, start=1)]
    seen, out = set(), []
    for line, t in entries:
        if not t or t.startswith("#"):
            continue
        try:
            arch = space.parse(t)
        except ValueError as e:
            raise ValueError(f"--arch-file {os.fspath(path)}:{line}: {t!r} is not an architecture of the space "
                             f"{getattr(space, 'name', space)!r}: {e}") from None
        key = space.format(arch)
        if key not in seen:
            seen.add(key)
            out.append(arch)
    if not out:
        raise ValueError(f"--arch-file {os.fspath(path)!r} lists no architecture")
    return out


# ---------------------------------------------------------------- the table


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def read_table(path: os.PathLike, *, repair: bool = False) -> List[Dict[str, Any]]:
    """The rows of a ground-truth table, typed (``arch`` str, accuracies/flops/seconds float, the rest int).

    A last line without its newline is what a kill during a write leaves: with ``repair=True`` it is cut
    off the file (that architecture is trained again), else it is an error like any malformed row.

    Raises:
        ValueError: the file has no header, other columns than :data:`COLUMNS`, or a malformed cell
            (names the line).
    """
    p = Path(path)
    data = p.read_bytes()
    if data and not data.endswith(b"\n"):
        if not repair:
            raise ValueError(f"{str(p)!r}: the last line is incomplete (a killed write?); rerun the command to "
                             "repair it")
        cut = data.rfind(b"\n") + 1
        with open(p, "r+b") as fh:
            fh.truncate(cut)
        logger.warning("%s: dropped an incomplete last line (a killed write)", p)
        data = data[:cut]
    try:
        text = data.decode("utf-8")
        if not text.strip():
            raise ValueError(f"{str(p)!r} is empty: expected the header {','.join(COLUMNS)}")
        return _table_rows(p, text)
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{str(p)!r} is not a readable CSV file ({e}); not a table of fastnas groundtruth") from None


def _table_rows(p: Path, text: str) -> List[Dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        raise ValueError(f"{str(p)!r}: expected the columns {','.join(COLUMNS)}, found "
                         f"{','.join(reader.fieldnames or [])}; not a table of fastnas groundtruth")
    rows = []
    floats = {"test_accuracy", "valid_accuracy", "flops", "seconds"}
    for line, row in enumerate(reader, start=2):
        try:
            typed = {k: (row[k] if k == "arch" else float(row[k]) if k in floats else int(row[k])) for k in COLUMNS}
        except (TypeError, ValueError):
            raise ValueError(f"{p}:{line}: malformed row {row!r}") from None
        rows.append(typed)
    return rows


def _format_row(row: Dict[str, Any]) -> str:
    buf = io.StringIO()
    cells = [row["arch"], f"{row['test_accuracy']:.6f}", f"{row['valid_accuracy']:.6f}", str(row["params"]),
             f"{row['flops']:.6g}", f"{row['seconds']:.2f}", str(row["seed"]), str(row["epochs"]),
             str(row["train_images"])]
    csv.writer(buf, lineterminator="\n").writerow(cells)
    return buf.getvalue()


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def noise_ceiling(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Kendall tau and Spearman rho between validation and test accuracy over ``rows``."""
    from fastnas.metrics.rank import kendall_tau, spearman

    v = [r["valid_accuracy"] for r in rows]
    t = [r["test_accuracy"] for r in rows]
    n = len(rows)
    if n < 2:
        return {"tau_valid_test": float("nan"), "spearman_valid_test": float("nan"), "n": n}
    return {"tau_valid_test": kendall_tau(v, t), "spearman_valid_test": spearman(v, t), "n": n}


# ---------------------------------------------------------------- training one architecture


def _splits(dataset: Any, recipe: Recipe, seed: int) -> Tuple[Any, Any, Any]:
    """Index tensors (train, valid, test) of the dataset for the recipe: seeded, stratified, disjoint."""
    n = int(dataset.train_y.shape[0])
    if recipe.valid_images >= n:
        raise ValueError(f"valid_images={recipe.valid_images}: the dataset {dataset.name!r} has only {n} training "
                         "images; leave some to train on")
    rest, valid = stratified_split(dataset.train_y.numpy(), recipe.valid_images / n,
                                   derive_seed(seed, "groundtruth-valid"), size=recipe.valid_images)
    if recipe.train_images:
        if recipe.train_images > len(rest):
            raise ValueError(f"train_images={recipe.train_images}: only {len(rest)} training images are left "
                             f"besides the {len(valid)} validation images")
        y_rest = dataset.train_y.numpy()[rest]
        if recipe.train_images == len(rest):
            pick = np.arange(len(rest))
        else:
            _, pick = stratified_split(y_rest, recipe.train_images / len(rest), derive_seed(seed, "groundtruth-train"),
                                       size=recipe.train_images)
        rest = rest[pick]
    m = int(dataset.test_y.shape[0])
    test = range(m) if not recipe.test_images else range(min(recipe.test_images, m))
    return torch.as_tensor(sorted(rest)), torch.as_tensor(sorted(valid)), torch.as_tensor(list(test))


def _train_one(space: Any, arch_text: str, dataset: Any, idx: Tuple[Any, Any, Any], recipe: Recipe,
               seed: int, threads: int) -> Dict[str, Any]:
    from fastnas.run.retrain import retrain

    if threads > 0:
        torch.set_num_threads(threads)
    arch = space.parse(arch_text)
    arch_seed = arch_seed_of(seed, arch_text)
    tr, va, te = idx
    t0 = time.perf_counter()
    bf16 = recipe.precision == "bf16"
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = retrain(space, arch, (dataset.train_x[tr], dataset.train_y[tr]),
                      (dataset.test_x[te], dataset.test_y[te]), epochs=recipe.epochs, batch_size=recipe.batch_size,
                      lr=recipe.lr, lr_min=recipe.lr_min, momentum=recipe.momentum,
                      weight_decay=recipe.weight_decay, grad_clip=recipe.grad_clip, augment=recipe.augment,
                      fill=dataset.pad_fill, seed=arch_seed,
                      valid=(dataset.train_x[va], dataset.train_y[va]))
    return {"arch": arch_text, "test_accuracy": float(out["test_accuracy"]), "valid_accuracy": float(out["valid_accuracy"]),
            "params": int(out["params"]), "flops": float(space.flops(arch)),  # the retrained build(arch)
            "seconds": time.perf_counter() - t0, "seed": arch_seed, "epochs": recipe.epochs,
            "train_images": int(tr.numel())}


_WORKER: Dict[str, Any] = {}


def _worker_init(space: Any, dataset: Any, idx: Any, recipe: Recipe, seed: int, threads: int) -> None:
    _WORKER.update(space=space, dataset=dataset, idx=idx, recipe=recipe, seed=seed, threads=threads)


def _worker_run(arch_text: str) -> Dict[str, Any]:
    w = _WORKER
    return _train_one(w["space"], arch_text, w["dataset"], w["idx"], w["recipe"], w["seed"], w["threads"])


# ---------------------------------------------------------------- the job


def _settings(space: Any, dataset: Any, recipe: Recipe, seed: int) -> Dict[str, Any]:
    return {"format": "fastnas-groundtruth-1", "space": getattr(space, "name", type(space).__name__),
            "space_config": space.config() if hasattr(space, "config") else {}, "data": dataset.name,
            "data_shape": list(dataset.image_shape), "num_classes": dataset.num_classes,
            "recipe": dataclasses.asdict(recipe), "seed": seed}


def ground_truth(space: Any, dataset: Any, archs: Iterable[Any], path: os.PathLike, *,
                 recipe: Optional[Recipe] = None, seed: int = 0, workers: int = 1, threads: int = 1,
                 progress: Optional[ProgressFn] = None) -> GroundTruthResult:
    """Trains every architecture of ``archs`` from scratch and appends its row to the table ``path``.

    Args:
        space: the space of the architectures (built with the dataset's shape).
        dataset: a :class:`fastnas.data.Dataset`.
        archs: architectures of ``space``; repeats are trained once.
        path: the CSV table (created with its header; an existing one of the same settings is continued:
            its architectures are skipped).
        recipe: how to train (default :class:`Recipe`); ``precision="auto"`` is resolved first.
        seed: the table's seed: the data subsets and every architecture's seed derive from it.
        workers: processes training in parallel (``1``: in this process).
        threads: torch threads per worker (``0``: this process's count divided among the workers). A
            table reproduces bit for bit with the same threads per worker, whatever the number of workers.
        progress: ``progress(event, info)`` with ``"start"`` (``total``, ``done``), ``"arch"`` (``row``,
            ``done``, ``total``) and ``"end"`` (the result).

    Raises:
        ValueError: bad arguments, or an existing table (or its sidecar) of other settings.
    """
    from fastnas.run.rundir import read_json, write_json_atomic

    recipe = (recipe or Recipe()).resolved()
    check_int("workers", workers, 1)
    check_int("threads", threads, 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed={seed!r}: expected an integer")
    path = Path(path)
    if path.suffix != ".csv":
        raise ValueError(f"--out {str(path)!r}: expected a file name ending in .csv")
    if not path.parent.is_dir():
        raise ValueError(f"--out {str(path)!r}: directory {str(path.parent)!r} does not exist")
    texts: List[str] = []
    for arch in archs:
        t = space.format(space.validate(arch))
        if t not in texts:
            texts.append(t)
    if not texts:
        raise ValueError("archs: expected at least one architecture")
    idx = _splits(dataset, recipe, seed)
    settings = _settings(space, dataset, recipe, seed)
    side = _sidecar(path)
    done_rows: List[Dict[str, Any]] = []
    if path.exists():
        if not side.exists():
            raise ValueError(f"--out {str(path)!r} exists but has no {side.name} beside it: not a table of fastnas "
                             "groundtruth (or its sidecar was deleted); choose another --out")
        old = read_json(side, "ground-truth settings")
        if old.get("settings") != settings:
            diff = sorted(k for k in set(settings) | set(old.get("settings", {}))
                          if settings.get(k) != old.get("settings", {}).get(k))
            raise ValueError(f"--out {str(path)!r} was made with other settings (differ: {', '.join(diff)}); use "
                             "another --out or the same settings to continue it")
        done_rows = read_table(path, repair=True)
    else:
        with open(path, "w", encoding="utf-8") as fh:  # header first, then the sidecar
            fh.write(",".join(COLUMNS) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    done = {r["arch"] for r in done_rows}
    todo = [t for t in texts if t not in done]
    skipped = len(texts) - len(todo)
    rows = list(done_rows)

    def write_sidecar() -> Dict[str, Any]:
        ceiling = noise_ceiling(rows)
        write_json_atomic(side, {"settings": settings, "rows": len(rows), "noise_ceiling": ceiling,
                                 "torch": torch.__version__})
        return ceiling

    write_sidecar()
    t0 = time.perf_counter()
    if progress is not None:
        progress("start", {"total": len(texts), "done": skipped, "workers": workers, "path": str(path),
                           "recipe": recipe})
    per_worker = threads or max(1, torch.get_num_threads() // workers)
    n_done = skipped

    def record(row: Dict[str, Any]) -> None:
        nonlocal n_done
        _append(path, _format_row(row))
        rows.append(row)
        n_done += 1
        write_sidecar()
        if progress is not None:
            progress("arch", {"row": row, "done": n_done, "total": len(texts)})

    if workers == 1 or len(todo) <= 1:
        saved = torch.get_num_threads()
        try:
            for t in todo:
                record(_train_one(space, t, dataset, idx, recipe, seed, per_worker))
        finally:
            torch.set_num_threads(saved)
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers, initializer=_worker_init,
                      initargs=(space, dataset, idx, recipe, seed, per_worker)) as pool:
            for row in pool.imap_unordered(_worker_run, todo):
                record(row)
    ceiling = write_sidecar()
    result = GroundTruthResult(path=path, trained=len(todo), skipped=skipped, total=len(texts),
                               noise_ceiling=ceiling, seconds=time.perf_counter() - t0)
    if progress is not None:
        progress("end", {"result": result})
    return result
