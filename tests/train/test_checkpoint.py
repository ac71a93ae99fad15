"""Checkpoint files and resuming a killed training run."""

from __future__ import annotations

import os

import pytest
import torch

from fastnas.train import (CHECKPOINT_KIND, INIT_FILENAME, INIT_KIND, TrainConfig, load_checkpoint, save_checkpoint,
                           train_supernet)

from spos_toy import make_data, make_toy

CFG = TrainConfig(epochs=3, batch_size=16, nesterov=True, weight_decay=1e-2)


class Killed(Exception):
    pass


def _kill_at(epoch=None, step=None):
    """A progress callback that raises at the end of ``epoch``, or at ``step`` of ``epoch``."""
    def progress(event, info):
        if event == "epoch" and step is None and info["epoch"] == epoch:
            raise Killed
        if event == "step" and step is not None and info["epoch"] == epoch and info["step"] == step:
            raise Killed
    return progress


def _uninterrupted():
    net, space = make_toy(init_seed=0)
    x, y = make_data()
    res = train_supernet(net, space, x, y, CFG)
    return net.state_dict(), res


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_save_load_roundtrip_is_atomic(tmp_path):
    path = tmp_path / "sub" / "c.pt"
    save_checkpoint(path, {"kind": "thing", "t": torch.arange(3), "n": [1, 2.5, "x", None]})
    save_checkpoint(path, {"kind": "thing", "t": torch.arange(4)})  # overwrite
    p = load_checkpoint(path, expected_kind="thing")
    assert torch.equal(p["t"], torch.arange(4)) and p["format_version"] == 1
    assert os.listdir(path.parent) == ["c.pt"]  # no temporary files left


def test_corrupt_checkpoint_raises_with_path(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_checkpoint(garbage)
    truncated = tmp_path / "truncated.pt"
    save_checkpoint(truncated, {"kind": "thing", "t": torch.randn(1000)})
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(ValueError, match="truncated.pt.*corrupt"):
        load_checkpoint(truncated)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_corrupt_checkpoint_stops_the_trainer(tmp_path):
    ckpt = tmp_path / "supernet.pt"
    ckpt.write_bytes(b"\x00" * 100)
    net, space = make_toy()
    x, y = make_data()
    with pytest.raises(ValueError, match="supernet.pt"):
        train_supernet(net, space, x, y, CFG, checkpoint_path=ckpt)


def test_foreign_checkpoints_are_refused(tmp_path):
    other = tmp_path / "other.pt"
    save_checkpoint(other, {"kind": "search_state"})
    with pytest.raises(ValueError, match="kind='search_state', expected 'spos_supernet'"):
        load_checkpoint(other, expected_kind=CHECKPOINT_KIND)
    with pytest.raises(ValueError, match="fingerprint"):
        load_checkpoint(other, expected_fingerprint="0123")
    not_fastnas = tmp_path / "plain.pt"
    torch.save({"weight": torch.ones(2)}, not_fastnas)
    with pytest.raises(ValueError, match="not a fastnas checkpoint"):
        load_checkpoint(not_fastnas)
    newer = tmp_path / "newer.pt"
    save_checkpoint(newer, {"kind": CHECKPOINT_KIND, "format_version": 99})
    with pytest.raises(ValueError, match="format_version=99"):
        load_checkpoint(newer)

    # The trainer refuses a checkpoint of another kind, config or space.
    net, space = make_toy()
    x, y = make_data()
    with pytest.raises(ValueError, match="kind='search_state'"):
        train_supernet(net, space, x, y, CFG, checkpoint_path=other)
    ckpt = tmp_path / "supernet.pt"
    train_supernet(net, space, x, y, TrainConfig(epochs=1, batch_size=16), checkpoint_path=ckpt)
    with pytest.raises(ValueError, match="epochs: checkpoint 1 vs now 3"):
        train_supernet(net, space, x, y, CFG, checkpoint_path=ckpt)
    net2, space2 = make_toy(choices=2)
    with pytest.raises(ValueError, match="space config"):
        train_supernet(net2, space2, x, y, TrainConfig(epochs=1, batch_size=16), checkpoint_path=ckpt)


def test_checkpoint_contents(tmp_path):
    ckpt = tmp_path / "run" / "supernet.pt"
    net, space = make_toy()
    x, y = make_data()
    res = train_supernet(net, space, x, y, CFG, checkpoint_path=ckpt)
    p = load_checkpoint(ckpt, expected_kind=CHECKPOINT_KIND)
    assert p["epoch"] == 3 and p["step"] == res.steps == 12
    assert TrainConfig.from_dict(p["config"]) == CFG
    assert p["space"] == {"name": "toy", "config": {"choices": 3}}
    _assert_same_state(p["model"], net.state_dict())
    init = load_checkpoint(ckpt.with_name(INIT_FILENAME), expected_kind=INIT_KIND, expected_fingerprint=p["fingerprint"])
    _assert_same_state(init["model"], res.initial_state)


def test_resume_after_an_epoch_is_bit_identical(tmp_path):
    ref_state, ref = _uninterrupted()
    ckpt = tmp_path / "supernet.pt"
    net, space = make_toy(init_seed=0)
    x, y = make_data()
    with pytest.raises(Killed):
        train_supernet(net, space, x, y, CFG, checkpoint_path=ckpt, progress=_kill_at(epoch=0))
    assert load_checkpoint(ckpt)["epoch"] == 1

    # "New process": other init weights, other global RNG state, fresh objects.
    net, space = make_toy(init_seed=99)
    torch.manual_seed(12345)
    res = train_supernet(net, space, x, y, CFG, checkpoint_path=ckpt)
    _assert_same_state(ref_state, net.state_dict())
    _assert_same_state(ref.initial_state, res.initial_state)
    assert res.resumed_from_epoch == 1 and res.steps == ref.steps
    assert res.epoch_loss == ref.epoch_loss and res.epoch_accuracy == ref.epoch_accuracy
    assert res.epoch_lr == ref.epoch_lr


def test_resume_after_a_mid_epoch_kill_is_bit_identical(tmp_path):
    ref_state, ref = _uninterrupted()
    ckpt = tmp_path / "supernet.pt"
    net, space = make_toy(init_seed=0)
    x, y = make_data()
    with pytest.raises(Killed):
        train_supernet(net, space, x, y, CFG, checkpoint_path=ckpt, progress=_kill_at(epoch=2, step=1))
    assert load_checkpoint(ckpt)["epoch"] == 2

    net, space = make_toy(init_seed=5)
    res = train_supernet(net, space, x, y, CFG, checkpoint_path=ckpt)
    _assert_same_state(ref_state, net.state_dict())
    assert res.resumed_from_epoch == 2 and res.epoch_loss == ref.epoch_loss


def test_resume_of_a_finished_run_returns_its_result(tmp_path):
    ckpt = tmp_path / "supernet.pt"
    net, space = make_toy()
    x, y = make_data()
    first = train_supernet(net, space, x, y, CFG, checkpoint_path=ckpt)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net2, space2 = make_toy(init_seed=3)
    again = train_supernet(net2, space2, x, y, CFG, checkpoint_path=ckpt)
    _assert_same_state(state, net2.state_dict())
    assert again.to_dict() | {"resumed_from_epoch": 0} == first.to_dict()


def test_resume_false_starts_over(tmp_path):
    ckpt = tmp_path / "supernet.pt"
    net, space = make_toy()
    x, y = make_data()
    train_supernet(net, space, x, y, TrainConfig(epochs=1, batch_size=16), checkpoint_path=ckpt)
    res = train_supernet(net, space, x, y, CFG, checkpoint_path=ckpt, resume=False)
    assert res.resumed_from_epoch == 0 and load_checkpoint(ckpt)["epoch"] == 3


def test_missing_initial_weights_on_resume(tmp_path):
    ckpt = tmp_path / "supernet.pt"
    net, space = make_toy()
    x, y = make_data()
    with pytest.raises(Killed):
        train_supernet(net, space, x, y, CFG, checkpoint_path=ckpt, progress=_kill_at(epoch=0))
    (tmp_path / INIT_FILENAME).unlink()
    with pytest.raises(ValueError, match="supernet_init.pt"):
        train_supernet(net, space, x, y, CFG, checkpoint_path=ckpt)
