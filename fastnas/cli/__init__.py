"""The ``fastnas`` command: ``main(argv) -> exit code``.

Bad input (an unknown name, a malformed architecture, a run directory that holds another run, a corrupt
checkpoint) is one line on stderr, ``fastnas: error: ...``, and exit code 2; it is detected before
anything is written. Library code never prints: this package does. ``FASTNAS_DEBUG=1`` shows the
traceback of such an error instead (for bug reports).

Messages of the library name Python arguments (``data_dir=``, ``arch_column=``); on the command line the
user knows them as flags, so an argument spelled with ``_`` that is a flag of ``fastnas`` is shown as that
flag (``--data-dir``). One-word names (``truth=``) already read as their flag's word and are kept.

SIGTERM (a batch scheduler's stop, ``kill``) ends a command like Ctrl-C (SIGINT): the signal raises
:class:`Interrupted` (a ``KeyboardInterrupt``) in the main thread, the stack unwinds (``finally`` blocks put
perturbed weights back, a half-written temporary file is removed), one line says how to continue, and
the exit code is ``128 + signal``: 130 for SIGINT, 143 for SIGTERM. The exception is raised at once, not
at the next progress event: every file of a run is written atomically (a temporary file moved into
place), so the run directory holds the last finished checkpoint and the search state saved after the
last scored candidate whatever the moment, and ``--resume`` continues from there; waiting could take a
whole training epoch or ground-truth architecture, longer than a scheduler's grace period. A second
signal while the first unwinds exits at once with the same code. Running out of memory
(``torch.OutOfMemoryError``) is one line too, with the flags that lower memory and how to continue, and
exit code 1.

Under torchrun (``torchrun --nproc_per_node=N -m fastnas search|train-supernet|family ...``) the command
runs inside :func:`fastnas.distributed.process_group`: rank 0 prints and writes, the other ranks print
only their own errors (tagged ``(rank k)``); bad input found while preparing is reported once, by rank
0, and every rank exits 2. Losing another rank (or a rendezvous that never completes) is one line and
exit code 1. The other commands run in one process and refuse a torchrun environment.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading
from typing import Iterator, List, Optional, Set

__all__ = ["main", "Interrupted", "interrupt_signals", "DISTRIBUTED_COMMANDS"]

#: The commands that run under torchrun (each rank one process of the run).
DISTRIBUTED_COMMANDS = ("search", "train-supernet", "family", "refine")

#: The signals that interrupt a command (and their exit codes, 128 + the signal number).
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """Raised in the main thread by SIGINT or SIGTERM inside :func:`interrupt_signals`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


@contextlib.contextmanager
def interrupt_signals() -> Iterator[None]:
    """Inside: SIGINT and SIGTERM raise :class:`Interrupted`; a second one exits at once (``os._exit``,
    code 128 + signal). The previous handlers come back on exit. A signal the process was told to ignore
    (``SIG_IGN``, e.g. SIGINT under ``nohup``) stays ignored; outside the main thread nothing changes
    (Python delivers signals to the main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit: List[int] = []

    def handler(signum: int, frame: object) -> None:
        if hit:  # already unwinding: the user (or the scheduler) insists
            os.write(2, b"fastnas: interrupted again; exiting at once\n")
            os._exit(128 + signum)
        hit.append(signum)
        raise Interrupted(signum)

    previous = {}
    for sig in INTERRUPT_SIGNALS:
        old = signal.getsignal(sig)
        if old is not signal.SIG_IGN:
            previous[sig] = old
            signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def main(argv: Optional[List[str]] = None) -> int:
    """Runs ``fastnas`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    from fastnas import distributed
    from fastnas.cli.commands import COMMANDS
    from fastnas.cli.parser import UsageError, build_parser

    parser = build_parser()
    args = None
    tag = _rank_tag()
    with interrupt_signals():
        try:
            args = parser.parse_args(sys.argv[1:] if argv is None else argv)
            if not args.command:
                parser.print_help()
                return 0
            with _process_group(args.command, UsageError):
                return COMMANDS[args.command](args)
        except (UsageError, ValueError, FileNotFoundError, NotImplementedError) as e:
            if os.environ.get("FASTNAS_DEBUG"):
                raise
            message = flag_spelling(" ".join(str(e).split()) or type(e).__name__, parser)
            print(f"fastnas: error: {tag}{message}", file=sys.stderr, flush=True)
            return 2
        except distributed.Abandoned as e:  # rank 0 has said why
            return e.exit_code
        except distributed.DistributedError as e:
            if os.environ.get("FASTNAS_DEBUG"):
                raise
            print(f"fastnas: error: {tag}{' '.join(str(e).split())}", file=sys.stderr, flush=True)
            return 1
        except RuntimeError as e:
            if not _out_of_memory(e) or os.environ.get("FASTNAS_DEBUG"):
                raise
            hint = _RESUME_HINT.get(getattr(args, "command", None), "nothing was left half-written")
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
            print(f"fastnas: error: out of memory ({detail}); a smaller --batch-size (training) or "
                  f"--score-batch-size (scoring) needs less; {hint}", file=sys.stderr, flush=True)
            return 1
        except KeyboardInterrupt as e:
            signum = getattr(e, "signum", int(signal.SIGINT))
            if tag:  # torchrun stops the other ranks when one ends: rank 0 says how to continue
                return 128 + signum
            by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
            hint = _RESUME_HINT.get(getattr(args, "command", None), "nothing was left half-written")
            if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1"):
                hint = hint.replace(": fastnas ", ": torchrun <the same options> -m fastnas ", 1)
            print(f"fastnas: interrupted{by}; {hint}", file=sys.stderr, flush=True)
            return 128 + signum


def _rank_tag() -> str:
    """``"(rank k) "`` on a rank other than 0 of a torchrun world (from ``RANK``), else ``""``."""
    try:
        rank = int(os.environ.get("RANK", "0").strip() or 0)
        size = int(os.environ.get("WORLD_SIZE", "1").strip() or 1)
    except ValueError:
        return ""
    return f"(rank {rank}) " if size > 1 and rank != 0 else ""


@contextlib.contextmanager
def _process_group(command: str, usage_error: type) -> Iterator[None]:
    """The torchrun process group for ``command`` (nothing for one process); other commands refuse one."""
    from fastnas import distributed

    w = distributed.env_world()
    if w is not None and w.size > 1 and command not in DISTRIBUTED_COMMANDS:
        raise usage_error(f"fastnas {command} runs in one process (WORLD_SIZE={w.size} is set); under torchrun "
                          f"fastnas runs {', '.join(DISTRIBUTED_COMMANDS)}")
    with distributed.process_group():
        yield


def _out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is torch's out-of-memory error (torch is imported by then if it can be raised)."""
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    return oom is not None and isinstance(e, oom)


_PY_ARG = re.compile(r"(?<![\w\-./'\"])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)= ?")


def _long_flags(parser: argparse.ArgumentParser) -> Set[str]:
    """Every ``--flag`` of ``parser`` and of its subcommands (and theirs)."""
    flags: Set[str] = set()
    for action in parser._actions:
        flags.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _long_flags(sub)
    return flags


def flag_spelling(message: str, parser: argparse.ArgumentParser) -> str:
    """``message`` with each Python argument ``name_with_underscores=`` that is a flag of ``parser`` written
    as the flag (``data_dir='x'`` -> ``--data-dir 'x'``, ``pass data_dir= a directory`` -> ``pass --data-dir
    a directory``)."""
    flags = _long_flags(parser)

    def spell(m: "re.Match[str]") -> str:
        flag = "--" + m.group(1).replace("_", "-")
        return flag + " " if flag in flags else m.group(0)

    return _PY_ARG.sub(spell, message)


#: What to do after Ctrl-C, per command.
_RESUME_HINT = {
    "search": "the run continues with: fastnas search --resume <run directory>",
    "family": "the run continues with: fastnas family --resume <run directory>",
    "train-supernet": "the training continues with: fastnas train-supernet --resume <run directory>",
    "retrain": "the retraining continues from its last epoch when the same command runs again",
    "groundtruth": "the same command continues the table (finished architectures are kept)",
    "bench": "the same command continues the benchmark (scored architectures are kept)",
}
