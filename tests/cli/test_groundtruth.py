"""``fastnas groundtruth``: the table's round trip, resume after kill -9, workers, and bad input."""

from __future__ import annotations

import csv
import json
import math

import pytest

from _cli_helpers import run_subprocess
from fastnas.data import load_dataset
from fastnas.metrics.rank import load_ground_truth
from fastnas.run.groundtruth import COLUMNS, Recipe, ground_truth, read_table, sample_archs
from fastnas.spaces import create_space

st = pytest.importorskip("scipy.stats")

# Tiny: NB201 C=4, N=1 on the bundled 8x8 digits, 1 epoch on 200 images, 100 valid, 120 test images.
TINY = ["--data", "digits", "--channels", "4", "--cells", "1", "--epochs", "1", "--train-images", "200",
        "--valid-images", "100", "--test-images", "120", "--quiet"]


def _space_and_data():
    ds = load_dataset("digits")
    space = create_space("nb201", channels=4, cells=1, num_classes=ds.num_classes, in_channels=ds.in_channels,
                         resolution=ds.resolution)
    return space, ds


def _rows_without_time(path):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_table(path)]


def test_table_round_trip_and_noise_ceiling(tmp_path):
    space, ds = _space_and_data()
    archs = sample_archs(space, 5, seed=3)
    reported = []
    out = tmp_path / "t.csv"
    result = ground_truth(space, ds, archs, out, recipe=Recipe(epochs=1, train_images=200, valid_images=100,
                                                              test_images=120), seed=3,
                          progress=lambda e, i: reported.append(i["row"]) if e == "arch" else None)
    assert result.trained == 5 and result.skipped == 0
    with open(out, newline="") as fh:
        raw = list(csv.DictReader(fh))
    assert tuple(raw[0]) == COLUMNS
    rows = read_table(out)
    assert [r["arch"] for r in rows] == [space.format(a) for a in archs]
    for got, want in zip(rows, reported):
        assert got["arch"] == want["arch"] and got["params"] == want["params"] and got["seed"] == want["seed"]
        assert got["test_accuracy"] == pytest.approx(want["test_accuracy"], abs=1e-6)
        assert got["valid_accuracy"] == pytest.approx(want["valid_accuracy"], abs=1e-6)
        # accuracies are fractions of the 120 test / 100 validation images
        assert round(got["test_accuracy"] * 120) == pytest.approx(got["test_accuracy"] * 120, abs=1e-3)
        assert round(got["valid_accuracy"] * 100) == pytest.approx(got["valid_accuracy"] * 100, abs=1e-3)
        assert got["params"] == sum(p.numel() for p in space.build(space.parse(got["arch"])).parameters())
        assert got["epochs"] == 1 and got["train_images"] == 200
    # the table is what `kendall` and `bench ranking` read
    truth = load_ground_truth(out)
    assert truth == {r["arch"]: pytest.approx(r["test_accuracy"]) for r in rows}
    # the noise ceiling against scipy on the CSV's own columns
    side = json.loads(out.with_suffix(".json").read_text())
    v = [float(r["valid_accuracy"]) for r in raw]
    t = [float(r["test_accuracy"]) for r in raw]
    want_tau = st.kendalltau(v, t).statistic
    got_tau = side["noise_ceiling"]["tau_valid_test"]
    assert (math.isnan(want_tau) and got_tau == "nan") or got_tau == pytest.approx(want_tau, abs=1e-12)
    assert side["rows"] == 5


def test_sampled_archs_are_distinct_classes_and_prefix_stable():
    space, _ = _space_and_data()
    a = sample_archs(space, 30, seed=1)
    texts = [space.format(space.canonical(x)) for x in a]
    assert len(set(texts)) == 30
    assert sample_archs(space, 10, seed=1) == a[:10]
    assert sample_archs(space, 10, seed=2) != a[:10]


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    full = tmp_path / "full.csv"
    r = run_subprocess(["groundtruth", *TINY, "--archs", "4", "--out", full])
    assert r.code == 0, r.err
    killed = tmp_path / "killed.csv"
    r = run_subprocess(["groundtruth", *TINY, "--archs", "4", "--out", killed],
                       env_extra={"FASTNAS_TEST_KILL_AT": "groundtruth:2"})
    assert r.code == -9, (r.code, r.err)
    assert len(read_table(killed)) == 2  # the kill lost nothing that was written
    r = run_subprocess(["groundtruth", *TINY, "--archs", "4", "--out", killed])
    assert r.code == 0, r.err
    assert "2 trained now, 2 already there" in r.out
    assert _rows_without_time(killed) == _rows_without_time(full)


def test_two_workers_give_the_one_worker_table(tmp_path):
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    assert run_subprocess(["groundtruth", *TINY, "--archs", "3", "--out", one]).code == 0
    r = run_subprocess(["groundtruth", *TINY, "--archs", "3", "--workers", "2", "--out", two])
    assert r.code == 0, r.err
    key = lambda r: r["arch"]  # noqa: E731 (rows arrive in completion order)
    assert sorted(_rows_without_time(two), key=key) == sorted(_rows_without_time(one), key=key)


def test_incomplete_last_line_is_trained_again(tmp_path, cli):
    out = tmp_path / "t.csv"
    assert cli("groundtruth", *TINY, "--archs", "2", "--out", out).code == 0
    before = _rows_without_time(out)
    text = out.read_text()
    out.write_text(text[: len(text) - 9])  # a write cut short by a kill
    with pytest.raises(ValueError, match="incomplete"):
        read_table(out)
    r = cli("groundtruth", *TINY, "--archs", "2", "--out", out)
    assert r.code == 0, r.err
    assert "1 trained now, 1 already there" in r.out
    assert _rows_without_time(out) == before


def test_arch_file_and_extension(tmp_path, cli):
    space, _ = _space_and_data()
    archs = [space.format(a) for a in sample_archs(space, 2, seed=5)]
    listing = tmp_path / "archs.txt"
    listing.write_text("# two architectures\n" + "\n".join(archs + archs[:1]) + "\n")
    out = tmp_path / "t.csv"
    r = cli("groundtruth", *TINY, "--arch-file", listing, "--out", out)
    assert r.code == 0, r.err
    assert [row["arch"] for row in read_table(out)] == archs
    # an earlier table works as an architecture file, and a longer sample extends the table
    out2 = tmp_path / "t2.csv"
    assert cli("groundtruth", *TINY, "--arch-file", out, "--out", out2).code == 0
    assert [row["arch"] for row in read_table(out2)] == archs


@pytest.mark.parametrize("case", ["not-in-space", "empty-file", "other-settings", "no-sidecar", "malformed",
                                  "bad-number", "not-csv"])
def test_bad_input_is_one_clear_error_and_writes_nothing(tmp_path, cli, case):
    out = tmp_path / "t.csv"
    args = ["groundtruth", *TINY, "--archs", "2", "--out", out]
    if case == "not-in-space":
        f = tmp_path / "a.txt"
        f.write_text("|nor_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|nor_conv_3x3~0|none~1|conv_7x7~2|\n")
        args = ["groundtruth", *TINY, "--arch-file", f, "--out", out]
        expect = "a.txt:1"
    elif case == "empty-file":
        f = tmp_path / "a.txt"
        f.write_text("\n")
        args = ["groundtruth", *TINY, "--arch-file", f, "--out", out]
        expect = "is empty"
    elif case == "other-settings":
        assert cli(*args).code == 0
        args = ["groundtruth", *TINY, "--archs", "2", "--out", out, "--lr", "0.01"]
        expect = "other settings"
    elif case == "no-sidecar":
        out.write_text(",".join(COLUMNS) + "\n")
        expect = "no t.json"
    elif case == "malformed":
        assert cli(*args).code == 0
        out.write_text("arch,acc\nx,1\n")
        expect = "expected the columns"
    elif case == "bad-number":
        args[args.index("--epochs") + 1] = "0"
        expect = "epochs=0"
    else:
        args[-1] = tmp_path / "t.txt"
        out = tmp_path / "t.txt"
        expect = "ending in .csv"
    before = out.read_text() if out.exists() else None
    r = cli(*args)
    assert r.code == 2
    assert expect in r.err, r.err
    assert (out.read_text() if out.exists() else None) == before
