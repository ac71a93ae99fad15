"""`fastnas bench ranking`: the tables of a hand-written truth, tau against scipy, resume, bad input, and each
variant's value against the score function `fastnas search` builds (an independent route)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from _cli_helpers import run_subprocess, tiny
from fastnas.cli import main

scipy_stats = pytest.importorskip("scipy.stats")

# Five NB201 cells with made-up accuracies (test and validation, not in the same order).
TRUTH = [
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|nor_conv_1x1~0|avg_pool_3x3~1|nor_conv_3x3~2|", 0.61, 0.58),
    ("|avg_pool_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|none~1|avg_pool_3x3~2|", 0.52, 0.55),
    ("|nor_conv_1x1~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|", 0.74, 0.69),
    ("|none~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|avg_pool_3x3~0|none~1|nor_conv_1x1~2|", 0.47, 0.50),
    ("|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|avg_pool_3x3~1|nor_conv_3x3~2|", 0.80, 0.77),
]


def _write_truth(path: Path, rows=TRUTH, header=("arch", "test_accuracy", "valid_accuracy")) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in rows:
            w.writerow(row)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny run with a trained supernet (no search)."""
    out = tmp_path_factory.mktemp("bench") / "run"
    assert main(["train-supernet", *tiny(), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def truth(tmp_path_factory) -> Path:
    return _write_truth(tmp_path_factory.mktemp("truth") / "truth.csv")


def _bench(cli, run, truth, out, *extra):
    return cli("bench", "ranking", "--run", run, "--truth", truth, "--out", out, "--quiet", *extra)


def _read(path: Path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _score_columns(rows):
    return [k for k in rows[0] if k not in ("arch", "test_accuracy") and not k.startswith(("seconds:", "recal:"))]


def test_help(cli):
    r = cli("bench", "ranking", "--help")
    assert r.code == 0 and "--truth" in r.out and "--variants" in r.out and "example" in r.out
    r = cli("bench")
    assert r.code == 2 and "<benchmark>" in r.err


def test_a_synthetic_truth_goes_through_and_tau_is_scipys(cli, trained, truth, tmp_path):
    from fastnas.run.config import SETTINGS

    out, summary_path = tmp_path / "out", tmp_path / "summary.json"
    r = _bench(cli, trained, truth, out, "--json", summary_path)
    assert r.code == 0, r.err
    summary = json.loads(summary_path.read_text())
    rows = _read(out / "scores.csv")
    assert [row["arch"] for row in rows] == [t[0] for t in TRUTH] and summary["n"] == len(TRUTH)
    columns = _score_columns(rows)
    assert set(columns) == set(summary["scores"])
    for name in ("accuracy", "angle", "flatness", "-loss", "flatness(alpha=0)", "flatness(noise=cumulative)",
                 "flatness(sigmas=0.001/0.003/0.006)", "angle+flatness(gamma=4)", "accuracy+flatness(gamma=64)",
                 "params", "flops", "random"):
        assert name in columns
    # the default metric of `fastnas search` (its run-config default), with the run's gamma, is a variant
    assert summary["default"].startswith(SETTINGS["metric"].default) and summary["default"] in summary["scores"]

    test = [float(row["test_accuracy"]) for row in rows]
    assert test == [t[1] for t in TRUTH]
    for name in columns:
        pairs = [(float(row[name]), t) for row, t in zip(rows, test) if math.isfinite(float(row[name]))]
        x, y = zip(*pairs)
        ref_tau = scipy_stats.kendalltau(x, y).statistic
        ref_rho = scipy_stats.spearmanr(x, y).statistic
        got = summary["scores"][name]
        if math.isnan(ref_tau):  # a constant column (e.g. accuracy on 48 images) has no tau
            assert got["tau"] is None
            continue
        assert got["tau"] == pytest.approx(ref_tau, abs=1e-12), name
        assert got["spearman"] == pytest.approx(ref_rho, abs=1e-12), name
        assert got["n"] == len(pairs)
    assert summary["scores"]["flatness"]["seconds"] > 0
    ceiling = scipy_stats.kendalltau([t[2] for t in TRUTH], [t[1] for t in TRUTH]).statistic
    assert summary["noise_ceiling"]["tau"] == pytest.approx(ceiling, abs=1e-12)
    # the params baseline is the space's own count
    from fastnas.spaces import create_space

    space = create_space("nb201", C=4, N=1, num_classes=10, in_channels=1, resolution=8)
    assert [float(row["params"]) for row in rows] == [space.params(space.parse(t[0])) for t in TRUTH]
    tables = (out / "tables.md").read_text()
    for words in ("GeNAS Table 1", "Table 5", "Table 6", "Table 8", "noise mode", "Baselines", "Noise ceiling"):
        assert words in tables
    assert tables in r.out
    for png in ("tau_vs_seconds.png", "tau_per_score.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_resume_keeps_the_rows_and_ends_as_one_run(cli, trained, truth, tmp_path):
    args = ("--variants", "parts,baselines")
    assert _bench(cli, trained, truth, tmp_path / "one", *args, "--json", tmp_path / "one.json").code == 0
    out = tmp_path / "two"
    assert _bench(cli, trained, truth, out, *args, "--limit", "2").code == 0
    first = (out / "scores.csv").read_text().splitlines()
    assert len(first) == 3
    r = _bench(cli, trained, truth, out, *args, "--json", tmp_path / "two.json")
    assert r.code == 0, r.err
    assert "2 architectures already scored" in r.err
    second = (out / "scores.csv").read_text().splitlines()
    assert second[:3] == first and len(second) == len(TRUTH) + 1  # the first rows verbatim: not recomputed

    one, two = _read(tmp_path / "one" / "scores.csv"), _read(out / "scores.csv")
    columns = _score_columns(one)
    assert [[row[c] for c in ["arch"] + columns] for row in one] == [[row[c] for c in ["arch"] + columns]
                                                                      for row in two]
    s1, s2 = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert s1["default"] == s2["default"] and s1["n"] == s2["n"]
    assert {k: (v["tau"], v["spearman"]) for k, v in s1["scores"].items()} == \
        {k: (v["tau"], v["spearman"]) for k, v in s2["scores"].items()}

    # other settings in the same directory: a clear error, nothing changed
    r = _bench(cli, trained, truth, out, "--variants", "parts")
    assert r.code == 2 and "other settings" in r.err and "variants" in r.err
    assert (out / "scores.csv").read_text().splitlines() == second

    # a row cut by a kill in the middle of its write is dropped and scored again
    text = (out / "scores.csv").read_text()
    (out / "scores.csv").write_text(text[:-40])
    assert _bench(cli, trained, truth, out, *args).code == 0
    assert (out / "scores.csv").read_text() .splitlines()[:-1] == second[:-1]
    assert _read(out / "scores.csv")[-1]["arch"] == TRUTH[-1][0]


def test_kill_9_loses_at_most_the_architecture_in_progress(trained, truth, tmp_path):
    args = ["bench", "ranking", "--run", trained, "--truth", truth, "--variants", "angle,params", "--quiet"]
    r = run_subprocess(args + ["--out", tmp_path / "k"], env_extra={"FASTNAS_TEST_KILL_AT": "bench:2"})
    assert r.code == -9, r.err
    assert len(_read(tmp_path / "k" / "scores.csv")) == 2
    assert main([str(a) for a in args + ["--out", tmp_path / "k"]]) == 0
    assert main([str(a) for a in args + ["--out", tmp_path / "ref"]]) == 0
    killed, ref = _read(tmp_path / "k" / "scores.csv"), _read(tmp_path / "ref" / "scores.csv")
    columns = ["arch"] + _score_columns(ref)
    assert [[row[c] for c in columns] for row in killed] == [[row[c] for c in columns] for row in ref]


@pytest.mark.parametrize("content, words", [
    ("", ["--truth", "is empty"]),
    ("arch,test_accuracy\n", ["--truth", "no architectures"]),
    ("name,score\nx,1\n", ["--truth", ":1:", "no architecture column"]),
    (f"arch,test_accuracy\n{TRUTH[0][0]},0.5\n{TRUTH[1][0]},high\n", ["--truth", ":3:", "'high'"]),
    (f"arch,test_accuracy\n{TRUTH[0][0]},0.5,7\n", ["--truth", ":2:", "3 cells"]),
    ("arch,test_accuracy\n|conv_9x9~0|+|none~0|none~1|+|none~0|none~1|none~2|,0.5\n",
     ["--truth", ":2:", "conv_9x9", "not an architecture of the run's space"]),
    (f"arch,test_accuracy\n{TRUTH[0][0]},0.5\n{TRUTH[0][0]},0.6\n", ["--truth", ":3:", "appears again"]),
])
def test_bad_truth_files(cli, trained, tmp_path, content, words):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    r = _bench(cli, trained, bad, tmp_path / "out")
    assert r.code == 2 and r.err.startswith("fastnas: error: ")
    for w in words:
        assert w in r.err, r.err
    assert not (tmp_path / "out").exists()  # detected before anything is written


def test_missing_truth_and_untrained_run(cli, trained, truth, tmp_path):
    r = _bench(cli, trained, tmp_path / "nope.csv", tmp_path / "out")
    assert r.code == 2 and "--truth" in r.err and "no such file" in r.err
    from _cli_helpers import TINY
    from fastnas.run import Run, RunConfig, prepare
    from fastnas.cli.commands import _given
    from fastnas.cli.parser import build_parser

    untrained = tmp_path / "untrained"
    given = _given(build_parser().parse_args(["train-supernet", *TINY, "--out", str(untrained)]))
    Run(prepare(RunConfig.from_dict(given))).start()  # a run directory whose training never ran
    r = _bench(cli, untrained, truth, tmp_path / "out")
    assert r.code == 2 and "--run" in r.err and "no trained supernet" in r.err
    r = _bench(cli, tmp_path / "no-run", truth, tmp_path / "out")
    assert r.code == 2 and "--run" in r.err
    r = _bench(cli, trained, truth, tmp_path / "out", "--variants", "flatnes(alpha=0)")
    assert r.code == 2 and "did you mean" in r.err
    assert not (tmp_path / "out").exists()


def test_each_variant_equals_the_score_function_of_the_search(trained, truth, tmp_path):
    """All alphas and gammas come from one evaluation per sigma set; each equals `make_score_fn` run directly
    with that metric and those settings (one evaluation per metric, as `fastnas search` does)."""
    from fastnas.metrics import FlatnessConfig, make_score_fn
    from fastnas.run import Run, prepare_from_run
    from fastnas.run.ranking import RankingBench

    run = Run(prepare_from_run(str(trained), {}, read_only=True))
    bench = RankingBench(run, truth, out_dir=tmp_path / "out", select=["alpha", "gamma", "noise"], limit=1)
    bench.run_all()
    row = _read(tmp_path / "out" / "scores.csv")[0]
    arch = run.space.parse(row["arch"])
    c = run.config
    base = dict(sigmas=tuple(c.sigmas), alpha=c.alpha, noise=c.noise, seed=c.seed, bn_batches=c.recal_batches,
                bn_batch_size=c.recal_batch_size, bn_mode=c.recal_mode, eps=c.flatness_eps, samples=c.samples)

    def direct(metric, gamma=None, **changes):
        fn = make_score_fn(metric, run.supernet, run.space, valid=run.p.valid, calib_x=run.p.train[0],
                           initial_state=run.initial_state, flatness_config=FlatnessConfig(**{**base, **changes}),
                           gamma=gamma, device=run.device)
        return fn(arch).value

    for alpha, name in ((0.0, "flatness(alpha=0)"), (0.1, "flatness(alpha=0.1)"), (0.5, "flatness(alpha=0.5)"),
                        (1.0, "flatness"), (4.0, "flatness(alpha=4)")):
        assert float(row[name]) == pytest.approx(direct("flatness", alpha=alpha), rel=1e-12), name
    assert float(row["flatness(noise=cumulative)"]) == pytest.approx(direct("flatness", noise="cumulative"), rel=1e-12)
    for g in (0.25, 4.0, 64.0):
        assert float(row[f"angle+flatness(gamma={g:g})"]) == pytest.approx(direct("angle+flatness", g), rel=1e-12)
        # one evaluation with clean and perturbed passes in the search; two evaluations here
        assert float(row[f"accuracy+flatness(gamma={g:g})"]) == pytest.approx(direct("accuracy+flatness", g),
                                                                              rel=1e-12)


def test_variant_names_follow_the_run_settings():
    from fastnas.run import RunConfig
    from fastnas.run.config import SETTINGS
    from fastnas.run.ranking import plan_variants

    from fastnas.metrics import Metric

    default = SETTINGS["metric"].default
    gamma = 4.0 if Metric.parse(default).gamma is not None else None  # a formula takes no gamma
    config = RunConfig(metric=default, gamma=gamma, sigmas=(1e-3, 3e-3, 6e-3), alpha=0.5, noise="shared")
    plan = plan_variants(config, alphas=(0.0, 0.5), gammas=(4.0, 16.0), sigma_sets=[(2e-3, 1e-2, 2e-2)])
    names = set(plan.variants)
    # the run's sigmas, alpha and noise are the reference: only what differs is in a name
    assert {"flatness", "flatness(alpha=0)", "flatness(sigmas=0.002/0.01/0.02)", "flatness(noise=independent)",
            "flatness(noise=cumulative)"} <= names
    assert plan.variants["flatness"].sigmas == (1e-3, 3e-3, 6e-3) and plan.variants["flatness"].noise == "shared"
    # the default metric with the run's gamma; a sum's own gamma is left out of its name
    if Metric.parse(default).gamma is not None:
        assert plan.default == f"{default}(gamma=4)" and plan.variants[plan.default].gamma == 4.0
    else:
        assert plan.default == default
    assert "accuracy+flatness" in names and plan.variants["accuracy+flatness"].gamma == 16.0
    assert [label for label, _ in plan.tables["sigmas"]] == ["0.002/0.01/0.02", "0.001/0.003/0.006"]
    only = plan_variants(config, select=["baselines"])
    assert set(only.variants) == {"params", "flops", "random", only.default}
    for v in plan.variants.values():
        assert "," not in v.name
