from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest

from fastnas.metrics.rank import RankResult, correlate, kendall_tau, load_ground_truth, scatter_plot, spearman

st = pytest.importorskip("scipy.stats")


def _scipy(x, y):
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if x.size < 2:
        return math.nan, math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return st.kendalltau(x, y).statistic, st.spearmanr(x, y).statistic


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-12


@pytest.mark.parametrize("seed", range(40))
def test_matches_scipy_random_with_ties_and_nans(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 80))
    if seed % 3 == 0:
        x, y = rng.normal(size=n), rng.normal(size=n)
    else:  # many ties
        x = rng.integers(0, int(rng.integers(1, 8)), n).astype(float)
        y = rng.integers(0, int(rng.integers(1, 8)), n).astype(float)
    if n and seed % 2:
        x[rng.integers(0, n, size=max(1, n // 10))] = np.nan
        y[rng.integers(0, n)] = np.nan
    tau, rho = _scipy(x, y)
    assert _same(kendall_tau(x, y), tau)
    assert _same(spearman(x, y), rho)


def test_edge_cases():
    assert kendall_tau([1, 2, 3], [1, 2, 3]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert spearman([1, 2, 3], [3, 2, 1]) == -1.0
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))  # constant side
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert math.isnan(kendall_tau([1.0], [2.0]))
    assert math.isnan(kendall_tau([], []))
    with pytest.raises(ValueError, match="paired"):
        kendall_tau([1, 2], [1, 2, 3])


def test_large_is_fast_and_exact():
    rng = np.random.default_rng(0)
    x = rng.normal(size=15625)
    y = np.round(x + rng.normal(size=15625), 1)  # ties in y
    t0 = time.perf_counter()
    tau, rho = kendall_tau(x, y), spearman(x, y)
    assert time.perf_counter() - t0 < 2.0
    ref_tau, ref_rho = _scipy(x, y)
    assert abs(tau - ref_tau) < 1e-12 and abs(rho - ref_rho) < 1e-12


def test_load_ground_truth_autodetect(tmp_path):
    p = tmp_path / "gt.csv"
    p.write_text("index,Arch,test_acc,params\n0,a-b,91.5,3\n1,c-d,,4\n2,e-f,88.0,5\n2,e-f,88.0,5\n")
    truth = load_ground_truth(p)
    assert truth["a-b"] == 91.5 and truth["e-f"] == 88.0 and math.isnan(truth["c-d"])
    q = tmp_path / "gt2.csv"
    q.write_text("architecture_str,cifar10_accuracy\nx,1\ny,2\n")  # fuzzy: the only 'arch'/'acc' columns
    assert load_ground_truth(q) == {"x": 1.0, "y": 2.0}
    assert load_ground_truth(p, arch_column="index", acc_column="params") == {"0": 3.0, "1": 4.0, "2": 5.0}


def test_load_ground_truth_errors(tmp_path):
    p = tmp_path / "gt.csv"
    p.write_text("name,score\nx,1\n")
    with pytest.raises(ValueError, match=r"columns are \['name', 'score'\]"):
        load_ground_truth(p)
    with pytest.raises(ValueError, match="acc_column='nope'"):
        load_ground_truth(p, arch_column="name", acc_column="nope")
    p.write_text("arch,acc\nx,high\n")
    with pytest.raises(ValueError, match=r"gt.csv:2.*'high'"):
        load_ground_truth(p)
    p.write_text("arch,acc\nx,1\nx,2\n")
    with pytest.raises(ValueError, match="appears again"):
        load_ground_truth(p)
    p.write_text("arch,train_acc,test_acc_200\nx,1,2\n")
    assert load_ground_truth(p, acc_column="test_acc_200") == {"x": 2.0}
    with pytest.raises(ValueError, match="several columns"):
        load_ground_truth(p)


def test_correlate_matches_by_text_and_counts():
    truth = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": float("nan")}
    scores = {"A": 10.0, "B": 30.0, "C": 20.0, "D": float("nan"), "E": 5.0, "Z": 1.0}
    res = correlate(scores, truth, canonicalize=str.lower)
    assert isinstance(res, RankResult)
    assert (res.n, res.n_dropped, res.n_unmatched) == (3, 2, 1)
    assert res.tau == pytest.approx(st.kendalltau([10, 30, 20], [1, 2, 3]).statistic)
    assert res.spearman == pytest.approx(0.5)
    with pytest.raises(ValueError, match="canonicalize"):
        correlate(scores, truth)
    assert res.to_dict()["n"] == 3


def test_scatter_plot_writes_png(tmp_path):
    rng = np.random.default_rng(1)
    truth = {f"arch{i}": float(v) for i, v in enumerate(rng.normal(size=50))}
    scores = {k: v + float(rng.normal()) for k, v in truth.items()}
    path = tmp_path / "scatter.png"
    res = scatter_plot(scores, truth, path, title="toy")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert res.n == 50 and res.tau > 0


def test_correlate_drops_flagged_and_nonfinite_scores():
    # A flagged candidate's score is -inf (fastnas.metrics.scores); kept, the three would be tied last
    # and count as concordant/discordant pairs. Dropped, tau is that of the finite scores alone.
    truth = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0, "f": 6.0, "g": 7.0, "h": float("inf")}
    scores = {"a": 0.3, "b": 0.1, "c": 0.2, "d": 0.5, "e": float("-inf"), "f": float("-inf"),
              "g": float("inf"), "h": 0.4}
    res = correlate(scores, truth)
    finite = ["a", "b", "c", "d"]
    expected = _scipy([scores[k] for k in finite], [truth[k] for k in finite])
    assert (res.n, res.n_flagged, res.n_dropped, res.n_unmatched) == (4, 3, 4, 0)
    assert _same(res.tau, expected[0]) and _same(res.spearman, expected[1])
    # by hand: of the 6 pairs of (0.3,1) (0.1,2) (0.2,3) (0.5,4), 4 concordant, 2 discordant
    assert res.tau == pytest.approx(1 / 3)


def test_correlate_drops_candidates_named_flagged_even_with_a_finite_score():
    truth = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    scores = {"a": 1.0, "b": 2.0, "c": 3.0, "d": -5.0}
    res = correlate(scores, truth, flagged={"d"})
    assert (res.n, res.n_flagged, res.n_dropped) == (3, 1, 1) and res.tau == pytest.approx(1.0)
    assert correlate(scores, truth).tau < 1.0


def test_scatter_plot_drops_flagged_too(tmp_path):
    truth = {f"a{i}": float(i) for i in range(6)}
    scores = {f"a{i}": float(i) for i in range(6)}
    scores["a0"] = scores["a1"] = float("-inf")
    res = scatter_plot(scores, truth, tmp_path / "k.png")
    assert (res.n, res.n_flagged) == (4, 2) and res.tau == pytest.approx(1.0)


def test_kendall_command_says_what_it_dropped(tmp_path, capsys):
    import csv

    from fastnas.cli import main
    from fastnas.run.config import RunConfig
    from fastnas.run.rundir import RunDir

    archs = ["|none~0|+|none~0|none~1|+|none~0|none~1|none~2|".replace("none~2", f"{op}~2")
             for op in ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")]
    run = RunDir(tmp_path / "run")
    run.create(RunConfig(out=str(tmp_path / "run")))
    with open(run / run.HISTORY, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "generation", "origin", "arch", "score", "flagged"])
        for i, (arch, score, flagged) in enumerate(zip(archs, ["1.0", "2.0", "3.0", "-inf", "-inf"], "00011")):
            w.writerow([i, 0, "random", arch, score, flagged])
    truth = tmp_path / "truth.csv"
    with open(truth, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["arch", "acc"])
        for arch, acc in zip(archs, ["10", "20", "", "40", "50"]):
            w.writerow([arch, acc])
    assert main(["kendall", "--run", str(run.path), "--truth", str(truth), "--plot", str(tmp_path / "k.png")]) == 0
    out = capsys.readouterr().out
    assert "Kendall tau 1.0000" in out and "over 2 architectures" in out
    assert "dropped: 2 with a flagged or non-finite score, 1 with no finite accuracy; 0 without ground truth" in out


def test_load_ground_truth_of_a_missing_file_names_it_without_errno(tmp_path):
    with pytest.raises(FileNotFoundError, match="csv_path=.*missing.csv'?: no such file") as e:
        load_ground_truth(tmp_path / "missing.csv")
    assert "Errno" not in str(e.value)
