"""``fastnas kendall`` parses a run's architecture texts with the run's own channels and cells: an elastic
space's texts name channel counts, which a default-sized space rejects."""

from __future__ import annotations

import csv
import subprocess
import sys


def test_kendall_on_an_elastic_run_of_another_width(tmp_path):
    run = tmp_path / "run"
    base = [sys.executable, "-m", "fastnas"]
    r = subprocess.run(base + ["search", "--space", "elastic_resnet", "--channels", "8", "--epochs", "1",
                               "--population", "4", "--generations", "1", "--out", str(run), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with open(run / "history.csv", newline="") as fh:
        archs = [row["arch"] for row in csv.DictReader(fh)]
    assert any("4k" in a or "6k" in a for a in archs)  # widths of C=8 stages, not of the default C=16
    truth = tmp_path / "truth.csv"
    # spelled with spaces: the texts match only through the space's parser, which must know the widths
    spaced = [a.replace("|", " | ").replace(",", ", ") for a in archs]
    truth.write_text("arch,test_accuracy\n" + "".join(f'"{a}",{50 + i}\n' for i, a in enumerate(spaced)))
    r = subprocess.run(base + ["kendall", "--run", str(run), "--truth", str(truth)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"over {len(archs)} architectures" in r.stdout
