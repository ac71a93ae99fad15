"""Negative flips between a reference model and a candidate (model upgrades, model families).

A *negative flip* is a sample the reference model classifies correctly and the candidate gets wrong
(positive-congruent training, Yan et al., CVPR 2021; REG-NAS, Duggal et al., ECCV 2022). Over ``N``
samples with reference error rate ``ER_ref`` and candidate error rate ``ER_new``:

* NFR (negative flip rate) = #(reference right and candidate wrong) / N
* relative NFR = NFR / ((1 - ER_ref) * ER_new): the NFR divided by the one expected if the two models'
  errors were independent (undefined, NaN, when either factor is zero)
* NFI (negative flip impact) = #negative flips / #errors of the candidate (NaN without errors)
* PFR (positive flip rate) = #(reference wrong and candidate right) / N

Every value is a fraction in ``[0, 1]`` (relative NFR may exceed 1), not a percentage. Predictions are
labels ``(N,)`` or logits ``(N, C)`` (the argmax is taken); targets are labels ``(N,)``. Tensors stay on
their device: the counts are reduced there and read back once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional

import torch

__all__ = ["negative_flip_rate", "relative_nfr", "flip_report", "FlipReport", "predicted_labels"]


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name}: expected a tensor of labels (N,) or logits (N, C), got "
                         f"{type(value).__name__} ({exc})") from None


def _labels_1d(name: str, t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name}: expected integer labels, got dtype {t.dtype}")
    if t.is_floating_point():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: labels must be finite; pass logits as (N, C)")
        if not bool((t == t.round()).all()):
            raise ValueError(f"{name}: a 1-D float tensor must hold whole-number labels; pass logits as (N, C)")
    t = t.long()
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{name}: labels must be >= 0, found {int(t.min())}")
    return t


def predicted_labels(name: str, value: Any, n: Optional[int] = None) -> torch.Tensor:
    """``value`` as labels ``(N,)`` (the argmax of logits ``(N, C)``); ValueError naming ``name`` otherwise.

    ``n``: the number of samples expected (the targets'), checked when given.
    """
    t = _as_tensor(name, value)
    if t.dim() == 2:
        if not t.is_floating_point():
            raise ValueError(f"{name}: a 2-D input is read as logits (N, C) and must be floating point, "
                             f"got dtype {t.dtype}")
        if t.shape[1] == 0:
            raise ValueError(f"{name}: logits of shape {tuple(t.shape)} have no classes")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: logits hold NaN or infinite values")
        t = t.argmax(dim=1)
    elif t.dim() == 1:
        t = _labels_1d(name, t)
    else:
        raise ValueError(f"{name}: expected labels (N,) or logits (N, C), got shape {tuple(t.shape)}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"{name}: {t.shape[0]} predictions, but targets has {n} samples")
    return t


def _counts(reference: Any, candidate: Any, targets: Any) -> Dict[str, Any]:
    y = _as_tensor("targets", targets)
    if y.dim() != 1:
        raise ValueError(f"targets: expected labels of shape (N,), got shape {tuple(y.shape)}")
    y = _labels_1d("targets", y)
    n = int(y.shape[0])
    if n == 0:
        raise ValueError("targets: no samples (N = 0); flip rates need at least one")
    ref = predicted_labels("reference", reference, n).to(y.device)
    new = predicted_labels("candidate", candidate, n).to(y.device)
    ref_ok, new_ok = ref == y, new == y
    stacked = torch.stack([ref_ok.sum(), new_ok.sum(), (ref_ok & ~new_ok).sum(), (~ref_ok & new_ok).sum()])
    ref_right, new_right, neg, pos = (int(v) for v in stacked.tolist())  # one read-back
    return {"n": n, "ref_right": ref_right, "new_right": new_right, "neg": neg, "pos": pos,
            "y": y, "ref_ok": ref_ok, "new_ok": new_ok}


def _rel(nfr: float, ref_error: float, new_error: float) -> float:
    denom = (1.0 - ref_error) * new_error
    return nfr / denom if denom > 0 else float("nan")


def negative_flip_rate(reference: Any, candidate: Any, targets: Any) -> float:
    """The fraction of samples ``reference`` gets right and ``candidate`` gets wrong.

    Args:
        reference: the reference (old, smaller) model's predictions: labels ``(N,)`` or logits ``(N, C)``.
        candidate: the candidate (new, larger) model's predictions, same forms.
        targets: the true labels ``(N,)``.

    Returns:
        NFR in ``[0, 1]``.
    """
    c = _counts(reference, candidate, targets)
    return c["neg"] / c["n"]


def relative_nfr(reference: Any, candidate: Any, targets: Any) -> float:
    """NFR / ((1 - ER_ref) * ER_new): the negative flip rate relative to independent errors.

    NaN when the reference gets every sample wrong or the candidate none (no flip is then possible).
    Arguments as :func:`negative_flip_rate`.
    """
    c = _counts(reference, candidate, targets)
    n = c["n"]
    return _rel(c["neg"] / n, 1.0 - c["ref_right"] / n, 1.0 - c["new_right"] / n)


@dataclass(frozen=True)
class FlipReport:
    """Flip statistics of a candidate against a reference (fractions; see the module docstring).

    ``per_class`` maps a true class to ``{"n", "negative_flips", "nfr", "pfr"}`` with the rates taken
    over that class's samples.
    """

    n: int
    ref_error: float
    new_error: float
    nfr: float
    rel_nfr: float
    nfi: float
    pfr: float
    negative_flips: int
    positive_flips: int
    per_class: Dict[int, Dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-able dict (class keys as strings)."""
        out = asdict(self)
        out["per_class"] = {str(k): v for k, v in self.per_class.items()}
        return out


def flip_report(reference: Any, candidate: Any, targets: Any) -> FlipReport:
    """Error rates, NFR, relative NFR, NFI, PFR and a per-class breakdown in one pass.

    Arguments as :func:`negative_flip_rate`.
    """
    c = _counts(reference, candidate, targets)
    n, neg, pos = c["n"], c["neg"], c["pos"]
    ref_error, new_error = 1.0 - c["ref_right"] / n, 1.0 - c["new_right"] / n
    new_wrong = n - c["new_right"]
    y, ref_ok, new_ok = c["y"], c["ref_ok"], c["new_ok"]
    k = int(y.max()) + 1
    # (3, K) counts per true class: samples, negative flips, positive flips; one read-back
    table = torch.stack([
        torch.bincount(y, minlength=k),
        torch.bincount(y[ref_ok & ~new_ok], minlength=k),
        torch.bincount(y[~ref_ok & new_ok], minlength=k),
    ]).tolist()
    per_class = {cls: {"n": table[0][cls], "negative_flips": table[1][cls],
                       "nfr": table[1][cls] / table[0][cls], "pfr": table[2][cls] / table[0][cls]}
                 for cls in range(k) if table[0][cls] > 0}
    return FlipReport(n=n, ref_error=ref_error, new_error=new_error, nfr=neg / n,
                      rel_nfr=_rel(neg / n, ref_error, new_error),
                      nfi=neg / new_wrong if new_wrong else float("nan"), pfr=pos / n,
                      negative_flips=neg, positive_flips=pos, per_class=per_class)
