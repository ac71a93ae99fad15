"""RunConfig: one-to-one with flags and TOML keys; None never overrides; TOML round trip."""

from __future__ import annotations

import pytest

from fastnas.run.config import RunConfig, dumps_toml, load_toml, parse_sigmas


def test_to_dict_from_dict_round_trip():
    c = RunConfig(metric="flatness", sigmas=(1e-3, 3e-3), channels=8, max_flops=12.5, noise="cumulative")
    assert RunConfig.from_dict(c.to_dict()) == c


def test_none_values_do_not_override():
    base = RunConfig(epochs=7, metric="angle")
    c = RunConfig.from_dict({"epochs": None, "metric": None, "batch-size": 32}, base=base)
    assert c.epochs == 7 and c.metric == "angle" and c.batch_size == 32


def test_unknown_key_names_close_matches():
    with pytest.raises(ValueError, match="did you mean 'population'"):
        RunConfig.from_dict({"populaton": 3})


def test_integral_floats_are_normalised():
    assert RunConfig(lr=1).to_dict() == RunConfig(lr=1.0).to_dict()


def test_toml_round_trip(tmp_path):
    c = RunConfig(data='we"ird\\path.npz', sigmas=(2e-3, 1e-2), metric="angle+flatness", gamma=0.5, max_params=1e6, augment=True,
                  out="runs/x").resolved({"recal_batches": 3})
    path = tmp_path / "c.toml"
    path.write_text(dumps_toml(c, header="a header\nof two lines"))
    assert RunConfig.from_dict(load_toml(path)) == c


@pytest.mark.parametrize("text", ["1e-2,2e-3", "0", "-1,1", "", "x", "1e-3,1e-3"])
def test_bad_sigmas(text):
    with pytest.raises(ValueError, match="sigmas"):
        parse_sigmas(text)


def test_resolved_fills_only_unset_values():
    c = RunConfig(population=12, topk=5, metric="angle+flatness").resolved({"augment": True, "gamma": 16.0})
    assert (c.topk, c.mutations, c.crossovers, c.augment, c.gamma) == (5, 6, 6, True, 16.0)
    assert RunConfig(augment=False).resolved({"augment": True}).augment is False


def test_population_one_needs_no_topk():
    c = RunConfig(population=1).resolved({})
    assert (c.topk, c.mutations, c.crossovers) == (1, 0, 0)
    assert c.component("search", seed=0).topk == 1


def test_sections_build_their_component_configs():
    from fastnas.metrics import FlatnessConfig
    from fastnas.search import SearchConfig
    from fastnas.train import TrainConfig

    c = RunConfig(epochs=3, nesterov=True, population=8, recal_batches=2, score_batch_size=32, seed=5)
    t = c.component("train", seed=c.seed)
    assert isinstance(t, TrainConfig) and (t.epochs, t.nesterov, t.seed) == (3, True, 5)
    e = c.component("search", seed=9)
    assert isinstance(e, SearchConfig) and (e.population, e.topk, e.mutations, e.seed) == (8, 2, 4, 9)
    f = c.component("score", seed=c.seed)
    assert isinstance(f, FlatnessConfig) and (f.bn_batches, f.batch_size, f.seed) == (2, 32, 5)


def test_component_validation_applies_once():
    with pytest.raises(ValueError, match="lr_min"):
        RunConfig(lr=0.01, lr_min=0.1)
    with pytest.raises(ValueError, match="topk"):
        RunConfig(population=4, topk=5)
    with pytest.raises(ValueError, match="noise"):
        RunConfig(noise="gaussian")


def test_a_new_component_field_becomes_a_setting():
    import dataclasses

    from fastnas.run.settings import derive_settings

    @dataclasses.dataclass(frozen=True)
    class Toy:
        """A toy component.

        Args:
            depth: how deep
                the toy goes.
            width: how wide.
        """

        depth: int = 3
        width: float = dataclasses.field(default=0.5, metadata={"help": "from metadata"})
        tag: str = "x"
        seed: int = 0

    settings = {s.name: s for s in derive_settings(Toy, phase="train", exclude=("seed",),
                                                   overrides={"tag": {"default": None}})}
    assert list(settings) == ["depth", "width", "tag"]
    assert (settings["depth"].kind, settings["depth"].default, settings["depth"].help) == \
        ("int", 3, "how deep the toy goes.")
    assert (settings["width"].kind, settings["width"].help) == ("float", "from metadata")
    assert settings["tag"].optional and settings["tag"].default is None
    with pytest.raises(TypeError, match="does not have"):
        derive_settings(Toy, phase="train", overrides={"nope": {}})


def test_every_component_field_has_a_flag_with_help():
    import dataclasses

    from fastnas.cli.parser import build_parser
    from fastnas.metrics import FlatnessConfig
    from fastnas.search import SearchConfig
    from fastnas.train import TrainConfig

    text = build_parser()._subparsers._group_actions[0].choices["search"].format_help()
    from fastnas.run.config import SETTINGS
    for cls in (TrainConfig, SearchConfig, FlatnessConfig):
        for f in dataclasses.fields(cls):
            if f.name == "seed":
                continue
            setting = next(s for s in SETTINGS.values() if (s.target or s.name) == f.name and s.phase != "session")
            assert setting.help, f.name
            assert setting.flag in text, setting.flag


def test_toml_sections(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nepochs = 4\n[score]\nmetric = 'accuracy'\n[run]\nseed = 3\n")
    c = RunConfig.from_dict(load_toml(path))
    assert (c.epochs, c.metric, c.seed) == (4, "accuracy", 3)
    assert "[train]" in dumps_toml(c) and "[score]" in dumps_toml(c)
    path.write_text("[trian]\nepochs = 4\n")
    with pytest.raises(ValueError, match="did you mean 'train'"):
        load_toml(path)
    path.write_text("[train]\nmetric = 'angle'\n")
    with pytest.raises(ValueError, match=r"belongs in \[score\]"):
        load_toml(path)
    assert RunConfig.from_dict({"train": {"epochs": 2}}).epochs == 2


def test_flags_set_component_settings():
    from fastnas.cli.parser import build_parser

    args = build_parser().parse_args(["search", "--nesterov", "true", "--sigmas", "1e-3,2e-3",
                                      "--max-params", "none", "--recal-mode", "momentum"])
    assert (args.nesterov, args.sigmas, args.max_params, args.recal_mode) == (True, (1e-3, 2e-3), None, "momentum")


def test_resume_with_another_metric_rechooses_the_default_gamma(tmp_path, cli):
    from _cli_helpers import tiny

    out = tmp_path / "run"
    assert cli("train-supernet", *tiny(), "--metric", "angle+flatness", "--out", out).code == 0
    cfg = out / "config.toml"
    assert "gamma =" not in cfg.read_text()  # a search setting: decided when the search starts
    # as fastnas <= this change wrote it: the default gamma of angle+flatness filled in at once
    cfg.write_text(cfg.read_text().replace('metric = "angle+flatness"\n', 'metric = "angle+flatness"\ngamma = 16.0\n'))
    r = cli("search", "--resume", out, "--metric", "angle + 0.2*accuracy", "--quiet")
    assert r.code == 0, r.err
    text = cfg.read_text()
    assert 'metric = "angle + 0.2*accuracy"' in text and "gamma =" not in text


def _header(path):
    return [ln for ln in path.read_text().splitlines() if ln.startswith("# ")][:1]


def test_settings_derived_from_others_are_decided_when_their_phase_starts(tmp_path, cli):
    """train-supernet (population 20) does not freeze mutations = crossovers = 10 into config.toml, so
    the search may still take --population 6 (its phase has not started)."""
    from _cli_helpers import tiny

    out = tmp_path / "run"
    assert cli("train-supernet", *tiny(population=20), "--out", out).code == 0
    cfg = out / "config.toml"
    header = _header(cfg)
    text = cfg.read_text()
    assert "population = 20" in text and "mutations =" not in text and "topk =" not in text
    assert "sigmas =" not in text and "lr = 0.025  # from the nb201 space's recipe" in text  # train's: decided
    r = cli("search", "--resume", out, "--population", "6", "--quiet")
    assert r.code == 0, r.err
    saved = RunConfig.from_dict(load_toml(cfg))
    assert (saved.population, saved.topk, saved.mutations, saved.crossovers) == (6, 2, 3, 3)  # recorded now
    assert "mutations = 3  # default: population / 2" in cfg.read_text()
    assert _header(cfg) == header  # the resume kept the header comment
    r = cli("search", "--resume", out, "--population", "8")
    assert r.code == 2 and "cannot change population" in r.err


def test_a_finished_run_resumed_with_new_work_does_it_and_keeps_the_header(tmp_path, cli):
    import json

    from _cli_helpers import tiny

    out = tmp_path / "run"
    assert cli("search", *tiny(), "--out", out).code == 0
    cfg = out / "config.toml"
    header = _header(cfg)
    assert json.loads((out / "result.json").read_text())["test_accuracy"] is None
    r = cli("search", "--resume", out, "--retrain-epochs", "1")  # the retrain phase has not started
    assert r.code == 0, r.err
    assert "is finished" not in r.err
    assert json.loads((out / "result.json").read_text())["test_accuracy"] is not None
    assert RunConfig.from_dict(load_toml(cfg)).retrain_epochs == 1 and _header(cfg) == header


def test_a_gamma_for_a_formula_is_refused_before_anything_is_written(tmp_path, cli):
    from _cli_helpers import tiny

    out = tmp_path / "run"
    r = cli("search", *tiny(), "--metric", "angle + 0.2*accuracy", "--gamma", "3", "--out", out)
    assert r.code == 2 and "no mixing weight" in r.err
    assert not out.exists()
