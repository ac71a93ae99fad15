"""``fastnas kendall --truth FILE`` on random files: exit 0 with a result, or exit 2 with one line
``fastnas: error: ...``; never a traceback (the parser-level properties are in
tests/meta/test_parsers_property.py)."""

from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastnas.cli import main

ROWS = ["|nor_conv_3x3~0|+|none~0|skip_connect~1|+|avg_pool_3x3~0|nor_conv_1x1~1|none~2|", "", "nan", "0.5",
        "x", '"', "1e999", "arch", "acc"]


@st.composite
def truth_files(draw):
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    header = draw(st.lists(st.sampled_from(["arch", "acc", "accuracy", "architecture", "arch_x", "acc2", ""]),
                           min_size=1, max_size=4))
    lines = [",".join(header)] + [",".join(draw(st.lists(st.one_of(st.sampled_from(ROWS), st.text(max_size=8)),
                                                         max_size=5))) for _ in range(draw(st.integers(0, 4)))]
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=truth_files())
def test_kendall_truth_files(tiny_run, capsys, data):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "truth.csv")
        with open(path, "wb") as f:
            f.write(data)
        code = main(["kendall", "--run", str(tiny_run), "--truth", path, "--plot", os.path.join(d, "k.png")])
    err = capsys.readouterr().err
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fastnas: error: "), err
