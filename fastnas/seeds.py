"""Every seed fastnas uses, derived from one run seed by purpose: :func:`derive_seed`.

A run has one seed (``--seed``). Each use of randomness -- the supernet's initial weights, the data
subsets, the batch order of an epoch, the architecture of a training step, the search -- gets its own
seed ``derive_seed(seed, purpose, *index)``: a pure function of its arguments, stable across processes,
platforms and library versions, so runs reproduce and resumed runs end as uninterrupted ones did.

Three value schemes are kept, so that no result of an earlier fastnas moves. Which one applies is
decided by the arguments alone:

* **no index** -- ``sha256("fastnas.run:{seed}:{purpose}")``. The run's one-off seeds:
  ``"supernet-init"``, ``"supernet-batches"``, ``"search"``, ``"limit-train"``, ``"limit-valid"``,
  ``"valid-subset"``, ``"retrain-init"``, ``"retrain-batches"``, and ``"retrain-epoch-{e}"`` (the
  retraining's in-model randomness of epoch ``e``, the epoch written into the purpose).
* **one or more indices** -- ``sha256("fastnas.spos:{seed}:{purpose}:{i0}:{i1}...")``. Per-epoch and
  per-step seeds of the training loop: ``("arch", step)``, ``("batches", epoch)``, ``("torch", epoch)``.
* **purpose** :data:`SEED_SEQUENCE` -- numpy's ``SeedSequence([seed, *index])``, first 64-bit word. The
  batcher's (:class:`fastnas.data.Batches`) sample order of an epoch, ``(base, SEED_SEQUENCE, epoch, 0)``,
  and augmentation of batch ``k``, ``(base, SEED_SEQUENCE, epoch, k + 1)``, where ``base`` is the
  batcher's own seed (itself derived, e.g. ``derive_seed(seed, "retrain-batches")``).

All three give 63-bit non-negative integers (valid for ``torch.Generator.manual_seed`` and
``random.Random``). This module is ground: it imports nothing from fastnas.
"""

from __future__ import annotations

import hashlib
import numbers

import numpy as np

__all__ = ["derive_seed", "SEED_SEQUENCE"]

SEED_SEQUENCE = "seed-sequence"
"""The purpose whose value is numpy's ``SeedSequence([seed, *index])`` (the batcher's scheme)."""

_U64 = 0xFFFFFFFFFFFFFFFF


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}={value!r}: expected an integer")
    return int(value)


def derive_seed(seed: int, purpose: str, *index: int) -> int:
    """The seed of one use of randomness: a 63-bit integer from ``(seed, purpose, *index)``.

    Args:
        seed: the run's (or a component's) seed, any integer.
        purpose: what the seed is for, e.g. ``"supernet-init"`` or ``"arch"``; no ``":"`` (it separates
            the fields that are hashed). :data:`SEED_SEQUENCE` selects the batcher's scheme.
        *index: integers that tell apart the uses of one purpose (the epoch, the step, the batch).

    Returns:
        An integer in ``[0, 2**63)``; the same arguments give the same value everywhere.

    Example::

        torch.manual_seed(derive_seed(config.seed, "supernet-init"))
        rng = random.Random(derive_seed(config.seed, "arch", step))
    """
    seed = _check_int("seed", seed)
    if not isinstance(purpose, str) or not purpose or ":" in purpose:
        raise ValueError(f"purpose={purpose!r}: expected a non-empty string without ':'")
    words = [_check_int(f"index[{k}]", i) for k, i in enumerate(index)]
    if purpose == SEED_SEQUENCE:
        # SeedSequence mixes the words well and is stable across numpy versions and platforms.
        state = np.random.SeedSequence([w & _U64 for w in (seed, *words)]).generate_state(2, dtype=np.uint64)
        return int(state[0] >> np.uint64(1))
    if words:
        text = f"fastnas.spos:{seed}:{purpose}:" + ":".join(map(str, words))
    else:
        text = f"fastnas.run:{seed}:{purpose}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
