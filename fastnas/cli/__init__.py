"""The ``fastnas`` command: ``main(argv) -> exit code``.

Bad input (an unknown name, a malformed architecture, a run directory that holds another run, a corrupt
checkpoint) is one line on stderr, ``fastnas: error: ...``, and exit code 2; it is detected before
anything is written. Library code never prints: this package does. ``FASTNAS_DEBUG=1`` shows the
traceback of such an error instead (for bug reports).
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional

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
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"fastnas: error: {message}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        hint = _RESUME_HINT.get(getattr(args, "command", None), "nothing was left half-written")
        print(f"fastnas: interrupted; {hint}", file=sys.stderr, flush=True)
        return 130


#: What to do after Ctrl-C, per command.
_RESUME_HINT = {
    "search": "the run continues with: fastnas search --resume <run directory>",
    "family": "the run continues with: fastnas family --resume <run directory>",
    "train-supernet": "the training continues with: fastnas train-supernet --resume <run directory>",
    "retrain": "the retraining continues from its last epoch when the same command runs again",
    "groundtruth": "the same command continues the table (finished architectures are kept)",
    "bench": "the same command continues the benchmark (scored architectures are kept)",
}
