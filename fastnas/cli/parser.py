"""The ``fastnas`` argument parser: one subcommand per job, config flags generated from the run's settings.

Every config flag has ``default=argparse.SUPPRESS``: a flag the user did not give is absent from the
parsed namespace, so it never overrides the config file or a resumed run's saved config.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, NoReturn, Optional, Sequence

from fastnas.run.config import SECTION, SECTIONS, SETTINGS, parse_sigmas
from fastnas.run.settings import Setting

__all__ = ["build_parser", "config_flags", "UsageError", "CONFIG_FLAG_DESTS", "FAMILY_DEFAULTS"]


class UsageError(Exception):
    """Bad command-line input: printed as one ``fastnas: error: ...`` line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage block
        raise UsageError(f"{message} (see {self.prog} --help)")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _none_or(conv: Callable[[str], Any]) -> Callable[[str], Any]:
    def f(text: str) -> Any:
        return None if text.strip().lower() in ("", "none") else conv(text)
    f.__name__ = conv.__name__
    return f


def _sigmas(text: str) -> tuple:
    try:
        return parse_sigmas(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[-1]) from None


#: ``fastnas export``'s default BatchNorm recalibration batches (of the run's batch size, 64 by default).
EXPORT_RECAL_BATCHES = 100


def _recal_batches(text: str) -> Any:
    if text.strip().lower() == "all":
        return "all"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 or 'all', got {text!r}")
    return n


_CONVERTERS: Dict[str, Callable[[str], Any]] = {"int": int, "float": float, "bool": _bool, "str": str,
                                                "floats": _sigmas}


def _help(s: Setting) -> str:
    text = s.help.replace("``", "").rstrip(".") if s.help else s.name.replace("_", " ")
    options = s.choice_list()
    if options is not None:
        text += f"; {'e.g.' if s.check is not None else 'one of'} {' | '.join(options)}"
    default = s.default_text
    if default is None:
        value = s.default
        default = ",".join(f"{v:g}" for v in value) if isinstance(value, (list, tuple)) else (
            "none" if value is None else str(value).lower() if isinstance(value, bool) else f"{value:g}"
            if isinstance(value, float) else str(value))
    return f"{text} (default: {default})"


#: Every config flag's dest (= setting name), generated from the run's sections.
CONFIG_FLAG_DESTS = [name for name, s in SETTINGS.items() if name != "quiet"]


def config_flags(parser: argparse.ArgumentParser, sections: Sequence[str], *,
                 only: Optional[Sequence[str]] = None) -> None:
    """Adds the flags of the settings of ``sections`` (optionally ``only`` those names) to ``parser``.

    Flags, types, help, defaults and choices come from :data:`fastnas.run.config.SECTIONS`; every flag
    has ``default=argparse.SUPPRESS`` so an absent flag never overrides a config file or a saved run.
    """
    for name in sections:
        sec = SECTION[name]
        group = parser.add_argument_group(sec.title)
        for s in sec.settings:
            if s.name == "quiet" or (only is not None and s.name not in only):
                continue
            conv = _CONVERTERS[s.kind]
            if s.optional and s.kind in ("int", "float"):
                conv = _none_or(conv)
            metavar = "BOOL" if s.kind == "bool" else "LEVELS" if s.kind == "floats" else s.name.upper()
            group.add_argument(s.flag, dest=s.name, type=conv, default=argparse.SUPPRESS, metavar=metavar,
                               help=argparse.SUPPRESS if s.hidden else _help(s))


def _common(parser: argparse.ArgumentParser, *, config_file: bool = True) -> None:
    g = parser.add_argument_group("output")
    g.add_argument("--quiet", "-q", action="store_const", const=True, default=argparse.SUPPRESS,
                   help="no progress bars: log lines only")
    if config_file:
        g.add_argument("--config", metavar="FILE.toml", default=None,
                       help="read settings from a TOML file with the flags' names as keys "
                            "(batch_size = 64); flags given on the command line win")


_SEARCH_EPILOG = """\
examples:
  fastnas search                                   # NB201 on digits, angle+flatness: ~1.5 min on 2 CPU cores
  fastnas search --metric "angle + 0.03/sigma1*flatness"   # GeNAS's flatness, weighted to balance the angle
  fastnas search --data cifar10 --data-dir ~/data --channels 16 --cells 5 --epochs 50 --device cuda
  fastnas search --config my.toml --retrain-epochs 20 --out runs/exp1
  fastnas search --resume runs/exp1                # continue a run that was killed

what happens:
  1. the training set is split in two halves (seeded): the supernet trains on one (SPOS: one uniformly
     sampled path per step), candidates are scored on --valid-size images of the other;
  2. the searcher proposes candidates and scores them with --metric;
  3. with --retrain-epochs N the winner is trained from scratch on the whole training set and tested;
  4. the run directory gets config.toml, checkpoints, search_state.json, history.csv, result.json
     ("arch": the found architecture) and plots/*.png.

metrics (GeNAS's names): accuracy (PBS: top-1 after BN recalibration), angle (ABS: RLNAS's angle between
initial and trained path weights), flatness (FBS: GeNAS's loss-against-sigma score), and weighted sums of
score parts. The default, angle + 0.2*accuracy, was chosen with `fastnas bench ranking` on two ground
truths trained from scratch (benchmarks/ranking/; README "Ranking quality"): Kendall tau against test
accuracy on Fashion-MNIST (110 NB201 cells, C=8, N=2) / digits (100, C=16, N=2):
  angle + 0.2*accuracy 0.45 / 0.28   angle 0.37 / 0.24   accuracy 0.26 / 0.14   flatness 0.32 / 0.08
  angle+flatness (GeNAS README, gamma 16) 0.32 / 0.08   flatness --alpha 0  0.12 / -0.01
  parameter count 0.39 / 0.16; the tables' own noise ceiling (valid vs test) 0.81 / 0.63.
With gamma 16 the flatness term (about gamma/L1) outweighs the angle 10-100x; gamma 0.01-0.03 balances
them ("angle + 0.03/sigma1*flatness": 0.45 / 0.16).

the no-option default: NAS-Bench-201 with C=16, N=2 on the bundled 8x8 digits (719 training images for
the supernet), 50 supernet epochs, evolution with population 20 over 10 generations (200 candidates),
scored on 256 validation images after recalibrating BatchNorm on 14 batches of 64; the supernet trains
with the space's recipe (NB201: lr 0.025 cosine to 0.001, Nesterov, weight decay 5e-4) in channels-last.
Measured on 2 shared CPU cores: about 65 s (supernet ~35%, BN recalibration ~35%, scoring ~20%); every
run prints its own split at the end. It found a cell in the top 22% of the digits table.

resume: a run killed at any moment (even kill -9) continues with --resume DIR and ends with the same
result.json (timings aside) as an uninterrupted run with the same seed, device and threads. Settings of
phases that have not started yet (e.g. the search after train-supernet) may change on resume.
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``fastnas`` parser with all subcommands."""
    import fastnas

    p = _Parser(prog="fastnas", formatter_class=_Formatter,
                description="One-shot neural architecture search: train a weight-sharing supernet, search "
                            "it with accuracy, angle and GeNAS flatness scores, report and export the winner.",
                epilog="run `fastnas <command> --help` for a command's options; "
                       "`fastnas search` with no options runs a small complete search on bundled data.")
    p.add_argument("--version", action="version", version=f"fastnas {fastnas.__version__}")
    sub = p.add_subparsers(dest="command", metavar="<command>", parser_class=_Parser)

    s = sub.add_parser("search", help="train a supernet, search it, retrain and report (the main job)",
                       formatter_class=_Formatter, epilog=_SEARCH_EPILOG,
                       description="Train the supernet (SPOS), search it, optionally retrain the winner from "
                                   "scratch, and write a report into the run directory.")
    config_flags(s, [sec.name for sec in SECTIONS])
    s.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the run in DIR (its config.toml; only settings of unstarted phases may change)")
    _common(s)

    t = sub.add_parser("train-supernet", help="only train the supernet (continue later with search --resume)",
                       formatter_class=_Formatter,
                       description="Train the SPOS supernet into a run directory. The directory's config.toml "
                                   "holds the full config; `fastnas search --resume DIR` then searches it "
                                   "(search settings may still change then).",
                       epilog="examples:\n  fastnas train-supernet --epochs 50 --out runs/sn\n"
                              "  fastnas search --resume runs/sn --metric accuracy+flatness\n")
    config_flags(t, [sec.name for sec in SECTIONS])
    t.add_argument("--resume", metavar="DIR", default=None, help="continue the training in DIR")
    _common(t)

    sc = sub.add_parser("score", help="score given architectures with a trained run's supernet",
                        formatter_class=_Formatter,
                        description="Score architectures with the trained supernet of a run (nothing is "
                                    "written into the run). Score settings default to the run's.",
                        epilog="examples:\n"
                               "  fastnas score --run runs/exp1 --arch '|nor_conv_3x3~0|+|nor_conv_3x3~0|"
                               "avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|'\n"
                               "  fastnas score --run runs/exp1 --metric accuracy --arch A --arch B --json\n")
    sc.add_argument("--run", metavar="DIR", required=True, help="a run directory with a trained supernet")
    sc.add_argument("--arch", metavar="TEXT", action="append", required=True,
                    help="architecture in the space's text form (repeat for several)")
    sc.add_argument("--json", action="store_true", help="print one JSON object per architecture")
    config_flags(sc, ["data", "score", "run"], only=SECTION["score"].names() + ["valid_size", "device", "threads"])
    _common(sc, config_file=False)

    r = sub.add_parser("retrain", help="train an architecture from scratch on the run's data and test it",
                       formatter_class=_Formatter,
                       description="Train an architecture (default: the run's result) from scratch on the "
                                   "whole training set and report its test accuracy. Writes "
                                   "DIR/retrain/<id>.json and a resumable checkpoint beside it.",
                       epilog="examples:\n  fastnas retrain --run runs/exp1 --retrain-epochs 30\n"
                              "  fastnas retrain --run runs/exp1 --arch '<text>' --retrain-epochs 5\n")
    r.add_argument("--run", metavar="DIR", required=True, help="a run directory")
    r.add_argument("--arch", metavar="TEXT", default=None, help="architecture (default: result.json's arch)")
    r.add_argument("--retrain-epochs", dest="retrain_epochs", type=int, default=argparse.SUPPRESS,
                   metavar="N", help="epochs (default: the run's --retrain-epochs, or 10 if it had none)")
    config_flags(r, ["run"], only=["device", "threads"])
    _common(r, config_file=False)

    e = sub.add_parser("export", help="write standalone PyTorch source and weights of an architecture",
                       formatter_class=_Formatter,
                       description="Write FILE.py (plain PyTorch, no fastnas import) defining the network of "
                                   "an architecture and load(), and FILE.pt with its weights inherited from the "
                                   "trained supernet (BatchNorm statistics recalibrated for that architecture). "
                                   "load() returns the network in eval mode behind the run's input "
                                   "preprocessing: it takes raw images as the dataset's source gives them "
                                   "(uint8 0..255 for MNIST, Fashion-MNIST and CIFAR; 0..16 for the digits).",
                       epilog="examples:\n  fastnas export --run runs/exp1 --out net.py\n"
                              "  fastnas export --run runs/exp1 --out net.py --recal-batches all\n"
                              "  python -c \"import net; model = net.load(); print(model)\"\n")
    e.add_argument("--run", metavar="DIR", required=True, help="a run directory with a trained supernet")
    e.add_argument("--arch", metavar="TEXT", default=None, help="architecture (default: result.json's arch)")
    e.add_argument("--out", metavar="FILE.py", required=True, dest="export_out",
                   help="source file to write; weights go to the same name with .pt")
    e.add_argument("--class-name", default="Network", help="name of the network class (default: Network)")
    e.add_argument("--recal-batches", dest="export_recal_batches", metavar="N|all", type=_recal_batches,
                   default=EXPORT_RECAL_BATCHES,
                   help="BatchNorm recalibration batches, drawn at random from the supernet-train split, or "
                        f"'all' for one pass over it (default: {EXPORT_RECAL_BATCHES})")
    e.add_argument("--recal-batch-size", dest="export_recal_batch_size", metavar="N", type=int, default=None,
                   help="images per recalibration batch (default: the run's --batch-size)")
    config_flags(e, ["run"], only=["device", "threads"])
    _common(e, config_file=False)

    k = sub.add_parser("kendall", help="rank correlation of a run's scores with ground-truth accuracies",
                       formatter_class=_Formatter,
                       description="Kendall tau-b and Spearman rho between the scores in a run's history.csv "
                                   "and ground-truth accuracies from a CSV file; writes a scatter plot.",
                       epilog="the CSV needs a header row with an architecture column (arch, architecture, "
                              "arch_str, genotype) and an accuracy column (acc, accuracy, test_acc, top1...)\n\n"
                              "example:\n  fastnas kendall --run runs/exp1 --truth nb201_cifar10.csv\n")
    k.add_argument("--run", metavar="DIR", required=True, help="a run directory with history.csv")
    k.add_argument("--truth", metavar="FILE.csv", required=True, help="ground-truth CSV")
    k.add_argument("--arch-column", default=None, metavar="NAME",
                   help="the truth CSV's architecture column (default: found by its name)")
    k.add_argument("--acc-column", default=None, metavar="NAME",
                   help="the truth CSV's accuracy column (default: found by its name, e.g. test_accuracy)")
    k.add_argument("--score-column", default="score",
                   help="history.csv column to correlate (default: score; e.g. angle, flatness)")
    k.add_argument("--plot", metavar="FILE.png", default=None, help="scatter plot (default: DIR/plots/kendall.png)")
    _common(k, config_file=False)

    _groundtruth_parser(sub)
    _family_parser(sub)
    _refine_parser(sub)

    sub.add_parser("info", help="version, kernel backends, torch, device, threads",
                   formatter_class=_Formatter,
                   description="Print the fastnas and torch versions, which kernel backends are available "
                               "(and why not), the devices and CPU threads.")
    _add_bench(sub)
    return p


_GROUNDTRUTH_EPILOG = """\
examples:
  fastnas groundtruth --data fashion-mnist --channels 8 --cells 2 --archs 100 --out truth.csv --workers 2
  fastnas groundtruth --data digits --arch-file archs.txt --epochs 10 --out digits_truth.csv
  fastnas groundtruth ... (the same command again)      # continues a killed table where it stopped

the table (one row per finished architecture, appended as each finishes):
  arch,test_accuracy,valid_accuracy,params,flops,seconds,seed,epochs,train_images
beside it FILE.json holds the settings (a rerun must use the same ones) and the noise ceiling: Kendall
tau between validation and test accuracy of the same networks, the best any score can expect to reach.
The sampled architectures are distinct classes of equivalent cells (the space's canonical form).
"""


def _groundtruth_parser(sub: Any) -> None:
    from fastnas.run.groundtruth import PRECISIONS, Recipe

    d = Recipe()
    g = sub.add_parser("groundtruth", help="train architectures from scratch: a ground-truth table for ranking",
                       formatter_class=_Formatter, epilog=_GROUNDTRUTH_EPILOG,
                       description="Train N architectures of a space (sampled, or listed in a file) from scratch "
                                   "on a seeded subset of the dataset and write a NAS-Bench-201-style table of "
                                   "their test and validation accuracy, params, FLOPs and seconds. Resumable: "
                                   "rerun the same command after a kill.")
    config_flags(g, ["data"], only=["space", "data", "data_dir", "channels", "cells"])
    a = g.add_argument_group("architectures")
    which = a.add_mutually_exclusive_group(required=True)
    which.add_argument("--archs", type=int, metavar="N", help="sample N distinct architectures (seeded)")
    which.add_argument("--arch-file", metavar="FILE", help="architectures to train: one text per line, or a CSV "
                       "with an arch column (e.g. an earlier table)")
    r = g.add_argument_group("training recipe (the same for every architecture)")
    r.add_argument("--epochs", type=int, default=d.epochs, help=f"epochs (default: {d.epochs})")
    r.add_argument("--train-images", type=int, default=d.train_images,
                   help=f"training images, a stratified subset; 0: all but the validation ones (default: {d.train_images})")
    r.add_argument("--valid-images", type=int, default=d.valid_images,
                   help=f"validation images, disjoint from the training ones (default: {d.valid_images})")
    r.add_argument("--test-images", type=int, default=d.test_images,
                   help="test images, the first of the test set; 0: all (default: 0)")
    r.add_argument("--batch-size", type=int, default=d.batch_size, help=f"batch size (default: {d.batch_size})")
    r.add_argument("--lr", type=float, default=d.lr, help=f"initial learning rate, cosine to --lr-min (default: {d.lr:g})")
    r.add_argument("--lr-min", type=float, default=d.lr_min, help=f"final learning rate (default: {d.lr_min:g})")
    r.add_argument("--momentum", type=float, default=d.momentum, help=f"SGD momentum (default: {d.momentum:g})")
    r.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help=f"weight decay (default: {d.weight_decay:g})")
    r.add_argument("--grad-clip", type=float, default=d.grad_clip,
                   help=f"gradient-norm clip, 0 to disable (default: {d.grad_clip:g})")
    r.add_argument("--augment", type=_bool, default=d.augment, metavar="BOOL",
                   help="crop-and-flip augmentation (default: false)")
    r.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="fp32, bf16 autocast, or auto (bf16 where the CPU has avx512_bf16 or AMX) (default: fp32)")
    j = g.add_argument_group("job")
    j.add_argument("--out", metavar="FILE.csv", required=True, dest="gt_out", help="the table to write or continue")
    j.add_argument("--seed", type=int, default=0, help="seeds the architectures, the data subsets and every "
                   "architecture's training (default: 0)")
    j.add_argument("--workers", type=int, default=1, help="worker processes training in parallel (default: 1)")
    j.add_argument("--threads", type=int, default=1,
                   help="torch threads per worker; 0: torch's threads divided among the workers; a table "
                        "reproduces with the same threads per worker (default: 1)")
    _common(g, config_file=False)


# ---- fastnas family

#: What ``fastnas family`` sets when the flag (or config file key) is not given: a nested family space,
#: sandwich training, and a search sized to finish on digits in a few minutes on 2 CPU cores.
FAMILY_DEFAULTS = {"space": "nb201_size", "cells": 1, "sampler": "sandwich", "epochs": 30, "population": 20,
                   "generations": 5}

_FAMILY_EPILOG = """\
examples:
  fastnas family                                   # NATS size space on digits, 3 tiers, R2: ~2.5 min on 2 CPU cores
  fastnas family --budgets 5000,15000,45274 --reward R0 --no-constraint
  fastnas family --budget-kind flops --tiers 4 --lambdas 1,2 --out runs/fam
  fastnas family --reference 8:8:8:8:8 --tiers 2      # upgrade an existing model (member 0) in 2 steps
  fastnas family --resume runs/fam                 # continue a run that was killed

what happens:
  1. the supernet of a nested family space trains with the sandwich rule (largest, smallest and 2 random
     members per step, distilled from the largest; --sampler changes it);
  2. the tiers are searched in order (--searcher, evolution by default), tier k within budget k. Tier 1
     has no reference model and is ranked by top-1 alone (with --reference: by the reward against it);
     tier k > 1 by the reward lambda1*top1 - lambda2*NFR on the search-validation images, NFR (negative
     flip rate: images member k-1 gets right and the candidate wrong) against member k-1, both terms
     fractions of the images. With the containment constraint (default) a candidate must contain member
     k-1 (its weights are a slice of the candidate's); a member never equals the one before;
  3. each member is tested on the test split with BatchNorm statistics re-estimated for it (weights
     inherited from the supernet): top-1, NFR and relative NFR (NFR / ((1 - ER_old) * ER_new)) against
     the member before;
  4. the run directory gets result.json ("members": [{"arch", "params", "flops", "top1", "nfr",
     "rel_nfr", ...}], smallest budget first, nfr/rel_nfr null for the first), plots/family.png (top-1
     against FLOPs, arrows labelled with the NFR between members) and export/: member<k>.py +
     member<k>.pt (standalone, needs only torch) and family.py + family.pt (one weight file whose
     tensors all members share; family.load_member(k) builds member k from slices of them).

budgets: --budgets P1,P2,... (strictly increasing upper limits on params, or on FLOPs in millions with
--budget-kind flops), else --tiers K budgets spaced geometrically between the smallest member's cost lo
(the reference's with --reference) and the largest member's hi: lo * (hi/lo)^(k/K), k = 1..K.

rewards: R0 = top1 (lambdas 1,0), R1 = -NFR (0,1), R2 = top1 - NFR (1,1, the default); --lambdas L1,L2
sets any finite weights >= 0, not both 0.

the no-option default: NATS-Bench's size space (nb201_size: 5 layer widths from 2..16 around the fixed
best NAS-Bench-201 cell, --channels 16 --cells 1) on the bundled 8x8 digits, 30 sandwich epochs, three
tiers each searched by evolution with population 20 over 5 generations (100 candidates per tier), scored
on 256 validation images after recalibrating BatchNorm on 14 batches of 64.

resume: a run killed at any moment (even kill -9) continues with --resume DIR and ends with the same
result.json byte for byte (timings are in state.json). Family settings may change on resume only before
the first tier's search has started.
"""


def _family_parser(sub: Any) -> None:
    f = sub.add_parser("family", help="design a nested model family (REG-NAS): one member per budget, few flips",
                       formatter_class=_Formatter, epilog=_FAMILY_EPILOG,
                       description="Train the supernet of a nested family space, search one member per budget "
                                   "(each containing the one before and ranked by top-1 and negative flips "
                                   "against it), test every member, plot the family and export it.")
    g = f.add_argument_group("family")
    g.add_argument("--tiers", dest="fam_tiers", type=int, metavar="K", default=argparse.SUPPRESS,
                   help="members of the family, with budgets spread geometrically over the space (default: 3)")
    g.add_argument("--budgets", dest="fam_budgets", metavar="P1,P2,...", default=argparse.SUPPRESS,
                   help="the members' budgets, strictly increasing (default: --tiers budgets; see below)")
    g.add_argument("--budget-kind", dest="fam_budget_kind", metavar="KIND", default=argparse.SUPPRESS,
                   help="what the budgets limit: params | flops (millions of multiply-adds) (default: params)")
    g.add_argument("--reward", dest="fam_reward", metavar="R", default=argparse.SUPPRESS,
                   help="R0 (top1) | R1 (-NFR) | R2 (top1 - NFR) (default: R2)")
    g.add_argument("--lambdas", dest="fam_lambdas", metavar="L1,L2", default=argparse.SUPPRESS,
                   help="the reward L1*top1 - L2*NFR: finite, >= 0, not both 0 (default: the reward's)")
    g.add_argument("--constraint", dest="fam_constraint", action=argparse.BooleanOptionalAction,
                   default=argparse.SUPPRESS,
                   help="member k must contain member k-1, its weights a slice of member k's (default: on)")
    g.add_argument("--reference", dest="fam_reference", metavar="ARCH", default=argparse.SUPPRESS,
                   help="an existing model to upgrade (member 0; space text form): tier 1 is searched against it "
                        "(default: none)")
    defaults = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in FAMILY_DEFAULTS.items())
    f.description += f" Family defaults: {defaults}."
    config_flags(f, ["data", "train", "search", "score", "run"], only=[
        n for n in SETTINGS if n not in ("max_params", "max_flops", "metric", "gamma", "sigmas", "alpha",
                                         "flatness_eps", "samples", "noise", "flatness_scope", "precision",
                                         "retrain_epochs", "truth")])
    for action in f._actions:  # the family's own defaults in the help of the flags it changes
        if action.dest in FAMILY_DEFAULTS and action.help:
            action.help = action.help.rsplit(" (default: ", 1)[0] + f" (default: {FAMILY_DEFAULTS[action.dest]})"
    f.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the family run in DIR (its config.toml and family.json)")
    _common(f)


# ---- fastnas refine

#: What ``fastnas refine`` sets when the flag (or config file key) is not given: sized to finish on digits
#: in a few minutes on 2 CPU cores (ResNet-20, 30 alternating epochs, 10 retraining epochs of the winner
#: and of the base).
REFINE_DEFAULTS = {"backbone": "resnet20", "epochs": 30, "retrain_epochs": 10}

_REFINE_EPILOG = """\
examples:
  fastnas refine                                   # ResNet-20 on digits, conv granularity: ~3 min on 2 CPU cores
  fastnas refine --granularity block --pretrain-epochs 5 --retrain-base
  fastnas refine --backbone resnet18 --data cifar10 --data-dir ~/data --epochs 50 --device cuda
  fastnas refine --backbone mynet.py:MyNet --data fashion-mnist --max-flops 30
  fastnas refine --searcher random                 # the baseline at the same budget
  fastnas refine --reward "accuracy + flatness"    # any fastnas score as the controller's reward
  fastnas refine --resume runs/ref                 # continue a run that was killed (even by kill -9)

what happens (NAR, Jiang et al.):
  1. the backbone is traced with torch.fx; every 3x3 conv inside a residual block is a site (--granularity
     conv: one choice per conv; block: one per residual block); skip connections and the rest of the graph
     stay as they are. Candidates: conv_3x3, conv_5x5, sep_conv_3x3, sep_conv_5x5, max_pool_3x3,
     avg_pool_3x3 (--candidates), allowed where they have no more parameters than the conv they replace
     (--max-op-params);
  2. alternating training: a child epoch of shared weights, each minibatch on one path drawn from the
     controller's policy (uniform for the first --pretrain-epochs: NAR's PreTrain), then --controller-steps
     REINFORCE updates of the LSTM controller, each on --samples architectures rewarded on a validation
     minibatch of --reward-batch images (--reward batch-accuracy: top-1 with BatchNorm on batch statistics);
  3. --derive architectures are sampled from the trained policy and scored on --valid-size validation
     images; the best is the refined model. --searcher random | evolution: the baselines, trained with
     uniform paths for the same epochs and scoring as many validation images as the controller forwarded;
  4. the winner (and with --retrain-base, the unrefined backbone) is retrained --retrain-epochs from scratch
     and tested;
  5. result.json: "ops" (0 keeps the original conv, i is candidate i), "op_names", "params", "base_params",
     "flops", "base_flops" (millions of multiply-adds per image), the controller's trace; plots/controller.png
     (reward, baseline, entropy) and plots/op_probabilities.png. fastnas export --run DIR --out net.py writes
     the refined network (needs only torch; a FILE.py:ClassName backbone: torch and that file).

resume: a run killed at any moment continues with --resume DIR; the controller, its optimizer and baseline
are saved with the shared weights at every epoch end, so it ends as an uninterrupted run would.
"""


def _refine_parser(sub: Any) -> None:
    f = sub.add_parser("refine", help="refine a backbone's operators (NAR): skips kept, an RL controller picks ops",
                       formatter_class=_Formatter, epilog=_REFINE_EPILOG,
                       description="Trace a residual network, make each 3x3 conv of its residual blocks a choice "
                                   "of cheaper operators, train the shared weights and an ENAS controller in turn, "
                                   "derive the refined network, retrain and test it.")
    g = f.add_argument_group("refine")
    g.add_argument("--searcher", dest="ref_searcher", metavar="NAME", default=argparse.SUPPRESS,
                   help="enas (the controller) | random | evolution (the baselines, same budget) (default: enas)")
    g.add_argument("--pretrain-epochs", dest="ref_pretrain_epochs", type=int, metavar="E", default=argparse.SUPPRESS,
                   help="uniform random paths for the first E epochs, no controller update (NAR's -RP) (default: 0)")
    g.add_argument("--controller-steps", dest="ref_controller_steps", type=int, metavar="N",
                   default=argparse.SUPPRESS, help="controller updates after each child epoch (default: 10)")
    g.add_argument("--samples", dest="ref_samples", type=int, metavar="M", default=argparse.SUPPRESS,
                   help="architectures sampled per controller update (default: 20)")
    g.add_argument("--reward", dest="ref_reward", metavar="R", default=argparse.SUPPRESS,
                   help="batch-accuracy (NAR's) or a fastnas metric: flatness, 'accuracy + flatness', R2 (top1 - NFR "
                        "against the base backbone), ... (default: batch-accuracy)")
    g.add_argument("--reward-batch", dest="ref_reward_batch", type=int, metavar="N", default=argparse.SUPPRESS,
                   help="validation images per controller update (default: 128)")
    g.add_argument("--flops-penalty", dest="ref_flops_penalty", type=float, metavar="W", default=argparse.SUPPRESS,
                   help="the reward loses W * flops / base_flops (default: 0)")
    g.add_argument("--derive", dest="ref_derive", type=int, metavar="N", default=argparse.SUPPRESS,
                   help="architectures sampled from the trained policy and scored on --valid-size images (default: 20)")
    g.add_argument("--retrain-base", dest="ref_retrain_base", action=argparse.BooleanOptionalAction,
                   default=argparse.SUPPRESS, help="also retrain and test the unrefined backbone (default: off)")
    c = f.add_argument_group("controller (the ENAS code's defaults)")
    for name, kind, default, text in (("hidden", int, 64, "LSTM hidden size"),
                                      ("temperature", float, 5.0, "logits are divided by it"),
                                      ("tanh-constant", float, 2.5, "then C * tanh"),
                                      ("entropy-weight", float, 1e-4, "entropy bonus added to the reward"),
                                      ("baseline-decay", float, 0.99, "of the moving-average baseline"),
                                      ("controller-lr", float, 3.5e-4, "Adam's learning rate")):
        c.add_argument(f"--{name}", dest="ref_" + name.replace("-", "_"), type=kind, metavar=name.split("-")[0].upper(),
                       default=argparse.SUPPRESS, help=f"{text} (default: {default:g})")
    defaults = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in REFINE_DEFAULTS.items())
    f.description += f" Refine defaults: {defaults}; --channels/--cells default to the backbone's own."
    config_flags(f, ["data", "train", "search", "retrain", "run"], only=[
        n for n in SETTINGS if n not in ("space", "searcher", "population", "generations", "topk", "mutations",
                                         "crossovers", "mutate_prob", "max_params", "metric", "gamma", "sigmas",
                                         "alpha", "flatness_eps", "samples", "noise", "flatness_scope",
                                         "precision", "truth", "sampler")])
    for action in f._actions:
        if action.dest in REFINE_DEFAULTS and action.help:
            action.help = action.help.rsplit(" (default: ", 1)[0] + f" (default: {REFINE_DEFAULTS[action.dest]})"
    f.add_argument("--resume", metavar="DIR", default=None,
                   help="continue the refine run in DIR (its config.toml and refine.json)")
    _common(f)


# ---- fastnas bench <benchmark>

_BENCH_RANKING_EPILOG = """\
examples:
  fastnas bench ranking --run runs/sn --truth truth.csv               # every score; writes runs/sn/bench-ranking/
  fastnas bench ranking --run runs/sn --truth truth.csv --limit 20 --variants parts,baselines --json s.json

the truth CSV: a header with an arch column and a test_accuracy column (and valid_accuracy for the noise
ceiling), one row per architecture, as fastnas groundtruth writes it.

groups of --variants: parts (accuracy, angle, flatness, -loss), alpha (flatness(alpha=A)), sigmas
(flatness(sigmas=S1/S2/S3)), noise (flatness(noise=MODE)), gamma (angle+flatness(gamma=G),
accuracy+flatness(gamma=G)), baselines (params, flops, random), default (the metric fastnas search uses by
default; always scored). A name without (...) uses the run's score settings (and a sum the preset's gamma).

written to --out: scores.csv (one row per architecture, one column per variant, test_accuracy, and the
seconds of each evaluation), settings.json, summary.json, tables.md, tau_vs_seconds.png, tau_per_score.png.
Rerunning the same command skips the architectures already in scores.csv (a kill loses at most one).
"""


def _floats(text: str) -> tuple:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _sigma_sets(text: str) -> tuple:
    sets = tuple(_sigmas(part) for part in text.split(";") if part.strip())
    if not sets:
        raise argparse.ArgumentTypeError(f"expected sigma sets like '1e-3,3e-3,6e-3;2e-3,1e-2,2e-2', got {text!r}")
    return sets


def _add_bench(sub: Any) -> None:
    """``fastnas bench <benchmark>``: one sub-subcommand per benchmark (dest ``bench``)."""
    from fastnas.run.ranking import ALPHAS, GAMMAS, SIGMA_SETS

    def listed(values: Sequence[float]) -> str:
        return ",".join(f"{v:g}" for v in values)
    b = sub.add_parser("bench", help="benchmarks of a trained run: ranking (tau of every score against a truth)",
                       formatter_class=_Formatter,
                       description="Benchmarks of a trained run's supernet. `fastnas bench <benchmark> --help` "
                                   "shows a benchmark's options.")
    benches = b.add_subparsers(dest="bench", metavar="<benchmark>", parser_class=_Parser, required=True)
    r = benches.add_parser("ranking", help="Kendall tau and Spearman of every score against a ground truth",
                           formatter_class=_Formatter, epilog=_BENCH_RANKING_EPILOG,
                           description="Score every architecture of a ground-truth table with the run's trained "
                                       "supernet and every score variant (parts, alpha, sigma sets, noise modes, "
                                       "gamma sweeps, baselines); report Kendall tau and Spearman against the test "
                                       "accuracy, the seconds per candidate and the noise ceiling.")
    r.add_argument("--run", metavar="DIR", required=True, help="a run directory with a trained supernet")
    r.add_argument("--truth", metavar="FILE.csv", dest="bench_truth", required=True,
                   help="ground-truth CSV (arch, test_accuracy)")
    r.add_argument("--out", metavar="DIR", dest="bench_out", default=None,
                   help="output directory (default: DIR/bench-ranking of --run)")
    r.add_argument("--json", metavar="FILE", dest="bench_json", default=None,
                   help='also write the summary {"scores": {NAME: {"tau", "spearman", "seconds"}}, "default", "n"}')
    r.add_argument("--limit", metavar="N", type=int, default=None, help="score only the first N architectures")
    r.add_argument("--variants", metavar="LIST", default=None,
                   help="comma-separated groups or variant names (default: all; see below)")
    r.add_argument("--seed", metavar="N", dest="bench_seed", type=int, default=0,
                   help="seed of the random baseline (default: 0; the noise seed is the run's)")
    r.add_argument("--alphas", metavar="LIST", type=_floats, default=None,
                   help=f"alpha sweep (default: {listed(ALPHAS)})")
    r.add_argument("--gammas", metavar="LIST", type=_floats, default=None,
                   help=f"gamma sweep (default: {listed(GAMMAS)})")
    r.add_argument("--sigma-sets", metavar="SETS", type=_sigma_sets, default=None,
                   help=f"sigma sets, ';'-separated, e.g. '1e-3,3e-3,6e-3;2e-3,1e-2,2e-2' (default: the "
                        f"{len(SIGMA_SETS)} sets of fastnas.run.ranking.SIGMA_SETS, plus the run's)")
    config_flags(r, ["data", "score", "run"], only=[n for n in SECTION["score"].names() if n not in ("metric", "gamma")]
                 + ["valid_size", "device", "threads"])
    _common(r, config_file=False)
