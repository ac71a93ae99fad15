"""The ``fastnas`` command: ``main(argv) -> exit code``.

Bad input (an unknown name, a malformed architecture, a run directory that holds another run, a corrupt
checkpoint) is one line on stderr, ``fastnas: error: ...``, and exit code 2; it is detected before
anything is written. Library code never prints: this package does. ``FASTNAS_DEBUG=1`` shows the
traceback of such an error instead (for bug reports).

Messages of the library name Python arguments (``data_dir=``, ``arch_column=``); on the command line the
user knows them as flags, so an argument spelled with ``_`` that is a flag of ``fastnas`` is shown as that
flag (``--data-dir``). One-word names (``truth=``) already read as their flag's word and are kept.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import List, Optional, Set

__all__ = ["main"]


def main(argv: Optional[List[str]] = None) -> int:
    """Runs ``fastnas`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    from fastnas.cli.commands import COMMANDS
    from fastnas.cli.parser import UsageError, build_parser

    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        if not args.command:
            parser.print_help()
            return 0
        return COMMANDS[args.command](args)
    except (UsageError, ValueError, FileNotFoundError, NotImplementedError) as e:
        if os.environ.get("FASTNAS_DEBUG"):
            raise
        message = flag_spelling(" ".join(str(e).split()) or type(e).__name__, parser)
        print(f"fastnas: error: {message}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        hint = _RESUME_HINT.get(getattr(args, "command", None), "nothing was left half-written")
        print(f"fastnas: interrupted; {hint}", file=sys.stderr, flush=True)
        return 130


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
    "train-supernet": "the training continues with: fastnas train-supernet --resume <run directory>",
    "retrain": "the retraining continues from its last epoch when the same command runs again",
    "groundtruth": "the same command continues the table (finished architectures are kept)",
    "bench": "the same command continues the benchmark (scored architectures are kept)",
}
