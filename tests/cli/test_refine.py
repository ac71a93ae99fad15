"""NAR's refinement end to end: ``fastnas.refine`` on a user residual net, ``fastnas refine`` on a built-in
ResNet (result fields against the space and the built network, plots, export), resume after kill -9
(bit-identical controller and result), PreTrain, the equal-budget baselines, rewards, and bad input."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch
from torch import fx, nn

import fastnas
from _cli_helpers import run_subprocess
from fastnas.run.config import RunConfig
from fastnas.run.refine import (RefineConfig, RefineRun, Reward, baseline_budget, batch_stats, prepare_refine,
                                planned_controller_images)
from fastnas.seeds import derive_seed
from fastnas.spaces import create_space
from fastnas.spaces.backbone import BackboneSpace

TINY = ["--channels", "4", "--cells", "1", "--epochs", "2", "--retrain-epochs", "1", "--controller-steps", "2",
        "--samples", "4", "--derive", "4", "--valid-size", "64", "--limit-train", "160", "--batch-size", "32",
        "--quiet", "--device", "cpu"]


class UserRes(nn.Module):
    """A user's residual net on 1-channel 8x8 images: a functional skip, a stride-2 block with a 1x1
    projection; the stem and the head are no sites."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.a1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.a2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(4)
        self.b1 = nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.proj = nn.Conv2d(4, 8, 1, stride=2)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(torch.add(x, self.bn2(self.a2(torch.relu(self.bn1(self.a1(x)))))))
        x = torch.relu(self.bn3(self.b1(x))) + self.proj(x)
        return self.fc(x.mean((2, 3)))


def _digits(n=400):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:n], dtype=torch.float32)[:, None]
    return x, torch.tensor(d.target[:n], dtype=torch.int64)


def _signature(gm: fx.GraphModule, sites) -> list:
    index = {n: i for i, n in enumerate(gm.graph.nodes)}
    return [(n.op, "SITE" if n.op == "call_module" and n.target in sites else str(n.target),
             tuple(index[a] for a in n.all_input_nodes)) for n in gm.graph.nodes]


class _SiteLeaves(fx.Tracer):
    def __init__(self, sites) -> None:
        super().__init__()
        self.sites = sites

    def is_leaf_module(self, m, qualname):
        return qualname in self.sites or super().is_leaf_module(m, qualname)


# ---- the library entry point on a user model ---------------------------------------------------------------

def test_refine_a_user_residual_net(tmp_path):
    model = UserRes()
    x, y = _digits()
    res = fastnas.refine(model, (x, y), epochs=2, batch_size=32, valid_size=64, controller_steps=2, samples=4,
                         derive=4, device="cpu", out=str(tmp_path / "run"))
    space = BackboneSpace(model, torch.zeros(1, 1, 8, 8))
    arch = tuple(res.ops)
    assert len(res.ops) == 3 and res.op_names == space.describe(arch)
    # the numbers against the networks themselves
    assert res.base_params == sum(p.numel() for p in model.parameters())
    assert res.params == sum(p.numel() for p in res.model.parameters())
    assert res.base_flops == pytest.approx(space.flops(space.original()))
    assert res.flops == pytest.approx(space.flops(arch))
    assert res.model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    # the skip structure of the refined model is the base model's (on the traced graphs)
    sites = {s.target for s in space.sites}
    base = fx.GraphModule(model, _SiteLeaves(sites).trace(model))
    refined = fx.GraphModule(res.model, _SiteLeaves(sites).trace(res.model))
    assert _signature(refined, sites) == _signature(base, sites)
    r = json.loads((tmp_path / "run" / "result.json").read_text())
    for key in ("ops", "op_names", "params", "base_params", "flops", "base_flops"):
        assert r[key] == getattr(res, key)
    assert len(r["refine"]["trace"]) == 2 * 2  # epochs x controller steps
    # the controller moved: its trace has finite rewards and entropies, and a baseline after every update
    assert all(t["entropy"] > 0 and 0 <= t["reward"] <= 1 for t in r["refine"]["trace"])


def test_refine_without_out_leaves_no_directory(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    x, y = _digits(200)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=50)  # a DataLoader too
    res = fastnas.refine(UserRes(), loader, epochs=1, batch_size=32, valid_size=32, controller_steps=1,
                         samples=2, derive=2, device="cpu")
    assert res.run_dir is None and not [p for p in tmp_path.iterdir() if p.name.startswith("fastnas-refine-")]
    assert res.result["search"]["n_scored"] >= 1


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.c1(x)).mean((2, 3)))


class Untraceable(UserRes):
    def forward(self, x):
        if x.sum() > 0:
            return super().forward(x)
        return super().forward(-x)


@pytest.mark.parametrize("model, kwargs, data, match", [
    (Plain(), {}, None, "no refinable convolution"),
    (Untraceable(), {}, None, "cannot be traced by torch.fx"),
    (UserRes(), {"candidates": ["conv_7x7"]}, None, "'conv_7x7' is not a known candidate op"),
    (UserRes(), {"candidates": ["conv_5x5"]}, None, "leave no choice"),
    (UserRes(), {}, (torch.zeros(40, 3, 8, 8), torch.zeros(40, dtype=torch.int64)), "does not fit model UserRes"),
    (UserRes(classes=7), {}, None, "gives 7 outputs per image; data has 10 classes"),
    (UserRes(), {"searcher": "bayes"}, None, "--searcher 'bayes'"),
    (UserRes(), {"samples": 0}, None, r"samples=0: expected an integer >= 1"),
])
def test_bad_input_is_one_error_and_nothing_written(tmp_path, model, kwargs, data, match):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=match):
        fastnas.refine(model, data if data is not None else _digits(), epochs=1, device="cpu", out=str(out),
                       **kwargs)
    assert not out.exists()


# ---- the command on a built-in backbone ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("refine") / "run"
    r = run_subprocess(["refine", *TINY, "--retrain-base", "--out", out])
    assert r.code == 0, r.err
    return out, r


def test_cli_result_fields_match_the_space_and_the_network(cli_run):
    out, r = cli_run
    res = json.loads((out / "result.json").read_text())
    space = create_space("backbone", backbone="resnet20", channels=4, cells=1, num_classes=10, in_channels=1,
                         resolution=8)
    arch = space.parse(res["arch"])
    assert res["ops"] == list(arch) and res["op_names"] == space.describe(arch)
    net = space.build(arch)
    assert res["params"] == sum(p.numel() for p in net.parameters())
    assert res["base_params"] == sum(p.numel() for p in space.build(space.original()).parameters())
    assert res["flops"] == pytest.approx(space.flops(arch)) and res["base_flops"] == pytest.approx(
        space.flops(space.original()))
    assert 0 <= res["test_accuracy"] <= 1 and 0 <= res["base_test_accuracy"] <= 1
    assert (out / "plots" / "controller.png").stat().st_size > 0
    assert (out / "plots" / "op_probabilities.png").stat().st_size > 0
    assert "refined resnet20" in r.out and "FLOPs" in r.out


def test_cli_export_of_a_refine_run(cli_run, tmp_path):
    out, _ = cli_run
    r = run_subprocess(["export", "--run", out, "--out", tmp_path / "refined.py"])
    assert r.code == 0, r.err
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import refined; m = refined.load(); "
            "print(sum(p.numel() for p in m.parameters()), tuple(m(torch.zeros(3, 1, 8, 8)).shape))")
    p = subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    res = json.loads((out / "result.json").read_text())
    assert p.stdout.split()[0] == str(res["params"]) and "(3, 10)" in p.stdout
    assert "fastnas" not in (tmp_path / "refined.py").read_text().split('"""', 2)[2].split("import torch")[0]


def _without_timings(res):
    res = dict(res)
    for key in ("timings", "environment"):
        res.pop(key, None)
    res["supernet"] = {k: v for k, v in (res.get("supernet") or {}).items() if k != "epoch_time"}
    for part in ("retrain", "base_retrain"):
        if res.get(part):
            res[part] = {k: v for k, v in res[part].items() if "time" not in k}
    return res


def test_kill_9_during_training_resumes_to_the_same_result(cli_run, tmp_path):
    out, _ = cli_run
    killed = tmp_path / "killed"
    # 160 images / 32 = 5 steps per epoch: killed in the second epoch, after the first controller updates
    r = run_subprocess(["refine", *TINY, "--retrain-base", "--out", killed], env_extra={"FASTNAS_TEST_KILL_AT": "train:7"})
    assert r.code == -9
    r = run_subprocess(["refine", "--resume", killed, "--quiet"])
    assert r.code == 0, r.err
    a = _without_timings(json.loads((out / "result.json").read_text()))
    b = _without_timings(json.loads((killed / "result.json").read_text()))
    assert a["refine"]["trace"] == b["refine"]["trace"]  # controller, Adam and baseline restored exactly
    assert a == b


# ---- pieces --------------------------------------------------------------------------------------------------

def _prepared(tmp_path, **refine):
    cfg = RunConfig(data="digits", out=str(tmp_path / "run"), channels=4, cells=1, epochs=3, batch_size=32,
                    limit_train=160, valid_size=64, device="cpu", quiet=True, backbone="resnet20")
    return prepare_refine(cfg, RefineConfig(controller_steps=2, samples=3, derive=3, **refine))


def test_pretrain_draws_uniform_paths_then_the_policy(tmp_path):
    p, rc = _prepared(tmp_path, pretrain_epochs=2)
    run = RefineRun(p, rc)
    run.start()
    run.train()
    pol = run.policy
    steps = run._steps_per_epoch()
    for step in range(2 * steps):  # PreTrain: exactly the uniform draws of (seed, step)
        assert pol.sample(step) == run.space.sample(random.Random(derive_seed(run.config.seed, "refine-path", step)))
    assert [t["epoch"] for t in pol.trace] == [2, 2]  # no controller update during PreTrain
    assert len(pol.epochs) == 1


def test_equal_budget_of_the_baselines(tmp_path):
    rc = RefineConfig(controller_steps=2, samples=3, derive=3, reward_batch=32)
    # 3 epochs x 2 updates x 3 samples x 32 images = 576 images = 9 scorings of 64 images, + 3 derived
    assert planned_controller_images(rc, 3, 64) == 576 and baseline_budget(rc, 3, 64) == 12
    p, rc = _prepared(tmp_path / "r", searcher="random", reward_batch=32)
    assert (p.config.searcher, p.config.population, p.config.generations) == ("random", 12, 1)
    res = RefineRun(p, rc).execute()
    assert res["search"]["n_scored"] <= 12 and res["refine"]["trace"] == []
    p, _ = _prepared(tmp_path / "e", searcher="evolution", reward_batch=32)
    assert p.config.population * p.config.generations >= 12


def test_batch_stats_changes_no_buffer():
    space = create_space("backbone", backbone="resnet20", channels=4, cells=1, num_classes=10, in_channels=1,
                         resolution=8)
    net = space.supernet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with batch_stats(net):
        net(torch.randn(8, 1, 8, 8), space.original())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    net.train()
    net(torch.randn(8, 1, 8, 8), space.original())  # a plain training forward does change them
    assert not all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_reward_r2_against_the_base_is_top1_for_the_base_itself(tmp_path):
    from fastnas.metrics import make_score_fn
    from fastnas.run.scoring import flatness_config

    p, _ = _prepared(tmp_path)
    space = p.space
    net = space.supernet()
    x, y = p.valid
    r2 = Reward(RefineConfig(reward="R2"), p.config, net, space, p.train[0], None, torch.device("cpu"))
    acc = make_score_fn("accuracy", net, space, valid=(x, y), calib_x=p.train[0],
                        flatness_config=flatness_config(p.config), device="cpu")
    base = space.original()
    assert r2(base, (x, y)) == pytest.approx(acc(base).value, abs=1e-9)  # no flips against itself
    other = space.sample(random.Random(3))
    assert r2(other, (x, y)) <= acc(other).value + 1e-9  # flips only lower it
    pen = Reward(RefineConfig(flops_penalty=0.5), p.config, net, space, p.train[0], None, torch.device("cpu"))
    plain = Reward(RefineConfig(), p.config, net, space, p.train[0], None, torch.device("cpu"))
    assert pen(other, (x, y)) == pytest.approx(plain(other, (x, y)) - 0.5 * space.flops(other) / space.flops(base))


def test_a_file_backbone_from_the_command_line(tmp_path):
    src = tmp_path / "usernet.py"
    src.write_text("import torch\nfrom torch import nn\n\n\n" + _user_source())
    r = run_subprocess(["refine", *TINY, "--backbone", f"{src}:UserRes", "--out", tmp_path / "run",
                        "--retrain-epochs", "0"])
    assert r.code == 0, r.err
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert len(res["ops"]) == 3 and res["base_params"] == sum(p.numel() for p in UserRes().parameters())
    r = run_subprocess(["export", "--run", tmp_path / "run", "--out", tmp_path / "unet.py"])
    assert r.code == 0, r.err
    code = ("import sys, torch; sys.path.insert(0, sys.argv[1]); import unet; m = unet.load(); "
            "print(tuple(m(torch.zeros(2, 1, 8, 8)).shape))")
    p = subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 0 and "(2, 10)" in p.stdout, p.stderr


def _user_source() -> str:
    import inspect

    return inspect.getsource(UserRes)


def test_torchvision_resnet_is_refinable():
    tv = pytest.importorskip("torchvision")
    model = tv.models.resnet18(num_classes=10)
    space = BackboneSpace(model, torch.zeros(1, 3, 32, 32), granularity="block")
    assert len(space.gene_ops) == 8


def test_enas_searcher_refused_before_training_on_a_space_without_choices(tmp_path):
    from fastnas.run.pipeline import prepare

    with pytest.raises(ValueError, match=r"--searcher enas needs a space whose architectures are choices"):
        prepare(RunConfig(data="digits", out=str(tmp_path / "run"), searcher="enas", space="nb201"))
    assert not (tmp_path / "run").exists()


def test_backbone_flags_on_another_space_are_refused(tmp_path):
    r = run_subprocess(["search", "--space", "nb201", "--backbone", "resnet18", "--out", tmp_path / "run"])
    assert r.code == 2 and "space 'nb201' does not take --backbone" in r.err, r.err
    assert not (tmp_path / "run").exists()

