"""NAR on real data: CIFAR ResNet-20 refined on Fashion-MNIST, refined vs base trained from scratch.

Per seed, on a stratified subset of Fashion-MNIST (Debian's ``dataset-fashion-mnist``, or ``--data-dir``),
28x28 images, all 10,000 test images:

* ``fastnas refine --granularity conv`` and ``--granularity block`` (the ENAS controller, NAR's reward:
  top-1 on a validation minibatch), each winner retrained from scratch and tested; the base ResNet-20
  retrained with the same recipe and seed (``--retrain-base``, once per seed);
* the baselines at the same budget: ``--searcher random`` and ``--searcher evolution`` (uniform
  shared-weight training for the same epochs, then as many validation images scored as the controller
  forwarded), conv granularity; their winners' validation score and FLOPs are compared with the
  controller's (no retraining).

Target of the issue: at least 10% fewer FLOPs at a test accuracy within 0.3 points of the base. Writes
``OUT/results.json`` and ``OUT/results.md``; every run directory stays under ``OUT`` and a rerun resumes
each piece (kill it at any time).

    python benchmarks/refine_experiment.py --out runs/refine-exp --seeds 0,1,2 --baseline-seeds 0,1 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from family_experiment import make_subset  # noqa: E402  (the same stratified Fashion-MNIST subset)

ARMS = ("conv", "block", "random", "evolution")


def _refine(run: Path, npz: Path, seed: int, common: List[str], extra: List[str], log: Path) -> Dict[str, Any]:
    result = run / "result.json"
    if not (result.is_file() and (run / "state.json").is_file()
            and json.loads((run / "state.json").read_text())["phases"].get("report") == "done"):
        args = ["--resume", str(run)] if (run / "config.toml").is_file() else \
            ["--out", str(run), "--data", str(npz), "--seed", str(seed), *common, *extra]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        with open(log, "a") as f:
            subprocess.run([sys.executable, "-m", "fastnas", "refine", "--quiet", "--threads", "1", *args],
                           check=True, stdout=f, stderr=subprocess.STDOUT, env=env)
    return json.loads(result.read_text())


def one(out: str, npz: str, seed: int, arm: str, common: List[str], retrain_epochs: int) -> Dict[str, Any]:
    run = Path(out) / f"seed{seed}-{arm}"
    extra = {"conv": ["--granularity", "conv", "--retrain-epochs", str(retrain_epochs), "--retrain-base"],
             "block": ["--granularity", "block", "--retrain-epochs", str(retrain_epochs)],
             "random": ["--granularity", "conv", "--searcher", "random", "--retrain-epochs", "0"],
             "evolution": ["--granularity", "conv", "--searcher", "evolution", "--retrain-epochs", "0"]}[arm]
    r = _refine(run, Path(npz), seed, common, extra, Path(out) / f"seed{seed}-{arm}.log")
    return {"seed": seed, "arm": arm, "arch": r["arch"], "op_names": r["op_names"], "score": r["score"],
            "flops": r["flops"], "base_flops": r["base_flops"], "params": r["params"],
            "base_params": r["base_params"], "flops_reduction": r["flops_reduction"],
            "test_accuracy": r["test_accuracy"], "base_test_accuracy": r["base_test_accuracy"],
            "n_scored": r["search"]["n_scored"], "controller_images": r["refine"]["controller_images"],
            "seconds": r["timings"]["total"]}


def _mean(values: List[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarise(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    base = {r["seed"]: r["base_test_accuracy"] for r in rows if r["arm"] == "conv"}
    out: Dict[str, Any] = {"base_test_accuracy": _mean(list(base.values()))}
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue
        entry = {"flops_reduction": _mean([r["flops_reduction"] for r in mine]),
                 "valid_score": _mean([r["score"] for r in mine]), "seeds": len(mine)}
        if mine[0]["test_accuracy"] is not None:
            entry["test_accuracy"] = _mean([r["test_accuracy"] for r in mine])
            entry["delta_vs_base_pts"] = _mean([100 * (r["test_accuracy"] - base[r["seed"]]) for r in mine
                                                if r["seed"] in base])
            entry["target_met_seeds"] = sum(1 for r in mine if r["seed"] in base and r["flops_reduction"] >= 0.10
                                            and 100 * (base[r["seed"]] - r["test_accuracy"]) <= 0.3)
        out[arm] = entry
    return out


def write_report(out: Path, rows: List[Dict[str, Any]], summary: Dict[str, Any], settings: Dict[str, Any]) -> None:
    lines = ["# NAR refinement of ResNet-20 on Fashion-MNIST", "",
             f"Settings: {json.dumps(settings)}", "",
             "| seed | arm | ops | FLOPs (M) | fewer FLOPs | params | valid score | test top-1 | base test top-1 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        test = "-" if r["test_accuracy"] is None else f"{100 * r['test_accuracy']:.2f}%"
        base = "-" if r["base_test_accuracy"] is None else f"{100 * r['base_test_accuracy']:.2f}%"
        lines.append(f"| {r['seed']} | {r['arm']} | `{r['arch']}` | {r['flops']:.2f} / {r['base_flops']:.2f} | "
                     f"{100 * r['flops_reduction']:.1f}% | {r['params']:,} / {r['base_params']:,} | {r['score']:.4f} | "
                     f"{test} | {base} |")
    lines += ["", "Summary (means over seeds):", "", "```", json.dumps(summary, indent=2), "```", ""]
    tmp = out / "results.md.tmp"
    tmp.write_text("\n".join(lines))
    os.replace(tmp, out / "results.md")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/refine-exp")
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--baseline-seeds", default=None, help="seeds of the random/evolution arms (default: --seeds)")
    ap.add_argument("--train-images", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=8, help="shared-weight (alternating) epochs")
    ap.add_argument("--retrain-epochs", type=int, default=8)
    ap.add_argument("--controller-steps", type=int, default=5)
    ap.add_argument("--controller-lr", type=float, default=3.5e-3)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    npz = make_subset(out, args.data_dir, args.train_images, 0)
    common = ["--epochs", str(args.epochs), "--controller-steps", str(args.controller_steps),
              "--controller-lr", str(args.controller_lr), "--valid-size", "512", "--batch-size", "64"]
    settings = {"train_images": args.train_images, "epochs": args.epochs, "retrain_epochs": args.retrain_epochs,
                "controller_steps": args.controller_steps, "controller_lr": args.controller_lr,
                "backbone": "resnet20 (width 16, 3 blocks per stage)", "seeds": args.seeds}
    baseline_seeds = {int(s) for s in (args.baseline_seeds or args.seeds).split(",")}
    jobs = [(int(s), arm) for s in args.seeds.split(",") for arm in args.arms.split(",")
            if arm in ("conv", "block") or int(s) in baseline_seeds]
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        rows = list(pool.map(one, *zip(*[(str(out), str(npz), s, arm, common, args.retrain_epochs)
                                         for s, arm in jobs])))
    summary = summarise(rows)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps({"settings": settings, "rows": rows, "summary": summary}, indent=2))
    os.replace(tmp, out / "results.json")
    write_report(out, rows, summary, settings)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
