"""Property tests of every parser of user input: whatever the text or bytes, the answer is a value or a
``ValueError`` with a one-line message (the CLI prints it as ``fastnas: error: ...``), never another
exception (a traceback at the command line).

Parsers: NB201 architecture strings and DARTS genotypes (``space.parse``), ``--sigmas``, TOML config
files (``load_toml`` and then ``RunConfig.from_dict``, as ``--config FILE`` does), and the CSV readers:
ground-truth tables (``read_table``), architecture lists (``read_arch_file``), ``fastnas kendall
--truth`` (``load_ground_truth``) and the ranking benchmark's truth (``load_truth``). Inputs are random
text and bytes, and mutations of valid inputs (which reach deeper into each parser than random text).
"""

from __future__ import annotations

import os
import random
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastnas.metrics.rank import load_ground_truth
from fastnas.run.config import SETTINGS, RunConfig, load_toml, parse_sigmas
from fastnas.run.groundtruth import COLUMNS, read_arch_file, read_table
from fastnas.run.ranking.truth import load_truth
from fastnas.spaces.darts import DARTS as DARTSSpace, DARTS_V2
from fastnas.spaces.nb201 import OPS, NB201

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

NB = NB201(C=4, N=1)
DARTS = DARTSSpace()
VALID_NB = [NB.format(a) for a in (NB.sample(random.Random(s)) for s in range(8))]
VALID_DARTS = [DARTS.format(DARTS_V2), DARTS.format(DARTS.sample(random.Random(1)))]


def _one_line_value_error(fn, *args, naming=None, **kwargs):
    """Calls ``fn``; a ``ValueError`` (with a non-empty one-line message, naming ``naming`` if given: the
    file) is a fine answer, anything else that is raised fails the test."""
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        message = str(e)
        assert message.strip(), f"{type(e).__name__} with an empty message"
        assert "\n" not in message and "\r" not in message, f"a message of several lines: {message!r}"
        assert naming is None or naming in message, f"the message does not name {naming!r}: {message!r}"
        return None


@st.composite
def mutated(draw, valid, alphabet):
    """A valid text with a few random edits (delete, insert, replace, duplicate a slice)."""
    text = draw(st.sampled_from(valid))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        if op == "delete":
            j = draw(st.integers(i, min(len(text), i + 8)))
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + draw(st.text(alphabet, min_size=1, max_size=6)) + text[i:]
        elif op == "replace" and i < len(text):
            text = text[:i] + draw(st.sampled_from(alphabet)) + text[i + 1:]
        else:
            j = draw(st.integers(i, min(len(text), i + 20)))
            text = text[:j] + text[i:j] + text[j:]
    return text


NB_ALPHABET = "|+~0123456789 _-\t\n" + "".join(sorted(set("".join(OPS))))
DARTS_ALPHABET = "()[],'\"=_ 0123456789-+*.:{}\n" + "abcdefghijklmnopqrstuvwxyzG"


# ---- architectures ------------------------------------------------------------------------------

@FAST
@given(st.one_of(st.text(), mutated(VALID_NB, NB_ALPHABET)))
def test_nb201_parse(text):
    arch = _one_line_value_error(NB.parse, text)
    if arch is not None:
        assert NB.parse(NB.format(arch)) == arch == NB.validate(arch)


@FAST
@given(st.one_of(st.none(), st.integers(), st.binary(), st.lists(st.text(), max_size=6)))
def test_nb201_parse_refuses_non_text(value):
    assert _one_line_value_error(NB.parse, value) is None


@FAST
@given(st.one_of(st.text(), mutated(VALID_DARTS, DARTS_ALPHABET)))
def test_darts_parse(text):
    arch = _one_line_value_error(DARTS.parse, text)
    if arch is not None:
        assert DARTS.parse(DARTS.format(arch)) == arch


_literals = st.recursive(
    st.one_of(st.integers(-3, 12), st.sampled_from(["sep_conv_3x3", "skip_connect", "none", "max_pool_3x3", ""]),
              st.none(), st.booleans(), st.floats(allow_nan=True)),
    lambda inner: st.one_of(st.lists(inner, max_size=9), st.tuples(inner, inner)), max_leaves=30)


@FAST
@given(st.lists(st.tuples(st.sampled_from(["normal", "normal_concat", "reduce", "reduce_concat", "other", None]),
                          _literals), max_size=5))
def test_darts_parse_of_genotype_like_calls(fields):
    parts = [repr(v) if name is None else f"{name}={v!r}" for name, v in fields]
    _one_line_value_error(DARTS.parse, f"Genotype({', '.join(parts)})")


@pytest.mark.parametrize("text", [
    "Genotype(normal=[], normal_concat=10**9, reduce=[], reduce_concat=[])",
    "Genotype(" + "[" * 5000 + "]" * 5000 + ")",
    "Genotype(normal=" + "(" * 300 + ")" * 300 + ")",
    "Genotype(normal=[], normal_concat=[1" + "0" * 5000 + "], reduce=[], reduce_concat=[])",
    "Genotype(\x00)",
    "-" * 100000 + "1",
], ids=["power", "deep-list", "deep-tuple", "huge-int", "nul", "deep-unary"])
def test_darts_parse_of_hostile_genotypes(text):
    assert _one_line_value_error(DARTS.parse, text) is None


@pytest.mark.parametrize("stop", [10 ** 5, 10 ** 12])
def test_darts_parse_refuses_a_huge_range_before_making_it(stop):
    # range(0, 10**9) used to be expanded into a list (about 40 GB) before the genotype was checked.
    text = f"Genotype(normal=[], normal_concat=range(2, {stop}), reduce=[], reduce_concat=[])"
    with pytest.raises(ValueError, match=r"range\(2, \d+\) has \d+ values"):
        DARTS.parse(text)


@FAST
@given(st.one_of(st.text(), st.text("0123456789.,eE+- naif", max_size=30)))
def test_parse_sigmas(text):
    sigmas = _one_line_value_error(parse_sigmas, text)
    if sigmas is not None:
        assert all(0 < a < b for a, b in zip(sigmas, sigmas[1:])) and sigmas[0] > 0


# ---- TOML config files ----------------------------------------------------------------------------

_TOML_VALUES = st.one_of(
    st.integers(-10, 10 ** 6).map(str), st.sampled_from(["1e400", "-0.0", "nan", "inf", "-inf", "0x10", "1_000",
                                                         "true", "false", "1979-05-27", "07:32:00",
                                                         "1979-05-27T07:32:00Z", "[]", "[1, 2]", "[[1], 'a']",
                                                         "{}", "{a = 1}", '"auto"', '"cpu"', '"cuda:0"', '""',
                                                         "'2e-3,1e-2'", '"angle+flatness"', '"evolution"',
                                                         '"nb201"', '"digits"', '"x\\u0000"', "[0.002, 0.01]"]),
    st.text(max_size=12).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    st.floats(allow_nan=False, allow_infinity=False).map(repr))
_TOML_KEYS = st.one_of(st.sampled_from(sorted(SETTINGS)), st.sampled_from(sorted(SETTINGS)).map(
    lambda k: k.replace("_", "-")), st.from_regex(r"[a-z_]{1,10}", fullmatch=True))
_TABLES = st.sampled_from([None, "train", "search", "score", "data", "run", "fastnas", "bogus"])


@st.composite
def toml_documents(draw):
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        table = draw(_TABLES)
        if table is not None:
            lines.append(f"[{table}]")
        lines.append(f"{draw(_TOML_KEYS)} = {draw(_TOML_VALUES)}")
    return "\n".join(lines) + "\n"


def _config_from(path):
    return RunConfig.from_dict({k.replace("-", "_"): v for k, v in load_toml(path).items()})


@pytest.fixture
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield d


def _write(directory, name, data):
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return path


@FAST
@given(data=st.one_of(toml_documents(), st.binary(max_size=200), st.text(max_size=200)))
def test_toml_config_files(scratch, data):
    path = _write(scratch, "config.toml", data)
    try:
        load_toml(path)
    except ValueError as e:  # a file that is no config: the message names it
        assert "config.toml" in str(e), str(e)
    _one_line_value_error(_config_from, path)


@pytest.mark.parametrize("text", ["a = " + "[" * 2000 + "]" * 2000, "a = " + "{b = " * 500 + "1" + "}" * 500,
                                  "\xff\xfe = 1"], ids=["deep-array", "deep-table", "latin-1"])
def test_toml_config_files_hostile(scratch, text):
    path = _write(scratch, "config.toml", text.encode("latin-1") if "\xff" in text else text)
    assert _one_line_value_error(load_toml, path, naming="config.toml") is None


# ---- CSV files --------------------------------------------------------------------------------------

_CELLS = st.one_of(st.sampled_from(VALID_NB + ["", "nan", "inf", "-1", "0.5", "93.2", "1e999", "x", '"', "#"]),
                   st.text(max_size=10), mutated(VALID_NB, NB_ALPHABET))
_HEADERS = st.lists(st.sampled_from(list(COLUMNS) + ["architecture", "acc", "accuracy", "top1", "genotype",
                                                       "arch_2", "val_acc", "ACC", " arch ", ""]),
                    min_size=1, max_size=9)


@st.composite
def csv_texts(draw):
    header = draw(st.one_of(st.just(list(COLUMNS)), _HEADERS))
    rows = [",".join(header)]
    for _ in range(draw(st.integers(0, 5))):
        n = draw(st.sampled_from([len(header), len(header) - 1, len(header) + 1, 1]))
        cells = [draw(_CELLS) for _ in range(max(n, 0))]
        rows.append(",".join(f'"{c}"' if "," in c else c for c in cells))
    end = draw(st.sampled_from(["\n", "", "\r\n"]))
    return "\n".join(rows) + end


_FILES = st.one_of(csv_texts(), st.binary(max_size=300), st.text(max_size=300))


def _read_all(path):
    name = os.path.basename(path)
    return [_one_line_value_error(read_table, path, naming=name),
            _one_line_value_error(read_arch_file, NB, path, naming=name),
            _one_line_value_error(load_ground_truth, path, naming=name),
            _one_line_value_error(load_truth, path, NB, naming=name)]


@FAST
@given(data=_FILES)
def test_csv_readers(scratch, data):
    path = _write(scratch, "truth.csv", data)
    table, archs, truth, rows = _read_all(path)
    if archs is not None:
        assert archs and all(NB.validate(a) == a for a in archs)
    if rows is not None:
        assert rows and all(NB.validate(r.arch) == r.arch for r in rows)


@pytest.mark.parametrize("data", [b"arch,acc\n" + b"x" * 200000 + b",1\n", b"arch,acc\n\xff\xfe,1\n",
                                  b"arch,test_accuracy\n|nor_conv_3x3~0|\x00,1\n", b"\x00\x00\x00"],
                         ids=["huge-field", "not-utf-8", "nul", "only-nuls"])
def test_csv_readers_hostile(scratch, data):
    path = _write(scratch, "truth.csv", data)
    table, archs, truth, rows = _read_all(path)
    # load_ground_truth keeps architecture texts as they are (fastnas kendall matches them to the run's
    # canonical texts later), so a NUL inside a text is its business; the others parse every text.
    assert table is None and archs is None and rows is None
