"""The subcommands. Each validates all input before it writes anything, then does its job."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any, Dict, Optional

from fastnas.cli.parser import CONFIG_FLAG_DESTS
from fastnas.cli.progress import Display, setup_logging

__all__ = ["cmd_search", "cmd_train_supernet", "cmd_score", "cmd_retrain", "cmd_export", "cmd_kendall",
           "cmd_info", "cmd_groundtruth", "cmd_family", "COMMANDS"]


def _given(args: argparse.Namespace) -> Dict[str, Any]:
    """The config settings from ``--config FILE`` and the flags actually given (flags win)."""
    from fastnas.run.config import load_toml

    given: Dict[str, Any] = {}
    config_file = getattr(args, "config", None)
    if config_file:
        given.update({k.replace("-", "_"): v for k, v in load_toml(config_file).items()})
    for dest in CONFIG_FLAG_DESTS + ["quiet"]:
        if hasattr(args, dest):
            given[dest] = getattr(args, dest)
    return given


def _threads(config: Any, dataset: Any) -> int:
    """Applies ``--threads`` (0: 1 thread for images <= 16 px, else torch's default); returns the count."""
    import torch

    n = config.threads
    if n == 0 and dataset is not None and dataset.resolution <= 16:
        n = 1
    if n > 0:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def _out(text: str = "") -> None:
    print(text, flush=True)


def _agreed(args: argparse.Namespace, make: Any) -> Any:
    """``make()`` (validation that writes nothing, returning a ``Prepared`` or a ``(Prepared, ...)`` tuple),
    checked across the ranks of a torchrun world (:func:`fastnas.distributed.agree`): the same settings and
    data on every rank, and no rank's bad input. One process: ``make()``."""
    from fastnas import distributed
    from fastnas.cli.parser import UsageError

    made, error, fingerprint = None, None, None
    try:
        made = make()
        fingerprint = _fingerprint(args, made[0] if isinstance(made, tuple) else made)
        if isinstance(made, tuple):  # e.g. a family's plan
            fingerprint.update({f"plan {k}": repr(v) for k, v in enumerate(made[1:])})
    except (UsageError, ValueError, FileNotFoundError, NotImplementedError) as e:
        error = e
    distributed.agree(fingerprint, error)
    return made


def _fingerprint(args: argparse.Namespace, prepared: Any) -> Dict[str, Any]:
    """What must be equal on every rank: the command, the settings given (as flags; what fastnas derives
    from them is then equal too), the run's phases and the data (its sizes and a hash of its labels: the
    float bits of the images may differ between machines)."""
    import hashlib

    out: Dict[str, Any] = {"command": args.command, "--resume": getattr(args, "resume", None)}
    out.update({"--" + k.replace("_", "-"): v for k, v in (prepared.given or prepared.config).to_dict().items()})
    out["phases"] = dict(prepared.state.get("phases", {}))
    for name in ("train", "valid"):
        x, y = getattr(prepared, name)
        out[f"{name} data"] = (tuple(x.shape), hashlib.sha256(y.contiguous().numpy().tobytes()).hexdigest()[:16])
    return out


def _display(config: Any) -> Any:
    """The progress display of rank 0; the other ranks show nothing (and log only errors)."""
    from fastnas import distributed

    main = distributed.is_main()
    setup_logging(config.quiet)
    if not main:
        import logging

        logging.getLogger("fastnas").setLevel(logging.ERROR)
        return None
    return Display(quiet=config.quiet)


def _run_pipeline(args: argparse.Namespace, *, search: bool) -> int:
    from fastnas.run.config import RunConfig
    from fastnas.run.pipeline import Run, prepare, prepare_from_run
    from fastnas.run.report import summary_lines

    def make() -> Any:
        given = _given(args)
        if args.resume:
            from fastnas.run.family import is_family_run

            if is_family_run(args.resume):
                raise ValueError(f"--resume {args.resume}: this is a family run; continue it with fastnas family "
                                 f"--resume {args.resume}")
            return prepare_from_run(args.resume, given)
        return prepare(RunConfig.from_dict(given))

    prepared = _agreed(args, make)
    config = prepared.config
    display = _display(config)
    threads = _threads(config, prepared.dataset)
    run = Run(prepared, progress=display)
    path = str(prepared.run_dir.path)
    what = "continuing" if prepared.resumed else "new run"
    world = run.world
    ranks = f", {world.size} processes" if world.size > 1 else ""
    if display is not None:
        print(f"fastnas: {what} {path}: {config.space} (C={config.channels}, cells={config.cells}) on "
              f"{prepared.dataset.name}, {config.metric} via {config.searcher}, device {prepared.device}, "
              f"{threads} thread(s){ranks}", file=sys.stderr, flush=True)
    try:
        result = run.execute(search=search)
    finally:
        if display is not None:
            display.close()
    if display is None:
        return 0
    if result is None:
        tr = run.train_result
        _out(f"supernet trained: {config.epochs} epochs, final loss {tr.epoch_loss[-1]:.4f}, "
             f"train accuracy {100 * tr.epoch_accuracy[-1]:.2f}%")
        _out(f"run directory: {path} (search it with: fastnas search --resume {path})")
        return 0
    for line in summary_lines(result, path):
        _out(line)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    return _run_pipeline(args, search=True)


def cmd_train_supernet(args: argparse.Namespace) -> int:
    return _run_pipeline(args, search=False)


def _open_run(args: argparse.Namespace, overrides: Dict[str, Any]) -> Any:
    """A read-only :class:`Run` of ``--run DIR`` with its trained supernet loaded."""
    from fastnas.run.pipeline import Run, prepare_from_run

    prepared = prepare_from_run(args.run, overrides, read_only=True)
    setup_logging(prepared.config.quiet)
    _threads(prepared.config, prepared.dataset)
    return Run(prepared)


def _arch_or_result(run: Any, text: Optional[str]) -> Any:
    space = run.space
    if text is not None:
        return space.parse(text)
    result_path = run.dir / run.dir.RESULT
    if not result_path.is_file():
        raise ValueError(f"run {str(run.dir.path)!r} has no result.json yet; pass --arch TEXT")
    from fastnas.run.rundir import read_json

    arch = read_json(result_path, "result").get("arch")
    if not isinstance(arch, str):
        raise ValueError(f"{str(result_path)!r} has no 'arch'; pass --arch TEXT")
    return space.parse(arch)


def cmd_score(args: argparse.Namespace) -> int:
    overrides = {k: v for k, v in _given(args).items()}
    run = _open_run(args, overrides)
    archs = [run.space.parse(text) for text in args.arch]  # every text checked before any work
    run.load_trained()
    fn = run.score_fn()
    rows = []
    for arch in archs:
        from fastnas.search.history import coerce_score

        s = coerce_score(fn(arch))
        rows.append({"arch": run.space.format(arch), "score": s.value, "parts": dict(s.parts),
                     "flagged": s.flagged, "params": run.space.params(arch), "flops": run.space.flops(arch)})
    if args.json:
        from fastnas.run.rundir import _json_safe

        for row in rows:
            _out(json.dumps(_json_safe(row)))
        return 0
    _out(f"metric {run.config.metric} (run {run.dir.path}):")
    for row in rows:
        simple = {k: v for k, v in row["parts"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        parts = ", ".join(f"{k} {v:.6g}" for k, v in simple.items())
        flag = "  FLAGGED" if row["flagged"] else ""
        _out(f"  {row['score']:.6g}{flag}  {row['arch']}" + (f"  ({parts})" if parts else ""))
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from fastnas.run.rundir import write_json_atomic
    from fastnas.train.checkpoint import fingerprint

    overrides = _given(args)
    epochs = overrides.pop("retrain_epochs", None)
    run = _open_run(args, overrides)
    arch = _arch_or_result(run, args.arch)
    epochs = epochs or run.config.retrain_epochs or 10
    text = run.space.format(arch)
    ident = fingerprint({"arch": text, "epochs": epochs})
    out_dir = run.dir.path / "retrain"
    display = Display(quiet=run.config.quiet)
    run.progress = display
    try:
        result = run.retrain_arch(arch, out_dir / f"{ident}.pt", epochs=epochs)
    finally:
        display.close()
    write_json_atomic(out_dir / f"{ident}.json", {"arch": text, **result})
    _out(f"{text}")
    _out(f"retrained {epochs} epochs from scratch: test accuracy {100 * result['test_accuracy']:.2f}%, "
         f"params {result['params']:,}")
    _out(f"written: {out_dir / (ident + '.json')}")
    return 0


def _input_text(dataset: Any) -> str:
    """What raw images the exported ``load()`` takes, e.g. ``digits: float32 0..16, shape (N, 1, 8, 8) or
    (N, 8, 8)``."""
    c, h, w = dataset.image_shape
    if dataset.raw_dtype == "uint8":
        values = f"uint8 0..{dataset.scale:g}" if dataset.scale == 255 else f"uint8, divided by {dataset.scale:g}"
    elif dataset.scale != 1:
        values = f"{dataset.raw_dtype} 0..{dataset.scale:g}"
    else:
        values = f"{dataset.raw_dtype} as stored"
    shapes = {"nhw": f"(N, {c}, {h}, {w}) or (N, {h}, {w})", "nchw": f"(N, {c}, {h}, {w})",
              "nhwc": f"(N, {h}, {w}, {c}) or (N, {c}, {h}, {w})"}
    return f"{dataset.name}: {values}, shape {shapes.get(dataset.layout, shapes['nchw'])}"


def _recal_progress(batches: Any, total: int, quiet: bool) -> Any:
    """``batches`` with progress: a tqdm bar on a terminal, else a line on stderr every 5 s and at the end."""
    if not quiet and sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(batches, total=total, desc="BatchNorm recalibration", unit="batch", file=sys.stderr,
                        dynamic_ncols=True, leave=False)
        return
    import time

    t0 = last = time.monotonic()
    for k, batch in enumerate(batches, start=1):
        yield batch
        now = time.monotonic()
        if now - last >= 5.0 or k == total:
            last = now
            print(f"fastnas: export: BatchNorm recalibration {k}/{total} batches ({now - t0:.1f} s)",
                  file=sys.stderr, flush=True)


def cmd_export(args: argparse.Namespace) -> int:
    import io
    import time

    import torch

    from fastnas.data import Batches
    from fastnas.run.rundir import write_bytes_atomic, write_text_atomic
    from fastnas.seeds import derive_seed
    from fastnas.spaces.export import with_loader

    t_start = time.perf_counter()
    out = Path(args.export_out)
    if out.suffix != ".py":
        raise ValueError(f"--out {str(out)!r}: expected a file name ending in .py (weights go beside it as .pt)")
    if not out.stem.isidentifier():
        raise ValueError(f"--out {str(out)!r}: the file name {out.stem!r} is not importable as a module; "
                         "use letters, digits and underscores")
    if out.parent and not out.parent.exists():
        raise ValueError(f"--out {str(out)!r}: directory {str(out.parent)!r} does not exist")
    batch_size = args.export_recal_batch_size
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--recal-batch-size {batch_size}: expected an integer >= 1")
    run = _open_run(args, _given(args))
    arch = _arch_or_result(run, args.arch)
    weights = out.with_suffix(".pt")
    dataset = run.p.dataset
    note = _input_text(dataset)
    run.load_trained()
    source = run.supernet.export_source(arch, class_name=args.class_name)  # checks the class name first
    source = with_loader(source, args.class_name, weights=weights.name, scale=dataset.scale, mean=dataset.mean,
                         std=dataset.std, image_shape=dataset.image_shape, input_note=f"Raw images: {note}.")
    batch_size = batch_size or run.config.batch_size
    x = run.p.train[0]
    full = -(-x.shape[0] // batch_size)  # batches of one pass over the supernet-train split
    n = full if args.export_recal_batches == "all" else min(int(args.export_recal_batches), full)
    if n == full:  # every image once, in order: the statistics of the whole split
        batches = Batches(x, None, batch_size, shuffle=False)
        what = f"all {x.shape[0]} images of the supernet-train split"
    else:  # n full batches drawn without replacement
        batches = Batches(x, None, batch_size, order_seed=derive_seed(run.config.seed, "export-recal"),
                          num_batches=n)
        what = f"{n * batch_size} of the {x.shape[0]} supernet-train images (--recal-batches all: every one)"
    quiet = bool(run.config.quiet)
    print(f"fastnas: export {out}: {run.space.format(arch)}; BatchNorm recalibration on {n} batches of "
          f"{batch_size}: {what}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    run.supernet.recalibrate(arch, (xb.to(run.device) for xb, _ in _recal_progress(batches, n, quiet)))
    recal_seconds = time.perf_counter() - t0
    model = run.supernet.extract(arch).eval()
    test_x, test_y = run.p.dataset.test_x, run.p.dataset.test_y
    with torch.no_grad():  # what the exported network scores on the run's test split (normalised here)
        hits = sum(int((model(xb.to(run.device)).argmax(1).cpu() == yb).sum())
                   for xb, yb in Batches(test_x, test_y, batch_size, shuffle=False))
    test_accuracy = hits / max(1, test_x.shape[0])
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    write_bytes_atomic(weights, buf.getvalue())
    write_text_atomic(out, source)
    scale = f"x/{dataset.scale:g} then " if dataset.scale != 1 else ""
    def per_channel(values: Any) -> str:
        text = ", ".join(f"{v:.4g}" for v in values)
        return text if len(values) == 1 else f"({text})"

    stats = f"mean {per_channel(dataset.mean)}, std {per_channel(dataset.std)}"
    module = out.stem
    _out(f"{run.space.format(arch)}")
    _out(f"source:  {out}  (class {args.class_name} and load(); needs only torch)")
    _out(f"weights: {weights}  (state_dict of {args.class_name}; BatchNorm recalibrated for this architecture on "
         f"{n} batches of {batch_size}, {recal_seconds:.1f} s; export took {time.perf_counter() - t_start:.1f} s)")
    _out(f"test accuracy {100 * test_accuracy:.2f}% on the run's {test_x.shape[0]} test images (the raw test "
         "images through load() give the same)")
    _out(f"input: raw images as the source gives them ({note}); load() applies {scale}(x - mean)/std "
         f"with the training {stats}, and converts integer input to float32")
    where = "this directory" if out.parent.resolve() == Path.cwd().resolve() else str(out.parent)
    lines = [(f"import {module}", f"with {where} on sys.path"),
             (f"model = {module}.load()", f"eval mode, weights from {weights.name} beside {out.name}"),
             ("logits = model(x)", "x: raw images as above, a tensor or numpy array")]
    width = max(len(code) for code, _ in lines)
    _out("use it:")
    for code, comment in lines:
        _out(f"  {code.ljust(width)}  # {comment}")
    return 0


def cmd_kendall(args: argparse.Namespace) -> int:
    from fastnas.metrics.rank import load_ground_truth, scatter_plot
    from fastnas.run.report import _canonicalizer
    from fastnas.run.rundir import RunDir

    run_dir = RunDir(args.run)
    config = run_dir.load_config()
    history = run_dir / run_dir.HISTORY
    if not history.is_file():
        raise ValueError(f"run {args.run!r} has no {run_dir.HISTORY} yet (the search has not finished)")
    if not Path(args.truth).is_file():
        raise ValueError(f"--truth {args.truth!r}: no such file (expected a CSV with an arch and an accuracy "
                         "column, e.g. the table of fastnas groundtruth)")
    truth = load_ground_truth(args.truth, arch_column=args.arch_column, acc_column=args.acc_column)
    scores: Dict[str, float] = {}
    flagged = set()
    with open(history, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if args.score_column not in (reader.fieldnames or []):
            raise ValueError(f"--score-column {args.score_column!r} is not a column of {str(history)!r}; "
                             f"columns are {reader.fieldnames}")
        for row in reader:
            cell = row.get(args.score_column, "")
            scores[row["arch"]] = float(cell) if cell not in ("", None) else math.nan
            if str(row.get("flagged", "")).strip().lower() in ("1", "true"):
                flagged.add(row["arch"])
    space = _space_for_texts(config)
    from fastnas.metrics.rank import correlate

    usable = correlate(scores, truth, canonicalize=_canonicalizer(space), flagged=flagged)
    if usable.n < 2:  # a tau of fewer than two pairs is nan: say so instead of writing it
        raise ValueError(f"--truth {args.truth!r}: only {usable.n} of the run's {len(scores)} scored architectures "
                         f"have ground truth and a finite, unflagged score ({usable.n_unmatched} without ground "
                         f"truth, {usable.n_dropped} dropped); a rank correlation needs at least 2")
    plot = Path(args.plot) if args.plot else run_dir / run_dir.PLOTS / "kendall.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    rank = scatter_plot(scores, truth, plot, title=f"{config.metric}: {args.score_column}",
                        canonicalize=_canonicalizer(space), flagged=flagged)
    _out(f"Kendall tau {rank.tau:.4f}, Spearman rho {rank.spearman:.4f} over {rank.n} architectures "
         f"(dropped: {rank.n_flagged} with a flagged or non-finite score, {rank.n_dropped - rank.n_flagged} "
         f"with no finite accuracy; {rank.n_unmatched} without ground truth)")
    _out(f"scatter plot: {plot}")
    return 0


def cmd_groundtruth(args: argparse.Namespace) -> int:
    from fastnas.data import load_dataset
    from fastnas.run.groundtruth import Recipe, ground_truth, read_arch_file, sample_archs
    from fastnas.spaces import create_space

    recipe = Recipe(epochs=args.epochs, train_images=args.train_images, valid_images=args.valid_images,
                    test_images=args.test_images, batch_size=args.batch_size, lr=args.lr, lr_min=args.lr_min,
                    momentum=args.momentum, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
                    augment=args.augment, precision=args.precision).resolved()
    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: expected an integer >= 1")
    if args.threads < 0:
        raise ValueError(f"--threads {args.threads}: expected an integer >= 0")
    if args.archs is not None and args.archs < 1:
        raise ValueError(f"--archs {args.archs}: expected an integer >= 1")
    given = {k: getattr(args, k) for k in ("space", "data", "data_dir", "channels", "cells") if hasattr(args, k)}
    from fastnas.run.config import SETTINGS

    opts = {k: given.get(k, SETTINGS[k].default) for k in ("space", "data", "data_dir", "channels", "cells")}
    dataset = load_dataset(opts["data"], opts["data_dir"], seed=args.seed)
    space = create_space(opts["space"], channels=opts["channels"], cells=opts["cells"],
                         num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                         resolution=dataset.resolution)
    archs = (read_arch_file(space, args.arch_file) if args.arch_file is not None
             else sample_archs(space, args.archs, seed=args.seed))
    quiet = bool(getattr(args, "quiet", False))
    setup_logging(quiet)
    display = Display(quiet=quiet)
    print(f"fastnas: ground truth {args.gt_out}: {len(archs)} architectures of {opts['space']} "
          f"(C={opts['channels']}, cells={opts['cells']}) on {dataset.name}, {recipe.epochs} epochs on "
          f"{recipe.train_images or 'all'} images, {recipe.precision}, {args.workers} worker(s)",
          file=sys.stderr, flush=True)
    try:
        result = ground_truth(space, dataset, archs, args.gt_out, recipe=recipe, seed=args.seed,
                              workers=args.workers, threads=args.threads,
                              progress=lambda event, info: display("groundtruth:" + event, info))
    finally:
        display.close()
    c = result.noise_ceiling
    _out(f"table: {result.path} ({result.total} architectures: {result.trained} trained now, {result.skipped} "
         f"already there; {result.seconds:.0f} s)")
    _out(f"noise ceiling: Kendall tau {c['tau_valid_test']:.4f} (Spearman {c['spearman_valid_test']:.4f}) between "
         f"validation and test accuracy over {c['n']} architectures; sidecar {result.path.with_suffix('.json')}")
    return 0


def _space_for_texts(config: Any) -> Any:
    """The run's space, for parsing texts only: its channels and cells as the run's (an elastic space's
    texts name channel counts); the data-dependent sizes do not matter here."""
    from fastnas.spaces import create_space

    return create_space(config.space, channels=config.channels, cells=config.cells)


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    import fastnas
    from fastnas.ops import native_build, override_routes

    _out(f"fastnas {fastnas.__version__} ({Path(fastnas.__file__).parent})")
    _out(f"python  {platform.python_version()} ({sys.executable})")
    _out(f"torch   {torch.__version__}")
    _out(f"native  {native_build()}")
    _out("backends:")
    for status in fastnas.backends().values():
        _out(f"  {status}")
    bad_backend = None
    try:
        routes = override_routes()
    except ValueError as e:  # shown as the info line it belongs to; info then exits 2
        routes, bad_backend = {}, str(e)
        _out(f"error: {bad_backend}")
    if routes:
        _out(f"FASTNAS_BACKEND={os.environ['FASTNAS_BACKEND'].strip()}: "
             + "; ".join(f"{op} -> {route}" for op, route in routes.items()))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            _out(f"device  cuda:{i} {torch.cuda.get_device_name(i)}")
    else:
        _out("device  cpu (torch reports no CUDA device)")
    _out(f"threads torch {torch.get_num_threads()} intra-op, {os.cpu_count()} CPUs; "
         "fastnas search uses 1 for images <= 16 px unless --threads is given")
    from fastnas.data import list_datasets
    from fastnas.search import list_searchers
    from fastnas.spaces import list_spaces
    from fastnas.run.config import METRICS

    _out(f"spaces {', '.join(list_spaces())}; datasets {', '.join(list_datasets())}, FILE.npz; "
         f"searchers {', '.join(list_searchers())}")
    _out(f"metrics {', '.join(METRICS)}")
    if bad_backend is not None:
        print(f"fastnas: error: {bad_backend}", file=sys.stderr, flush=True)
        return 2
    return 0


def _execute(run: Any, display: Any, summary: Any) -> int:
    """Runs ``run`` (every rank); rank 0 (the one with a display) prints ``summary(result)``."""
    try:
        result = run.execute()
    finally:
        if display is not None:
            display.close()
    if display is None:
        return 0
    for line in summary(result):
        _out(line)
    return 0


_FAMILY_KEYS = ("tiers", "budgets", "budget_kind", "reward", "lambdas", "constraint", "reference")


def cmd_family(args: argparse.Namespace) -> int:
    from fastnas.cli.parser import FAMILY_DEFAULTS
    from fastnas.run.config import RunConfig
    from fastnas.run.family import FamilyConfig, FamilyRun, family_summary_lines, prepare_family, \
        prepare_family_from_run

    def make() -> Any:
        given = _given(args)
        for key in ("metric", "gamma", "max_params", "max_flops"):
            if key in given:  # from a --config file: the flags are not offered
                raise ValueError(f"{key.replace('_', '-')}: fastnas family ranks by --reward/--lambdas within "
                                 f"--budgets; remove {key} from the config file")
        family_given = {k: getattr(args, "fam_" + k) for k in _FAMILY_KEYS if hasattr(args, "fam_" + k)}
        if args.resume:
            return prepare_family_from_run(args.resume, given, family_given)
        for key, value in FAMILY_DEFAULTS.items():
            given.setdefault(key, value)
        return prepare_family(RunConfig.from_dict(given), FamilyConfig(**family_given))

    prepared, plan = _agreed(args, make)
    config = prepared.config
    display = _display(config)
    threads = _threads(config, prepared.dataset)
    run = FamilyRun(prepared, plan, progress=display)
    path = str(prepared.run_dir.path)
    what = "continuing" if prepared.resumed else "new family run"
    budgets = ",".join(f"{b:g}" for b in plan.budgets)
    ranks = f", {run.world.size} processes" if run.world.size > 1 else ""
    if display is not None:
        print(f"fastnas: {what} {path}: {config.space} (C={config.channels}, cells={config.cells}) on "
              f"{prepared.dataset.name}, {len(plan.budgets)} tiers with {plan.family.budget_kind} budgets {budgets}, "
              f"lambdas {','.join(f'{w:g}' for w in plan.family.weights)}, containment "
              f"{'on' if plan.family.constraint else 'off'}, {config.sampler} training, device {prepared.device}, "
              f"{threads} thread(s){ranks}", file=sys.stderr, flush=True)
    return _execute(run, display, lambda result: family_summary_lines(result, run.state, path))


_REFINE_KEYS = ("searcher", "pretrain_epochs", "controller_steps", "samples", "reward", "reward_batch",
                "flops_penalty", "derive", "retrain_base", "hidden", "temperature", "tanh_constant", "entropy_weight",
                "baseline_decay", "controller_lr")


def cmd_refine(args: argparse.Namespace) -> int:
    from fastnas.cli.parser import REFINE_DEFAULTS
    from fastnas.run.config import RunConfig
    from fastnas.run.refine import RefineConfig, RefineRun, prepare_refine, prepare_refine_from_run, \
        refine_summary_lines
    from fastnas.spaces.resnets import BACKBONES

    def make() -> Any:
        given = _given(args)
        for key in ("metric", "gamma", "space", "searcher", "population", "generations", "sampler"):
            if key in given:  # from a --config file: the flags are not offered
                raise ValueError(f"{key}: fastnas refine sets it itself (its controller settings are --reward, "
                                 f"--derive, --searcher enas|random|evolution, ...); remove {key} from the config file")
        refine_given = {k: getattr(args, "ref_" + k) for k in _REFINE_KEYS if hasattr(args, "ref_" + k)}
        if args.resume:
            return prepare_refine_from_run(args.resume, given, refine_given)
        for key, value in REFINE_DEFAULTS.items():
            given.setdefault(key, value)
        if given["backbone"] in BACKBONES:  # the built-in's own width and depth unless given
            _, width, blocks = BACKBONES[given["backbone"]]
            given.setdefault("channels", width)
            given.setdefault("cells", blocks)
        return prepare_refine(RunConfig.from_dict(given), RefineConfig(**refine_given))

    prepared, rcfg = _agreed(args, make)
    config = prepared.config
    display = _display(config)
    threads = _threads(config, prepared.dataset)
    run = RefineRun(prepared, rcfg, progress=display)
    path = str(prepared.run_dir.path)
    space = prepared.space
    what = "continuing" if prepared.resumed else "new refine run"
    ranks = f", {run.world.size} processes" if run.world.size > 1 else ""
    if display is not None:
        print(f"fastnas: {what} {path}: {space.backbone or space.model_name} ({len(space.sites)} refinable convs, "
              f"{space.granularity} granularity: {len(space.gene_ops)} genes, {space.size():.3g} architectures) on "
              f"{prepared.dataset.name}, searcher {rcfg.searcher}, reward {rcfg.reward}, {config.epochs} epochs"
              f"{f' ({rcfg.pretrain_epochs} PreTrain)' if rcfg.pretrain_epochs else ''}, device {prepared.device}, "
              f"{threads} thread(s){ranks}", file=sys.stderr, flush=True)
    return _execute(run, display, lambda result: refine_summary_lines(result, path))


COMMANDS = {
    "search": cmd_search, "family": cmd_family, "refine": cmd_refine, "train-supernet": cmd_train_supernet, "score": cmd_score, "retrain": cmd_retrain,
    "export": cmd_export, "kendall": cmd_kendall, "groundtruth": cmd_groundtruth, "info": cmd_info,
}


# ---- fastnas bench <benchmark>

def cmd_bench_ranking(args: argparse.Namespace) -> int:
    from fastnas.run.ranking import ALPHAS, GAMMAS, RankingBench
    from fastnas.run.rundir import write_json_atomic

    overrides = {k: v for k, v in _given(args).items() if k not in ("metric", "gamma")}
    try:
        run = _open_run(args, overrides)
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"--run {args.run}: {e}") from None
    select = args.variants.split(",") if args.variants is not None else None
    bench = RankingBench(run, args.bench_truth, out_dir=args.bench_out, select=select, limit=args.limit,
                         seed=args.bench_seed, alphas=args.alphas or ALPHAS, gammas=args.gammas or GAMMAS,
                         sigma_sets=args.sigma_sets, names={"run": "--run", "truth": "--truth", "out": "--out"})
    print(f"fastnas: ranking benchmark of {run.dir.path} on {len(bench.rows)} architectures of {args.bench_truth}: "
          f"{len(bench.plan.variants)} variants from {len(bench.plan.evaluations())} evaluations per "
          f"architecture ({len(bench.done)} architectures already scored in {bench.out})", file=sys.stderr, flush=True)
    display = Display(quiet=run.config.quiet)
    try:
        summary = bench.run_all(progress=display)
    finally:
        display.close()
    _out((bench.out / bench.TABLES).read_text(encoding="utf-8"))
    if args.bench_json:
        write_json_atomic(args.bench_json, {k: summary[k] for k in ("scores", "default", "n", "noise_ceiling")})
    _out(f"written: {bench.out}/{{{bench.SCORES}, {bench.SUMMARY}, {bench.TABLES}, {bench.PLOT_COST}, "
         f"{bench.PLOT_BARS}}}" + (f" and {args.bench_json}" if args.bench_json else ""))
    return 0


#: ``fastnas bench <benchmark>`` handlers.
BENCH_COMMANDS = {"ranking": cmd_bench_ranking}


def cmd_bench(args: argparse.Namespace) -> int:
    return BENCH_COMMANDS[args.bench](args)


COMMANDS["bench"] = cmd_bench
__all__ += ["cmd_bench", "cmd_bench_ranking", "BENCH_COMMANDS"]
