"""REG-NAS against independently designed models on real data: negative flips between family members.

Per seed, on a stratified subset of Fashion-MNIST (Debian's ``dataset-fashion-mnist``, or ``--data-dir``):

* **REG-NAS**: ``fastnas family`` with the containment constraint and reward R2 (top1 - NFR): one family
  supernet trained with the sandwich rule; the members keep the family's shared weights (each member's
  BatchNorm recalibrated on its own).
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


def _independent(run: Path, result: Dict[str, Any], seed: int, epochs: int) -> List[Dict[str, Any]]:
    """Every member of ``result`` trained from scratch on the run's supernet-train split, tested on the test
    split; top-1 and flips between consecutive members (fastnas.flip_report)."""
    import torch

    from fastnas.metrics.flips import flip_report
    from fastnas.run.family import prepare_family_from_run
    from fastnas.run.retrain import retrain

    done = run / "independent.json"
    if done.is_file():
        return json.loads(done.read_text())
    torch.set_num_threads(1)
    p, _ = prepare_family_from_run(str(run))
    space, cfg = p.space, p.config
    x_test, y_test = p.dataset.test_x, p.dataset.test_y
    rows, previous = [], None
    for k, member in enumerate(result["members"]):
        arch = space.parse(member["arch"])
        out = retrain(space, arch, p.train, (x_test, y_test), epochs=epochs, batch_size=cfg.batch_size,
                      lr=cfg.lr, lr_min=cfg.lr_min, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                      grad_clip=cfg.grad_clip, seed=seed * 100 + k, keep_model=True,
                      checkpoint_path=run / f"independent-{k + 1}.pt")
        with torch.no_grad():
            logits = torch.cat([out["model"](x_test[i:i + 512]) for i in range(0, len(y_test), 512)])
        row = {"arch": member["arch"], "params": member["params"], "flops": member["flops"],
               "top1": float((logits.argmax(1) == y_test).double().mean()), "nfr": None, "rel_nfr": None}
        if previous is not None:
            rep = flip_report(previous, logits, y_test)
            row.update(nfr=rep.nfr, rel_nfr=rep.rel_nfr)
        rows.append(row)
        previous = logits
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    os.replace(tmp, done)
    return rows


def one_seed(out: str, npz: str, seed: int, epochs: int, common: List[str]) -> Dict[str, Any]:
    out_p, npz_p = Path(out), Path(npz)
    reg = _family(out_p / f"reg-{seed}", npz_p, seed, common, [])
    ind_design = _family(out_p / f"ind-{seed}", npz_p, seed, common, ["--reward", "R0", "--no-constraint"])
    ind = _independent(out_p / f"ind-{seed}", ind_design, seed, epochs)
    strip = ("arch", "params", "flops", "top1", "nfr", "rel_nfr")
    return {"seed": seed, "reg": [{k: m[k] for k in strip} for m in reg["members"]], "independent": ind}


def _mean(values: List[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def summarise(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    tiers = len(runs[0]["reg"])
    out: Dict[str, Any] = {"seeds": [r["seed"] for r in runs], "tiers": []}
    for k in range(tiers):
        row: Dict[str, Any] = {"tier": k + 1}
        for arm in ("reg", "independent"):
            row[f"{arm}_top1"] = _mean([r[arm][k]["top1"] for r in runs])
            row[f"{arm}_params"] = _mean([r[arm][k]["params"] for r in runs])
            if k:
                row[f"{arm}_nfr"] = _mean([r[arm][k]["nfr"] for r in runs])
                row[f"{arm}_rel_nfr"] = _mean([r[arm][k]["rel_nfr"] for r in runs])
        out["tiers"].append(row)
    pairs = out["tiers"][1:]
    reg_nfr, ind_nfr = _mean([t["reg_nfr"] for t in pairs]), _mean([t["independent_nfr"] for t in pairs])
    out["nfr_reduction"] = 1.0 - reg_nfr / ind_nfr if ind_nfr > 0 else float("nan")
    out["top1_gap_points"] = max(100 * (t["independent_top1"] - t["reg_top1"]) for t in out["tiers"])
    out["per_seed_nfr_reduction"] = [
        1.0 - _mean([m["nfr"] for m in r["reg"][1:]]) / _mean([m["nfr"] for m in r["independent"][1:]])
        for r in runs]
    return out


def write_report(out: Path, runs: List[Dict[str, Any]], summary: Dict[str, Any], settings: Dict[str, Any]) -> None:
    (out / "results.json").write_text(json.dumps({"settings": settings, "summary": summary, "runs": runs},
                                                 indent=1))
    lines = ["| tier | params (REG / ind) | top-1 REG | top-1 independent | NFR REG | NFR independent | "
             "rel NFR REG | rel NFR independent |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for t in summary["tiers"]:
        def pct(key: str) -> str:
            return f"{100 * t[key]:.2f}%" if key in t else "-"

        def rel(key: str) -> str:
            return f"{t[key]:.3f}" if key in t else "-"
        lines.append(f"| {t['tier']} | {t['reg_params']:,.0f} / {t['independent_params']:,.0f} | {pct('reg_top1')} | "
                     f"{pct('independent_top1')} | {pct('reg_nfr')} | {pct('independent_nfr')} | "
                     f"{rel('reg_rel_nfr')} | {rel('independent_rel_nfr')} |")
    lines += ["", f"NFR reduction (mean over consecutive pairs and {len(runs)} seeds): "
              f"{100 * summary['nfr_reduction']:.1f}% (per seed: "
              + ", ".join(f"{100 * v:.1f}%" for v in summary["per_seed_nfr_reduction"]) + "); largest top-1 "
              f"deficit of REG-NAS: {summary['top1_gap_points']:.2f} points"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for arm, color, label in (("reg", "tab:blue", "REG-NAS (containment + R2, shared weights)"),
                              ("independent", "tab:orange", "independent (R0, no constraint, own training)")):
        for r in runs:
            a.plot([m["params"] for m in r[arm]], [100 * m["top1"] for m in r[arm]], "o-", color=color, alpha=0.35)
        a.plot([t[f"{arm}_params"] for t in summary["tiers"]], [100 * t[f"{arm}_top1"] for t in summary["tiers"]],
               "s-", color=color, lw=2, label=label)
        b.bar([k + (0.2 if arm == "reg" else -0.2) for k in range(1, len(summary["tiers"]))],
              [100 * t[f"{arm}_nfr"] for t in summary["tiers"][1:]], width=0.4, color=color, label=label)
    a.set_xscale("log")
    a.set_xlabel("params")
    a.set_ylabel("test top-1 (%)")
    a.legend(fontsize=7)
    b.set_xticks(range(1, len(summary["tiers"])))
    b.set_xticklabels([f"{k} -> {k + 1}" for k in range(1, len(summary["tiers"]))])
    b.set_xlabel("upgrade (member k -> k+1)")
    b.set_ylabel("negative flip rate (%)")
    b.legend(fontsize=7)
    fig.suptitle(f"Fashion-MNIST, {len(runs)} seeds: NFR reduction {100 * summary['nfr_reduction']:.1f}%")
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
    settings = {k: v for k, v in vars(a).items()}
    write_report(out, runs, summarise(runs), settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
