"""`fastnas family`: a nested family designed tier by tier, tested, plotted and exported; bad input; kill -9."""

from __future__ import annotations

import importlib.util
import json
import signal

import pytest
import torch

from _cli_helpers import run_subprocess

# nb201_size at C=4 (widths 1..4), N=1, one sandwich epoch, 8 candidates per tier.
FAMILY = ["--channels", "4", "--epochs", "1", "--population", "4", "--generations", "2", "--valid-size", "48",
          "--limit-train", "128", "--batch-size", "32", "--recal-batches", "2", "--quiet"]


@pytest.fixture(scope="module")
def family_run(tmp_path_factory):
    from fastnas.cli import main

    out = tmp_path_factory.mktemp("fam") / "run"
    assert main(["family", *FAMILY, "--out", str(out)]) == 0
    return out


def _space(run):
    from fastnas.run.rundir import RunDir
    from fastnas.spaces import create_space

    c = RunDir(run).load_config()
    return create_space(c.space, channels=c.channels, cells=c.cells, num_classes=10, in_channels=1, resolution=8)


def test_result_members_nested_and_budgets(family_run):
    result = json.loads((family_run / "result.json").read_text())
    space = _space(family_run)
    assert result["reward"] == "R2" and result["lambdas"] == [1.0, 1.0] and result["constraint"] is True
    members = result["members"]
    assert len(members) == 3 == len(result["budgets"])
    lo, hi = space.params(space.smallest()), space.params(space.largest())
    assert result["budgets"][-1] == hi
    assert result["budgets"] == [int(lo * (hi / lo) ** (k / 3)) for k in (1, 2)] + [hi]
    for key in ("arch", "params", "flops", "top1", "nfr", "rel_nfr"):
        assert all(key in m for m in members)
    assert members[0]["nfr"] is None and members[0]["rel_nfr"] is None
    archs = [space.parse(m["arch"]) for m in members]
    for k, (m, arch) in enumerate(zip(members, archs)):
        assert m["params"] == space.params(arch) <= result["budgets"][k]
        assert 0.0 <= m["top1"] <= 1.0
        if k:
            assert space.contains(arch, archs[k - 1]) and arch != archs[k - 1]
            assert 0.0 <= m["nfr"] <= 1.0
    assert [m["params"] for m in members] == sorted(m["params"] for m in members)  # smallest first
    assert (family_run / "plots" / "family.png").stat().st_size > 0
    state = json.loads((family_run / "state.json").read_text())
    assert state["phases"] == {"train": "done", "search": "done", "report": "done"}
    assert "sandwich" in (family_run / "config.toml").read_text()


def test_member_nfr_is_flip_report_of_the_exported_members(family_run):
    from fastnas.data import load_dataset
    from fastnas.metrics.flips import flip_report

    result = json.loads((family_run / "result.json").read_text())
    data = load_dataset("digits", seed=0)
    nets = [_load_standalone(family_run / "export", k) for k in (1, 2, 3)]
    with torch.no_grad():
        logits = [net(data.test_x) for net in nets]
    for k in (1, 2):
        report = flip_report(logits[k - 1], logits[k], data.test_y)
        assert result["members"][k]["nfr"] == pytest.approx(report.nfr, abs=1e-12)
        assert result["members"][k]["rel_nfr"] == pytest.approx(report.rel_nfr, abs=1e-12)
    for k in (0, 1, 2):
        top1 = float((logits[k].argmax(1) == data.test_y).double().mean())
        assert result["members"][k]["top1"] == pytest.approx(top1, abs=1e-12)


def _import(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_standalone(export, k):
    module = _import(export / f"member{k}.py", f"fam_member{k}")
    net = module.Network()
    net.load_state_dict(torch.load(export / f"member{k}.pt", weights_only=True))
    return net.eval()


def test_exports_standalone_and_family_file_share_weights(family_run):
    export = family_run / "export"
    for k in (1, 2, 3):
        text = (export / f"member{k}.py").read_text()
        assert "fastnas" not in [line.split()[1] for line in text.splitlines() if line.startswith(("import ", "from "))]
    family_py = export / "family.py"
    assert "import fastnas" not in family_py.read_text() and "from fastnas" not in family_py.read_text()
    fam = _import(family_py, "fam_family")
    data = fam.load_family()
    x = torch.randn(5, 1, 8, 8)
    for k in (1, 2, 3):
        standalone = torch.load(export / f"member{k}.pt", weights_only=True)
        from_family = fam.member_state_dict(k, data)
        assert list(from_family) == list(standalone)
        for key, value in standalone.items():
            assert torch.equal(from_family[key], value), key  # bit-exact
        with torch.no_grad():
            assert torch.equal(fam.load_member(k, data)(x), _load_standalone(export, k)(x))
    # One tensor set: every member's parameters are views of the shared tensors (no copies), and the
    # shared set is smaller than the members' parameters together.
    shared_ptrs = {t.untyped_storage().data_ptr() for t in data["shared"].values()}
    for k in (1, 2, 3):
        params = {p["name"] for p in data["members"][k - 1]["params"].values()}
        state = fam.member_state_dict(k, data)
        for key in data["members"][k - 1]["params"]:
            assert state[key].untyped_storage().data_ptr() in shared_ptrs
        assert params <= set(data["shared"])
    n_shared = sum(t.numel() for t in data["shared"].values())
    n_members = sum(sum(v.numel() for key, v in torch.load(export / f"member{k}.pt", weights_only=True).items()
                        if key in data["members"][k - 1]["params"]) for k in (1, 2, 3))
    assert n_shared < n_members
    # With containment the shared set is exactly the largest member's parameters.
    largest = torch.load(export / "member3.pt", weights_only=True)
    assert n_shared == sum(largest[key].numel() for key in data["members"][2]["params"])


def test_read_family_rejects_a_file_of_another_space_or_size(family_run, tmp_path):
    from fastnas.run.family_export import read_family
    from fastnas.spaces import create_space

    path = family_run / "export" / "family.pt"
    space = _space(family_run)
    assert len(read_family(path, space)["members"]) == 3
    with pytest.raises(ValueError, match="of space 'nb201_size', not of 'elastic_resnet'"):
        read_family(path, create_space("elastic_resnet"))
    wider = create_space("nb201_size", channels=8, cells=1, num_classes=10, in_channels=1, resolution=8)
    with pytest.raises(ValueError, match=r"made for another nb201_size space: candidates \[1, 2, 3, 4\]"):
        read_family(path, wider)
    more_classes = create_space("nb201_size", channels=4, cells=1, num_classes=3, in_channels=1, resolution=8)
    with pytest.raises(ValueError, match="num_classes 10 \\(this space: 3\\)"):
        read_family(path, more_classes)
    other = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="not a fastnas family file"):
        read_family(other, space)


def test_search_resume_refuses_a_family_run(cli, family_run):
    r = cli("search", "--resume", family_run)
    assert r.code == 2 and "fastnas family --resume" in r.err


def test_family_resume_refuses_a_search_run(cli, tiny_run):
    r = cli("family", "--resume", tiny_run)
    assert r.code == 2 and "not a family design" in r.err


def test_resume_cannot_change_family_settings_after_the_search_started(cli, family_run):
    r = cli("family", "--resume", family_run, "--reward", "R0")
    assert r.code == 2 and "cannot change --reward" in r.err, r.err


def test_help_documents_the_family(cli):
    r = cli("family", "--help")
    assert r.code == 0
    for text in ("--budgets", "--lambdas", "--no-constraint", "--reference", "lo * (hi/lo)^(k/K)", "family.pt",
                 "R2 = top1 - NFR", "--resume", "(default: nb201_size)"):
        assert text in r.out, text


BAD = {
    "budgets not increasing": (["--budgets", "3000,1000,5000"], "--budgets"),
    "budgets equal": (["--budgets", "1000,1000"], "strictly increasing"),
    "budgets not numbers": (["--budgets", "a,b"], "--budgets"),
    "budget below the smallest member": (["--budgets", "10,2000"], "below the smallest member's params"),
    "tiers and budgets disagree": (["--tiers", "2", "--budgets", "600,900,1200"], "--tiers"),
    "lambdas not finite": (["--lambdas", "1,inf"], "--lambdas"),
    "lambdas nan": (["--lambdas", "nan,1"], "--lambdas"),
    "lambdas both zero": (["--lambdas", "0,0"], "--lambdas"),
    "lambdas negative": (["--lambdas", "1,-1"], "--lambdas"),
    "lambdas three": (["--lambdas", "1,1,1"], "--lambdas"),
    "unknown reward": (["--reward", "R3"], "--reward"),
    "reward and lambdas disagree": (["--reward", "R0", "--lambdas", "1,1"], "disagree"),
    "budget kind": (["--budget-kind", "macs"], "--budget-kind"),
    "not a family space": (["--space", "nb201"], "has no largest()/smallest()/contains()"),
    "reference not in the space": (["--reference", "9:9:9:9:9"], "--reference"),
    "reference of another space": (["--reference", "|nor_conv_3x3~0|+|none~0|none~1|+|none~0|none~1|none~2|"],
                                   "--reference"),
    "tiers zero": (["--tiers", "0"], "--tiers"),
}


@pytest.mark.parametrize("args,message", list(BAD.values()), ids=list(BAD))
def test_bad_family_input(cli, tmp_path, args, message):
    out = tmp_path / "run"
    r = cli("family", *FAMILY, *args, "--out", out)
    assert r.code == 2, (r.code, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastnas: error: "), r.err
    assert message in r.err, r.err
    assert not out.exists()


def test_no_constraint_and_flops_budgets_and_reference(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("family", *FAMILY, "--no-constraint", "--budget-kind", "flops", "--tiers", "2", "--reward", "R0",
            "--reference", "1:1:1:1:1", "--out", out)
    assert r.code == 0, r.err
    result = json.loads((out / "result.json").read_text())
    assert result["constraint"] is False and result["budget_kind"] == "flops" and result["lambdas"] == [1.0, 0.0]
    assert result["reference"]["arch"] == "1:1:1:1:1" and result["members"][0]["nfr"] is not None
    space = _space(out)
    for m, b in zip(result["members"], result["budgets"]):
        assert space.flops(space.parse(m["arch"])) <= b
    assert result["search"][0]["metric"] == "accuracy"  # R0: no nfr term, even against the reference
    assert "containment off" in r.out


# ---- kill -9 anywhere, then --resume: the same result.json byte for byte

def _uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("famref") / "run"
    r = run_subprocess(["family", *FAMILY, "--epochs", "2", "--out", out])
    assert r.code == 0, r.err
    return out


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    return _uninterrupted(tmp_path_factory)


def test_kill_anywhere_then_resume_gives_the_same_result_bytes(tmp_path, reference_run):
    """Killed in supernet training, in tier 1, in tier 2 and after tier 3 (before the report), resumed each time."""
    out = tmp_path / "run"
    r = run_subprocess(["family", *FAMILY, "--epochs", "2", "--out", out], env_extra={"FASTNAS_TEST_KILL_AT": "train:6"})
    assert r.code == -signal.SIGKILL, (r.code, r.err)
    assert json.loads((out / "state.json").read_text())["phases"]["train"] == "started"
    for point in ("search:5", "search:11", "family:3"):
        r = run_subprocess(["family", "--resume", out, "--quiet"], env_extra={"FASTNAS_TEST_KILL_AT": point})
        assert r.code == -signal.SIGKILL, (point, r.code, r.err)
        assert not (out / "result.json").exists()
        if point == "search:11":  # 8 scored in tier 1; candidate 11 scored but not saved: scored again
            assert json.loads((out / "family_tier1.json").read_text())["member"] is not None
            tier2 = json.loads((out / "family_tier2.json").read_text())
            assert tier2["member"] is None and len(tier2["state"]["history"]) == 2
    r = run_subprocess(["family", "--resume", out, "--quiet"])
    assert r.code == 0, r.err
    assert (out / "result.json").read_bytes() == (reference_run / "result.json").read_bytes()
    assert json.loads((out / "state.json").read_text())["sessions"] == 5


def test_killed_before_family_json_was_written_still_resumes_as_a_family(tmp_path):
    out = tmp_path / "run"
    r = run_subprocess(["family", *FAMILY, "--tiers", "2", "--out", out], env_extra={"FASTNAS_TEST_KILL_AT": "train:1"})
    assert r.code == -signal.SIGKILL, (r.code, r.err)
    (out / "family.json").unlink()  # as if killed between config.toml and family.json
    r = run_subprocess(["search", "--resume", out, "--quiet"])
    assert r.code == 2 and "fastnas family --resume" in r.err
    r = run_subprocess(["family", "--resume", out, "--tiers", "2", "--quiet"])
    assert r.code == 0, r.err
    assert len(json.loads((out / "result.json").read_text())["members"]) == 2
