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
    c = RunConfig(data='we"ird\\path.npz', sigmas=(2e-3, 1e-2), gamma=0.5, max_params=1e6, augment=True,
                  out="runs/x").resolved({"recal_batches": 3})
    path = tmp_path / "c.toml"
    path.write_text(dumps_toml(c, header="a header\nof two lines"))
    assert RunConfig.from_dict(load_toml(path)) == c


@pytest.mark.parametrize("text", ["1e-2,2e-3", "0", "-1,1", "", "x", "1e-3,1e-3"])
def test_bad_sigmas(text):
    with pytest.raises(ValueError, match="sigmas"):
        parse_sigmas(text)


def test_resolved_fills_only_unset_values():
    c = RunConfig(population=12, topk=5).resolved({"augment": True, "gamma": 16.0})
    assert (c.topk, c.mutations, c.crossovers, c.augment, c.gamma) == (5, 6, 6, True, 16.0)
    assert RunConfig(augment=False).resolved({"augment": True}).augment is False
