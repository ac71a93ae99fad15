"""What the CLI shows while a run works: tqdm bars on a terminal, log lines otherwise, and the test hook.

Bars need a terminal: into a file or a pipe (a log, CI, ``| tee``) their carriage returns would fill it
with redrawn lines, so there, as with ``--quiet``, progress is written as plain log lines: one per epoch
and per generation, and for long stretches between them one every :data:`LINE_SECONDS`.

Test hook: ``FASTNAS_TEST_KILL_AT=<phase>:<n>`` makes the process kill itself with SIGKILL (no cleanup,
like ``kill -9``) at a chosen point, so tests can check that ``--resume`` recovers from a kill anywhere:

* ``train:N`` — right after supernet training step N (1-based, counted over the whole training);
* ``search:N`` — right after candidate N is scored, before the search state is saved;
* ``retrain:N`` — right after retraining epoch N, once its checkpoint is written;
* ``family:N`` — right after tier N of a family design has its member saved;
* ``groundtruth:N`` — right after the N-th row of a ground-truth table is written (counted in this process);
* ``bench:N`` — right after the N-th row of a benchmark's scores (counted over all sessions) is on disk.

It is read only by the CLI, never by the library.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from typing import Any, Dict, Optional

__all__ = ["Display", "setup_logging", "line_mode", "KILL_ENV", "LINE_SECONDS"]

KILL_ENV = "FASTNAS_TEST_KILL_AT"

#: In line mode, a progress line at least this often while a phase works (between epoch/generation lines).
LINE_SECONDS = 30.0

log = logging.getLogger("fastnas.cli")


class _TqdmHandler(logging.Handler):
    """Log records written through ``tqdm.write`` so they do not break the bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001
            self.handleError(record)


def line_mode(quiet: bool) -> bool:
    """Whether progress is written as log lines: with ``--quiet``, or when stderr is not a terminal."""
    if quiet:
        return True
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stream, or a closed one
        return True


def setup_logging(quiet: bool) -> None:
    """``fastnas`` loggers to stderr: INFO lines in :func:`line_mode` (no bars), warnings otherwise."""
    quiet = line_mode(quiet)
    logger = logging.getLogger("fastnas")
    for h in list(logger.handlers):
        if getattr(h, "_fastnas_cli", False):
            logger.removeHandler(h)
    handler: logging.Handler = logging.StreamHandler(sys.stderr) if quiet else _TqdmHandler()
    handler._fastnas_cli = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S") if quiet
                         else logging.Formatter("%(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if quiet else logging.WARNING)
    logger.propagate = False


def _kill_point() -> Optional[tuple]:
    value = os.environ.get(KILL_ENV, "").strip()
    if not value:
        return None
    phase, _, n = value.partition(":")
    try:
        return phase, int(n)
    except ValueError:
        return None


class Display:
    """``progress(event, info)`` callback of :class:`fastnas.run.pipeline.Run`: bars on a terminal, else
    log lines (``quiet`` asks for lines on a terminal too; see :func:`line_mode`)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = line_mode(quiet)  # True: log lines, no bars
        self.bars: Dict[str, Any] = {}
        self.kill_at = _kill_point()
        self.best: Optional[float] = None
        self._last_refresh = 0.0
        self._last_line = time.monotonic()

    def _line_due(self) -> bool:
        """In line mode, whether :data:`LINE_SECONDS` have passed since the last progress line."""
        now = time.monotonic()
        if not self.quiet or now - self._last_line < LINE_SECONDS:
            return False
        self._last_line = now
        return True

    # ---- bars

    def _bar(self, key: str, **kw: Any) -> Any:
        from tqdm import tqdm

        self._close(key)
        bar = tqdm(file=sys.stderr, dynamic_ncols=True, leave=True, **kw)
        self.bars[key] = bar
        return bar

    def _close(self, key: str) -> None:
        bar = self.bars.pop(key, None)
        if bar is not None:
            bar.close()

    def close(self) -> None:
        for key in list(self.bars):
            self._close(key)

    def _maybe_kill(self, phase: str, n: int) -> None:
        if self.kill_at is not None and self.kill_at == (phase, n):
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    # ---- events

    def __call__(self, event: str, info: Dict[str, Any]) -> None:
        handler = getattr(self, "on_" + event.replace(":", "_"), None)
        if handler is not None:
            handler(info)

    def on_phase(self, info: Dict[str, Any]) -> None:
        if info["status"] == "end":
            self._close(info["name"])
        if self.quiet:
            self._last_line = time.monotonic()
            log.info("%s: %s", info["name"], "started" if info["status"] == "start" else "done")

    def on_run_finished(self, info: Dict[str, Any]) -> None:
        print(f"fastnas: run {info['path']} is finished and this resume changes none of its settings: nothing "
              "was redone or rewritten; its result:", file=sys.stderr, flush=True)

    def on_train_start(self, info: Dict[str, Any]) -> None:
        if info.get("resumed"):
            log.info("supernet: resuming at epoch %d/%d", info["start_epoch"], info["epochs"])
        if not self.quiet:
            self._bar("train", total=info["epochs"], initial=info["start_epoch"], desc="supernet", unit="epoch")

    def on_train_step(self, info: Dict[str, Any]) -> None:
        bar = self.bars.get("train")
        if bar is not None:
            bar.set_postfix_str(f"step {info['step'] + 1}/{info['steps_per_epoch'] or '?'} "
                                f"loss {info['loss']:.3f}", refresh=False)
            now = time.monotonic()
            if now - self._last_refresh > 0.5:  # per-step news, at most twice a second
                self._last_refresh = now
                bar.refresh()
        elif self._line_due():
            log.info("supernet epoch %d: step %d/%s, loss %.4f", info["epoch"] + 1, info["step"] + 1,
                     info["steps_per_epoch"] or "?", info["loss"])
        self._maybe_kill("train", info["global_step"])

    def on_train_epoch(self, info: Dict[str, Any]) -> None:
        self._last_line = time.monotonic()  # the trainer logs the epoch's line
        bar = self.bars.get("train")
        if bar is not None:
            bar.set_postfix_str(f"loss {info['loss']:.3f} acc {100 * info['accuracy']:.1f}%", refresh=False)
            bar.update(1)

    def on_refine_controller(self, info: Dict[str, Any]) -> None:
        self._last_line = time.monotonic()
        log.info("controller after epoch %d: mean reward %.4f, baseline %.4f, entropy %.3f, greedy %s",
                 info["epoch"] + 1, info["reward"], info["baseline"], info["entropy"], info["greedy"])

    def on_refine_base(self, info: Dict[str, Any]) -> None:
        if info["status"] == "start":
            log.info("retraining the base backbone (same recipe and seed) for comparison")

    def on_train_end(self, info: Dict[str, Any]) -> None:
        self._close("train")

    def on_search_start(self, info: Dict[str, Any]) -> None:
        if not self.quiet:
            self._bar("search", total=info["total"] or None, initial=info["done"], desc=info.get("desc", "scoring"),
                      unit="arch")

    def on_search_candidate(self, info: Dict[str, Any]) -> None:
        record = info["record"]
        if not record.flagged and (self.best is None or record.score > self.best):
            self.best = record.score
        bar = self.bars.get("search")
        if bar is not None:
            bar.set_postfix_str(f"gen {info['generation']} best {self.best:.4g}" if self.best is not None
                                else f"gen {info['generation']}", refresh=False)
            bar.update(1)
        elif self._line_due():
            best = f", best {self.best:.5g}" if self.best is not None else ""
            log.info("scored %d/%s candidates (generation %d)%s", info["n_scored"], info["total"] or "?",
                     info["generation"] + 1, best)
        self._maybe_kill("search", info["n_scored"])

    def on_search_generation(self, info: Dict[str, Any]) -> None:
        best = info["best"]
        msg = f"generation {info['generation'] + 1}/{info['generations']}: best {best.score:.5g} {best.text}"
        if self.quiet:
            self._last_line = time.monotonic()
            log.info(msg)

    def on_family_tier(self, info: Dict[str, Any]) -> None:
        log.info("tier %d/%d: %s <= %g, ranked by %s%s", info["tier"], info["tiers"], info["kind"], info["budget"],
                 info["metric"], f" against {info['reference']}" if info["reference"] else "")

    def on_family_member(self, info: Dict[str, Any]) -> None:
        msg = f"member {info['tier']}/{info['tiers']}: {info['arch']} (score {info['score']:.5g})"
        if self.quiet:
            log.info(msg)
        else:
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)
        self._maybe_kill("family", info["tier"])

    def on_retrain_start(self, info: Dict[str, Any]) -> None:
        if not self.quiet:
            self._bar("retrain", total=info["epochs"], initial=info["start_epoch"], desc="retrain", unit="epoch")

    def on_retrain_epoch(self, info: Dict[str, Any]) -> None:
        bar = self.bars.get("retrain")
        if bar is not None:
            bar.set_postfix_str(f"loss {info['loss']:.3f} acc {100 * info['accuracy']:.1f}%", refresh=False)
            bar.update(1)
        elif self.quiet:
            log.info("retrain epoch %d/%d: loss %.4f, train acc %.2f%%", info["epoch"] + 1, info["epochs"],
                     info["loss"], 100 * info["accuracy"])
        self._maybe_kill("retrain", info["epoch"] + 1)

    def on_retrain_end(self, info: Dict[str, Any]) -> None:
        self._close("retrain")

    def on_groundtruth_start(self, info: Dict[str, Any]) -> None:
        self._gt_written = 0
        msg = (f"ground truth: {info['total']} architectures, {info['done']} already in {info['path']}, "
               f"{info['workers']} worker(s)")
        if self.quiet:
            log.info(msg)
        else:
            self._bar("groundtruth", total=info["total"], initial=info["done"], desc="ground truth", unit="arch")

    def on_groundtruth_arch(self, info: Dict[str, Any]) -> None:
        row = info["row"]
        self._gt_written = getattr(self, "_gt_written", 0) + 1
        bar = self.bars.get("groundtruth")
        if bar is not None:
            bar.set_postfix_str(f"last {100 * row['test_accuracy']:.1f}% in {row['seconds']:.0f} s", refresh=False)
            bar.update(1)
        else:
            log.info("%d/%d: test %.2f%%, valid %.2f%%, %.1f s  %s", info["done"], info["total"],
                     100 * row["test_accuracy"], 100 * row["valid_accuracy"], row["seconds"], row["arch"])
        self._maybe_kill("groundtruth", self._gt_written)

    def on_groundtruth_end(self, info: Dict[str, Any]) -> None:
        self._close("groundtruth")
    def on_bench_start(self, info: Dict[str, Any]) -> None:
        if info["done"]:
            log.info("benchmark: %d of %d architectures already scored", info["done"], info["total"])
        if not self.quiet:
            self._bar("bench", total=info["total"], initial=info["done"], desc="benchmark", unit="arch")

    def on_bench_arch(self, info: Dict[str, Any]) -> None:
        bar = self.bars.get("bench")
        if bar is not None:
            bar.set_postfix_str(f"{info['seconds']:.2f} s/arch", refresh=False)
            bar.update(1)
        elif self.quiet:
            log.info("benchmark %d/%d: %s (%.2f s)", info["n_done"], info["total"], info["text"], info["seconds"])
        self._maybe_kill("bench", info["n_done"])

    def on_bench_end(self, info: Dict[str, Any]) -> None:
        self._close("bench")
