"""The ``nfr`` score part and the REG-NAS rewards R0/R1/R2: negative flips of a candidate against a
reference, counted inside the evaluator's reduction, checked against fastnas.flip_report on predictions
computed here with plain forwards."""

from __future__ import annotations

import pytest
import torch

from fastnas.metrics import FlatnessConfig, make_score_fn
from fastnas.metrics.evaluator import MultiSigmaEvaluator
from fastnas.metrics.flips import flip_report
from fastnas.metrics.metric import METRIC_PRESETS, Metric
from fastnas.spaces.nb201 import NB201

REF = ("nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3", "skip_connect", "none", "nor_conv_3x3")
CAND = ("nor_conv_1x1", "skip_connect", "nor_conv_3x3", "avg_pool_3x3", "nor_conv_3x3", "skip_connect")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    space = NB201(C=4, N=1, resolution=8)
    sn = space.supernet()
    with torch.no_grad():
        for p in sn.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 3, 8, 8, generator=g), torch.randint(0, 10, (50,), generator=g)
    return space, sn, x, y


def _plain_predictions(sn, x, arch):
    sn.eval()
    with torch.no_grad():
        return sn(x, arch).argmax(1)


def _fn(setup, metric, **kw):
    space, sn, x, y = setup
    # no BatchNorm recalibration: the plain eval forward is then the independent reference
    cfg = FlatnessConfig(bn_batches=0, batch_size=16)
    return make_score_fn(metric, sn, space, valid=(x, y), flatness_config=cfg, **kw)


def test_nfr_matches_flip_report_of_plain_predictions(setup):
    space, sn, x, y = setup
    ref, cand = _plain_predictions(sn, x, REF), _plain_predictions(sn, x, CAND)
    expected = flip_report(ref, cand, y)
    assert 0 < expected.negative_flips < len(y)  # the case is not trivial
    for reference in (REF, ref, sn(x, REF).detach()):  # an architecture, labels, logits
        fn = _fn(setup, "R2", reference=reference)
        s = fn(CAND)
        assert s.parts["nfr"] == expected.nfr
        assert s.parts["rel_nfr"] == pytest.approx(expected.rel_nfr)
        assert s.parts["accuracy"] == pytest.approx(1 - expected.new_error, abs=1e-12)
        assert s.value == pytest.approx(s.parts["accuracy"] - s.parts["nfr"])
    assert _fn(setup, "R2", reference=REF)(REF).parts["nfr"] == 0.0  # a model never flips against itself


def test_presets_are_the_reg_nas_rewards():
    assert Metric.parse("R0").formula == "accuracy"
    assert Metric.parse("R1").formula == "-nfr"
    assert Metric.parse("R2").formula == "accuracy - nfr"
    assert "reference" in METRIC_PRESETS["R2"].needs and "reference" not in METRIC_PRESETS["R0"].needs


def test_the_reference_is_part_of_the_cache_key(setup):
    space, sn, x, y = setup
    fn = _fn(setup, "1*accuracy - 2*nfr", reference=REF)
    a = fn(CAND)
    key_a = fn.reference_key
    fn.set_reference(CAND)
    b = fn(CAND)
    assert fn.reference_key != key_a and b.parts["nfr"] == 0.0 and a.parts["nfr"] > 0
    assert fn.evaluations == 2
    fn.set_reference(REF)
    assert fn(CAND) is a and fn.evaluations == 2  # the earlier score, from the cache


def test_perturbed_flip_counts_agree_between_the_kernel_and_the_python_route(setup):
    space, sn, x, y = setup
    kw = dict(sigmas=(0.01, 0.05), samples=2, batch_size=16, bn_batches=0)
    fused = MultiSigmaEvaluator(sn, x, y, **kw)
    plain = MultiSigmaEvaluator(sn, x, y, criterion=torch.nn.CrossEntropyLoss(reduction="sum"), **kw)
    ref = fused.reference_correct(REF)
    assert torch.equal(ref, _plain_predictions(sn, x, REF) == y)
    before = {k: v.clone() for k, v in sn.state_dict().items()}
    results = []
    for ev in (fused, plain):
        ev.set_reference(ref)
        results.append(ev.evaluate(CAND, clean=True, perturbed=True))
    assert results[0].nfrs == results[1].nfrs and len(results[0].nfrs) == 2
    assert results[0].clean_nfr == results[1].clean_nfr == flip_report(
        _plain_predictions(sn, x, REF), _plain_predictions(sn, x, CAND), y).nfr
    assert all(torch.equal(v, before[k]) for k, v in sn.state_dict().items())
    fused.set_reference(None)
    assert fused.evaluate(CAND, clean=True).nfrs == () and fused.evaluate(CAND, clean=True).clean_nfr is None


def test_bad_reference_input(setup):
    space, sn, x, y = setup
    with pytest.raises(ValueError, match="reference: metric 'R2' counts negative flips against a reference"):
        _fn(setup, "R2")
    with pytest.raises(ValueError, match="reference: metric 'accuracy' has no part that uses a reference"):
        _fn(setup, "accuracy", reference=REF)
    with pytest.raises(ValueError, match="reference: 7 predictions, but targets has 50"):
        _fn(setup, "R2", reference=torch.zeros(7, dtype=torch.long))
    with pytest.raises(ValueError, match="arch|expected"):
        _fn(setup, "R2", reference=("conv_9x9",) * 6)
    ev = MultiSigmaEvaluator(sn, x, y, sigmas=(0.01,), bn_batches=0)
    with pytest.raises(ValueError, match=r"reference: expected a bool tensor of shape \(50,\)"):
        ev.set_reference(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="reference: expected dtype torch.bool"):
        ev.set_reference(torch.ones(50))


def test_a_run_refuses_a_flip_metric_before_any_work(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "fastnas", "search", "--metric", "R2", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--metric 'R2' counts negative flips against a reference" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()
