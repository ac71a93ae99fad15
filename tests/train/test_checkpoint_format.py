"""What load_checkpoint says about files it cannot use: each a ValueError naming the file and what was
expected (the kind, the format versions this fastnas reads), never a traceback from deep in torch."""

from __future__ import annotations

import pickle
import re
import warnings

import pytest
import torch

from fastnas.train import CHECKPOINT_KIND, FORMAT_VERSION, load_checkpoint, save_checkpoint
from fastnas.train.checkpoint import OLDEST_READABLE


class Thing:  # a Python object a pickle may hold and a fastnas checkpoint never does
    def __init__(self):
        self.x = 1


def _torch_save(path, obj):
    torch.save(obj, path)


def _pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)


CASES = {
    # name: (writer, object, the message (regex) after the file name)
    "older": (_torch_save, {"kind": CHECKPOINT_KIND, "format_version": OLDEST_READABLE - 1},
              r"has format_version=0, written by an older fastnas; this fastnas reads format_version 1"),
    "newer": (_torch_save, {"kind": CHECKPOINT_KIND, "format_version": FORMAT_VERSION + 1},
              r"has format_version=2, written by a newer fastnas; this fastnas reads format_version 1; upgrade"),
    "no-version": (_torch_save, {"kind": CHECKPOINT_KIND},
                   r"has no format_version; this fastnas reads format_version 1"),
    "bool-version": (_torch_save, {"kind": CHECKPOINT_KIND, "format_version": True},
                     r"has format_version=True; this fastnas reads format_version 1"),
    "text-version": (_torch_save, {"kind": CHECKPOINT_KIND, "format_version": "1"},
                     r"has format_version='1'; this fastnas reads"),
    "dict-without-kind": (_torch_save, {"model": {"w": torch.ones(2)}},
                          r"is not a fastnas checkpoint \(it holds a dict without a 'kind' entry\); expected a "
                          r"fastnas checkpoint of kind 'spos_supernet'"),
    "a-tensor": (_torch_save, torch.ones(3), r"is not a fastnas checkpoint \(it holds a Tensor\); expected a fastnas "
                                           r"checkpoint of kind 'spos_supernet'"),
    "torch-save-of-objects": (_torch_save, {"kind": CHECKPOINT_KIND, "format_version": 1, "x": Thing()},
                              r"is corrupt, truncated or not a fastnas checkpoint \(UnpicklingError: weights-only "
                              r"load failed: it holds a Python object \(.*Thing\), which a fastnas checkpoint never "
                              r"does\); expected a fastnas checkpoint of kind 'spos_supernet'"),
    "pickle-of-objects": (_pickle, {"kind": CHECKPOINT_KIND, "x": Thing()},
                          r"is corrupt, truncated or not a fastnas checkpoint \(UnpicklingError: .*\); expected a "
                          r"fastnas checkpoint of kind 'spos_supernet'"),
    "random-bytes": (lambda p, o: p.write_bytes(o), bytes(range(256)) * 4,
                     r"is corrupt, truncated or not a fastnas checkpoint .*; expected a fastnas checkpoint of kind"),
    "empty-file": (lambda p, o: p.write_bytes(o), b"",
                   r"is corrupt, truncated or not a fastnas checkpoint \(EOFError.*\); expected"),
    "another-kind": (save_checkpoint, {"kind": "retrain"}, r"holds kind='retrain', expected 'spos_supernet'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_unusable_files_are_refused_naming_the_file_and_the_expectation(tmp_path, case):
    write, obj, message = CASES[case]
    path = tmp_path / f"{case}.pt"
    write(path, obj)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and without torch's warnings about the pickle protocol on stderr
        with pytest.raises(ValueError) as info:
            load_checkpoint(path, expected_kind=CHECKPOINT_KIND)
    text = str(info.value)
    assert text.startswith(f"checkpoint {str(path)!r}"), text
    assert "\n" not in text and "add_safe_globals" not in text and "weights_only=False" not in text, text
    assert re.search(message, text), text


def test_the_versions_read_are_the_written_one_and_older_ones_declared_readable(tmp_path):
    assert OLDEST_READABLE <= FORMAT_VERSION
    for version in range(OLDEST_READABLE, FORMAT_VERSION + 1):
        path = tmp_path / f"v{version}.pt"
        save_checkpoint(path, {"kind": CHECKPOINT_KIND, "format_version": version})
        assert load_checkpoint(path, expected_kind=CHECKPOINT_KIND)["format_version"] == version


def test_a_resumed_run_refuses_an_older_supernet_checkpoint_before_running(tmp_path, capsys):
    # The CLI's resume check (prepare_from_run -> load_checkpoint) reports it as its one-line error.
    from fastnas.cli import main

    out = tmp_path / "run"
    assert main(["train-supernet", "--channels", "4", "--cells", "1", "--epochs", "1", "--limit-train", "64",
                 "--valid-size", "16", "--batch-size", "32", "--quiet", "--out", str(out)]) == 0
    payload = torch.load(out / "supernet.pt", weights_only=True)
    payload["format_version"] = OLDEST_READABLE - 1
    torch.save(payload, out / "supernet.pt")
    capsys.readouterr()
    assert main(["search", "--resume", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"fastnas: error: checkpoint {str(out / 'supernet.pt')!r} (kind='spos_supernet') has "
                              "format_version=0, written by an older fastnas"), err
