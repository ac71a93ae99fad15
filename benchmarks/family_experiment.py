"""REG-NAS against independently designed models on real data: negative flips between family members.

Per seed, on a stratified subset of Fashion-MNIST (Debian's ``dataset-fashion-mnist``, or ``--data-dir``):

* **REG-NAS**: ``fastnas family`` with the containment constraint and reward R2 (top1 - NFR): one family
  supernet trained with the sandwich rule; the members keep the family's shared weights (each member's
  BatchNorm recalibrated on its own).
* **REG-NAS, family retrained**: the members REG-NAS found, trained again from scratch as one family
  with the sandwich rule over exactly those members (every step all K members, the largest the
  teacher of the others by in-place distillation; one set of weights, each member a slice), for the
  same epochs as each independent model.
* **independent**: ``fastnas family --reward R0 --no-constraint`` designs one member per budget by top-1
  alone, with no containment; then every member is trained from scratch on its own (same training
  images, same epochs, its own seed), as separately designed models of a product line are.

Both arms get the same budgets (the default tiers of the space), the same data and the same epochs. The
negative flip rate between consecutive members and the top-1 of every member are measured on all 10,000
test images. Writes ``OUT/results.json``, ``OUT/results.md`` and ``OUT/family_nfr.png``; every run
directory stays under ``OUT`` and a rerun resumes each finished piece (kill it at any time).

    python benchmarks/family_experiment.py --out runs/family-exp --seeds 0,1,2 --workers 2
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_subset(out: Path, data_dir: str, train_images: int, seed: int) -> Path:
    """``out/fashion-<N>.npz``: ``train_images`` training images (stratified, seeded) and the whole test set."""
    from fastnas.data.idx import read_idx

    path = out / f"fashion-{train_images}.npz"
    if path.is_file():
        return path

    def pair(stem: str):
        return (read_idx(Path(data_dir) / f"{stem}-images-idx3-ubyte.gz"),
                read_idx(Path(data_dir) / f"{stem}-labels-idx1-ubyte.gz").astype(np.int64))

    tx, ty = pair("train")
    sx, sy = pair("t10k")
    rng = np.random.default_rng(seed)
    per = train_images // 10
    idx = np.concatenate([rng.permutation(np.flatnonzero(ty == c))[:per] for c in range(10)])
    idx = rng.permutation(idx)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x=tx[idx], y=ty[idx], x_test=sx, y_test=sy)
    os.replace(tmp, path)
    return path


def _fastnas(args: List[str], log: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    with open(log, "a") as fh:
        r = subprocess.run([sys.executable, "-m", "fastnas", *args], stdout=fh, stderr=subprocess.STDOUT, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"fastnas {' '.join(args)} failed (rc {r.returncode}); see {log}")


def _family(run: Path, npz: Path, seed: int, common: List[str], extra: List[str]) -> Dict[str, Any]:
    if not (run / "result.json").is_file():
        args = ["family", "--resume", str(run)] if run.exists() else [
            "family", "--data", str(npz), "--seed", str(seed), "--out", str(run), *common, *extra]
        _fastnas(args + ["--quiet", "--threads", "1"], run.parent / f"{run.name}.log")
    return json.loads((run / "result.json").read_text())


def _cached(path: Path, compute: Any) -> Any:
    """``path``'s JSON if a previous run wrote it, else ``compute()`` written there atomically."""
    from fastnas.run.rundir import write_json_atomic

    if not path.is_file():
        write_json_atomic(path, compute())
    return json.loads(path.read_text())


def _independent(run: Path, result: Dict[str, Any], seed: int, epochs: int) -> List[Dict[str, Any]]:
    """Every member of ``result`` trained from scratch on the run's supernet-train split, tested on the test
    split; top-1 and flips between consecutive members (fastnas.flip_report)."""
    import torch

    from fastnas.run.family import logits_of, prepare_family_from_run
    from fastnas.run.retrain import retrain

    def compute() -> List[Dict[str, Any]]:
        torch.set_num_threads(1)
        p, _ = prepare_family_from_run(str(run))
        space, cfg = p.space, p.config
        test = (p.dataset.test_x, p.dataset.test_y)
        archs, logits = [space.parse(m["arch"]) for m in result["members"]], []
        for k, arch in enumerate(archs):
            out = retrain(space, arch, p.train, test, epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                          lr_min=cfg.lr_min, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          grad_clip=cfg.grad_clip, seed=seed * 100 + k, keep_model=True,
                          checkpoint_path=run / f"independent-{k + 1}.pt")
            logits.append(logits_of(out["model"], test[0]))
        return _chain(space, archs, logits, test[1])

    return _cached(run / "independent.json", compute)


def _chain(space: Any, archs: List[Any], logits: List[Any], y: Any) -> List[Dict[str, Any]]:
    from fastnas.metrics.flips import flip_report

    rows = []
    for k, (arch, lg) in enumerate(zip(archs, logits)):
        row = {"arch": space.format(arch), "params": int(space.params(arch)), "flops": float(space.flops(arch)),
               "top1": float((lg.argmax(1) == y).double().mean()), "nfr": None, "rel_nfr": None}
        if k:
            rep = flip_report(logits[k - 1], lg, y)
            row.update(nfr=rep.nfr, rel_nfr=rep.rel_nfr)
        rows.append(row)
    return rows


def _family_retrained(run: Path, result: Dict[str, Any], seed: int, epochs: int) -> List[Dict[str, Any]]:
    """REG-NAS's members trained from scratch as one family (sandwich rule over exactly these members)."""
    import torch

    from fastnas.data import Batches
    from fastnas.run.family import logits_of, prepare_family_from_run
    from fastnas.seeds import derive_seed
    from fastnas.train import TrainConfig, recalibrate_member
    from fastnas.train.loop import train
    from fastnas.train.samplers import FixedSampler
    from fastnas.train.steps import Sandwich

    def compute() -> List[Dict[str, Any]]:
        torch.set_num_threads(1)
        p, _ = prepare_family_from_run(str(run))
        space, cfg = p.space, p.config
        archs = [space.parse(m["arch"]) for m in result["members"]]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "family-retrain-init"))
            supernet = space.supernet()
        x, y = p.train
        config = TrainConfig(epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, lr_min=cfg.lr_min,
                             momentum=cfg.momentum, weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
                             seed=seed)
        bseed = derive_seed(seed, "family-retrain-batches")

        def batches(epoch: int) -> Batches:
            return Batches(x, y, cfg.batch_size, seed=bseed, epoch=epoch)

        train(supernet, Sandwich(distill=True), FixedSampler((archs[-1], *archs[:-1])), batches, config,
              steps_per_epoch=len(batches(0)), rng_seed=lambda e: derive_seed(seed, f"family-retrain-epoch-{e}"))
        logits = []
        for arch in archs:
            recal = Batches(x, None, 64, order_seed=derive_seed(seed, "family-recal"), num_batches=14)
            logits.append(logits_of(recalibrate_member(supernet, arch, recal), p.dataset.test_x))
        return _chain(space, archs, logits, p.dataset.test_y)

    return _cached(run / "family_retrained.json", compute)


def one_seed(out: str, npz: str, seed: int, epochs: int, common: List[str]) -> Dict[str, Any]:
    out_p, npz_p = Path(out), Path(npz)
    reg = _family(out_p / f"reg-{seed}", npz_p, seed, common, [])
    ind_design = _family(out_p / f"ind-{seed}", npz_p, seed, common, ["--reward", "R0", "--no-constraint"])
    ind = _independent(out_p / f"ind-{seed}", ind_design, seed, epochs)
    joint = _family_retrained(out_p / f"reg-{seed}", reg, seed, epochs)
    strip = ("arch", "params", "flops", "top1", "nfr", "rel_nfr")
    return {"seed": seed, "reg": [{k: m[k] for k in strip} for m in reg["members"]], "independent": ind,
            "reg_retrained": joint}


ARMS = (("reg", "REG-NAS, shared weights", "tab:blue"),
        ("reg_retrained", "REG-NAS, family retrained", "tab:green"),
        ("independent", "independent", "tab:orange"))


def _mean(values: List[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _reduction(reg: List[float], ind: List[float]) -> float:
    return 1.0 - _mean(reg) / _mean(ind) if _mean(ind) > 0 else float("nan")


def summarise(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    tiers = len(runs[0]["reg"])
    out: Dict[str, Any] = {"seeds": [r["seed"] for r in runs], "tiers": []}
    for k in range(tiers):
        row: Dict[str, Any] = {"tier": k + 1}
        for arm, _, _ in ARMS:
            row[f"{arm}_top1"] = _mean([r[arm][k]["top1"] for r in runs])
            row[f"{arm}_params"] = _mean([r[arm][k]["params"] for r in runs])
            if k:
                row[f"{arm}_nfr"] = _mean([r[arm][k]["nfr"] for r in runs])
                row[f"{arm}_rel_nfr"] = _mean([r[arm][k]["rel_nfr"] for r in runs])
        out["tiers"].append(row)
    for arm in ("reg", "reg_retrained"):
        out[f"{arm}_nfr_reduction"] = _reduction([m["nfr"] for r in runs for m in r[arm][1:]],
                                                 [m["nfr"] for r in runs for m in r["independent"][1:]])
        out[f"{arm}_rel_nfr_reduction"] = _reduction([m["rel_nfr"] for r in runs for m in r[arm][1:]],
                                                     [m["rel_nfr"] for r in runs for m in r["independent"][1:]])
        out[f"{arm}_top1_gap_points"] = max(100 * (t["independent_top1"] - t[f"{arm}_top1"]) for t in out["tiers"])
        out[f"{arm}_per_seed_nfr_reduction"] = [
            _reduction([m["nfr"] for m in r[arm][1:]], [m["nfr"] for m in r["independent"][1:]]) for r in runs]
    return out


def write_report(out: Path, runs: List[Dict[str, Any]], summary: Dict[str, Any], settings: Dict[str, Any]) -> None:
    (out / "results.json").write_text(json.dumps({"settings": settings, "summary": summary, "runs": runs},
                                                 indent=1))
    head = " | ".join(f"{name}: params, top-1, NFR, rel NFR" for _, name, _ in ARMS)
    lines = [f"| tier | {head} |", "| --- |" + " --- |" * len(ARMS)]
    for t in summary["tiers"]:
        cells = []
        for arm, _, _ in ARMS:
            nfr = f"{100 * t[arm + '_nfr']:.2f}%" if arm + "_nfr" in t else "-"
            rel = f"{t[arm + '_rel_nfr']:.3f}" if arm + "_rel_nfr" in t else "-"
            cells.append(f"{t[arm + '_params']:,.0f}, {100 * t[arm + '_top1']:.2f}%, {nfr}, {rel}")
        lines.append(f"| {t['tier']} | " + " | ".join(cells) + " |")
    lines.append("")
    for arm, name, _ in ARMS[:2]:
        lines.append(f"{name} against independent ({len(runs)} seeds, consecutive pairs): NFR "
                     f"{100 * summary[arm + '_nfr_reduction']:+.1f}% fewer (per seed "
                     + ", ".join(f"{100 * v:+.1f}%" for v in summary[arm + "_per_seed_nfr_reduction"])
                     + f"), relative NFR {100 * summary[arm + '_rel_nfr_reduction']:+.1f}% fewer; largest top-1 "
                     f"deficit {summary[arm + '_top1_gap_points']:.2f} points")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.8 / len(ARMS)
    for j, (arm, name, color) in enumerate(ARMS):
        for r in runs:
            a.plot([m["params"] for m in r[arm]], [100 * m["top1"] for m in r[arm]], "o-", color=color, alpha=0.3)
        a.plot([t[f"{arm}_params"] for t in summary["tiers"]], [100 * t[f"{arm}_top1"] for t in summary["tiers"]],
               "s-", color=color, lw=2, label=name)
        b.bar([k + (j - (len(ARMS) - 1) / 2) * width for k in range(1, len(summary["tiers"]))],
              [100 * t[f"{arm}_nfr"] for t in summary["tiers"][1:]], width=width, color=color, label=name)
    a.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter
    a.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    a.xaxis.set_minor_formatter(NullFormatter())
    a.set_xlabel("params")
    a.set_ylabel("test top-1 (%)")
    a.legend(fontsize=7)
    b.set_xticks(range(1, len(summary["tiers"])))
    b.set_xticklabels([f"{k} -> {k + 1}" for k in range(1, len(summary["tiers"]))])
    b.set_xlabel("upgrade (member k -> k+1)")
    b.set_ylabel("negative flip rate (%, mean over seeds)")
    b.legend(fontsize=7)
    fig.suptitle(f"Fashion-MNIST, {len(runs)} seeds: negative flips between consecutive family members")
    fig.tight_layout()
    fig.savefig(out / "family_nfr.png", dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/family-exp")
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train-images", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--workers", type=int, default=1)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    npz = make_subset(out, a.data_dir, a.train_images, seed=0)
    common = ["--epochs", str(a.epochs), "--channels", str(a.channels), "--population", str(a.population),
              "--generations", str(a.generations)]
    seeds = [int(s) for s in a.seeds.split(",")]
    with ProcessPoolExecutor(max_workers=a.workers) as pool:
        runs = list(pool.map(one_seed, [str(out)] * len(seeds), [str(npz)] * len(seeds), seeds,
                             [a.epochs] * len(seeds), [common] * len(seeds)))
    # what the results depend on (not where this machine keeps its files)
    settings = {k: v for k, v in vars(a).items() if k not in ("out", "data_dir", "workers")}
    write_report(out, runs, summarise(runs), settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
