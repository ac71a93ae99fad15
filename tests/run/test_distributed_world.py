"""fastnas.distributed without processes: the torchrun environment, the agreement check, the device of a
rank; and a run directory of a rank other than 0 that writes nothing."""

from __future__ import annotations

import pytest
import torch

from fastnas import distributed
from fastnas.distributed import Abandoned, World, agree, env_world, local_device
from fastnas.run.rundir import RunDir

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def env(monkeypatch):
    for k in ENV:
        monkeypatch.delenv(k, raising=False)

    def set_(**values):
        for k, v in values.items():
            monkeypatch.setenv(k, str(v))

    return set_


def test_no_launcher_is_one_process(env):
    assert env_world() is None
    assert distributed.world() == World() and distributed.is_main()
    with distributed.process_group() as w:
        assert w == World()


def test_world_size_one_joins_nothing(env):
    env(RANK=0, WORLD_SIZE=1, LOCAL_RANK=0)
    with distributed.process_group() as w:
        assert w.size == 1 and not torch.distributed.is_initialized()


def test_full_environment(env):
    env(RANK=3, WORLD_SIZE=4, LOCAL_RANK=1, MASTER_ADDR="10.0.0.1", MASTER_PORT=29500)
    assert env_world() == World(rank=3, size=4, local_rank=1)


@pytest.mark.parametrize("values, expected", [
    ({"RANK": 1, "WORLD_SIZE": 2, "LOCAL_RANK": 1}, "not MASTER_ADDR, MASTER_PORT"),
    ({"RANK": 1, "WORLD_SIZE": 2, "MASTER_ADDR": "h", "MASTER_PORT": 1}, "not LOCAL_RANK"),
    ({"RANK": 1, "LOCAL_RANK": 1}, "but not WORLD_SIZE"),
    ({"RANK": 2, "WORLD_SIZE": 2, "LOCAL_RANK": 0, "MASTER_ADDR": "h", "MASTER_PORT": 1}, "RANK=2: expected 0 <= RANK"),
    ({"RANK": "x", "WORLD_SIZE": 2, "LOCAL_RANK": 0, "MASTER_ADDR": "h", "MASTER_PORT": 1}, "RANK='x'"),
    ({"RANK": 0, "WORLD_SIZE": 2, "LOCAL_RANK": 0, "MASTER_ADDR": "h", "MASTER_PORT": 70000}, "MASTER_PORT=70000"),
    ({"RANK": 0, "WORLD_SIZE": 0}, "WORLD_SIZE=0"),
])
def test_incomplete_environment_names_what_is_missing(env, values, expected):
    env(**values)
    with pytest.raises(ValueError, match="torchrun|expected") as e:
        env_world()
    assert expected in str(e.value)
    with pytest.raises(ValueError):  # process_group fails before it waits for anything
        with distributed.process_group():
            pass


def test_bad_timeout_setting(env, monkeypatch):
    env(RANK=0, WORLD_SIZE=2, LOCAL_RANK=0, MASTER_ADDR="127.0.0.1", MASTER_PORT=1)
    monkeypatch.setenv(distributed.INIT_TIMEOUT_ENV, "-3")
    with pytest.raises(ValueError, match="FASTNAS_DIST_INIT_TIMEOUT='-3': expected a number of seconds > 0"):
        with distributed.process_group():
            pass


class FakeWorld(World):
    """Rank ``rank`` of a world whose all-gather returns ``others`` with this rank's object in its place."""

    def __init__(self, rank, others):
        object.__setattr__(self, "rank", rank)
        object.__setattr__(self, "size", len(others))
        object.__setattr__(self, "local_rank", rank)
        object.__setattr__(self, "others", others)

    def all_gather_object(self, obj):
        out = list(self.others)
        out[self.rank] = obj
        return out


def test_agree_equal_settings_passes():
    s = {"--population": 5, "data": ("a", 1)}
    agree(s, w=FakeWorld(0, [None, (dict(s), None)]))
    agree(s, w=FakeWorld(1, [(dict(s), None), None]))


def test_agree_names_each_differing_setting_on_rank0_and_abandons_the_others():
    s0 = {"--population": 5, "--seed": 0, "--out": "r"}
    s1 = {"--population": 7, "--seed": 0, "--out": "r", "--extra": 1}
    with pytest.raises(ValueError) as e:
        agree(s0, w=FakeWorld(0, [None, (s1, None)]))
    msg = str(e.value)
    assert "different settings: --population (rank 0: 5; rank 1: 7), --extra (rank 0: (unset); rank 1: 1)" in msg
    assert "--seed" not in msg
    with pytest.raises(Abandoned):
        agree(s1, w=FakeWorld(1, [(s0, None), None]))


def test_agree_reports_another_ranks_error_once():
    s = {"a": 1}
    with pytest.raises(ValueError, match=r"^rank 2 of 3: --data-dir 'x': no such directory$"):
        agree(s, w=FakeWorld(0, [None, (s, None), (None, "--data-dir 'x': no such directory")]))
    own = FileNotFoundError("mine")
    with pytest.raises(FileNotFoundError, match="mine"):  # rank 0's own error, as it is
        agree(None, own, w=FakeWorld(0, [None, (None, "theirs")]))
    with pytest.raises(Abandoned):
        agree(None, ValueError("theirs"), w=FakeWorld(1, [(s, None), None]))


def test_agree_in_one_process_raises_the_error_itself():
    agree({"a": 1})
    with pytest.raises(KeyError):
        agree(None, KeyError("k"))


def test_local_device():
    one, two = World(), World(rank=1, size=2, local_rank=1)
    assert local_device(torch.device("cpu"), two) == torch.device("cpu")
    assert local_device(torch.device("cuda", 3), one) == torch.device("cuda", 3)
    with pytest.raises(ValueError, match="each rank uses the GPU of its LOCAL_RANK; give --device cuda"):
        local_device(torch.device("cuda", 0), two)
    if torch.cuda.device_count() < 2:
        with pytest.raises(ValueError, match="LOCAL_RANK=1: this node has"):
            local_device(torch.device("cuda"), two)
    else:
        assert local_device(torch.device("cuda"), two) == torch.device("cuda", 1)


def test_run_directory_of_another_rank_writes_nothing(tmp_path):
    from fastnas.run.config import RunConfig

    path = tmp_path / "run"
    d = RunDir(path, writes=False)
    d.create(RunConfig(), header="h")
    assert d.save_config(RunConfig()) is False
    d.save_state(d.new_state())
    d.write_json(path / "x.json", {"a": 1})
    assert not path.exists()
    w = RunDir(path)  # one process: rank 0 of a world of one
    assert w.writes
    w.create(RunConfig(), header="h")
    w.write_json(path / "x.json", {"a": 1})
    assert sorted(p.name for p in path.iterdir()) == ["config.toml", "state.json", "x.json"]


def test_prepare_refuses_a_batch_size_the_world_does_not_divide(monkeypatch, tmp_path):
    from fastnas.run import pipeline
    from fastnas.run.config import RunConfig

    monkeypatch.setattr(distributed, "world", lambda: World(rank=0, size=4))
    base = dict(channels=4, cells=1, epochs=1, limit_train=128, valid_size=48, out=str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"--batch-size 30 is not divisible by the world size 4 .* 28 or 32"):
        pipeline.prepare(RunConfig(batch_size=30, **base))
    assert not (tmp_path / "run").exists()
    assert pipeline.prepare(RunConfig(batch_size=32, **base)).config.batch_size == 32
