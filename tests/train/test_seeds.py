"""fastnas.seeds.derive_seed: the three value schemes, checked against hashlib and numpy directly."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from fastnas.seeds import SEED_SEQUENCE, derive_seed


def _sha(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


@pytest.mark.parametrize("seed", [0, 1, 7, 2 ** 32 - 1, -3])
@pytest.mark.parametrize("purpose", ["supernet-init", "search", "retrain-epoch-4"])
def test_no_index_is_the_run_scheme(seed, purpose):
    assert derive_seed(seed, purpose) == _sha(f"fastnas.run:{seed}:{purpose}")


@pytest.mark.parametrize("seed", [0, 5, 2 ** 40])
@pytest.mark.parametrize("index", [(0,), (17,), (10 ** 9,), (2, 3)])
def test_indices_are_the_trainer_scheme(seed, index):
    text = f"fastnas.spos:{seed}:arch:" + ":".join(map(str, index))
    assert derive_seed(seed, "arch", *index) == _sha(text)


def test_known_values():
    # Fixed values: a change of scheme would move every result fastnas has produced.
    assert derive_seed(0, "supernet-init") == _sha("fastnas.run:0:supernet-init")
    assert derive_seed(0, "arch", 0) == _sha("fastnas.spos:0:arch:0")
    assert derive_seed(0, "arch", 0) != derive_seed(0, "arch", 1) != derive_seed(1, "arch", 1)
    assert derive_seed(0, "batches", 3) != derive_seed(0, "torch", 3)


@pytest.mark.parametrize("words", [(0, 0, 0), (5, 3, 1), (2 ** 62, 7, 9), (-1, 2)])
def test_seed_sequence_scheme(words):
    ref = np.random.SeedSequence([w & 0xFFFFFFFFFFFFFFFF for w in words]).generate_state(2, dtype=np.uint64)[0]
    assert derive_seed(words[0], SEED_SEQUENCE, *words[1:]) == int(ref) >> 1


def test_range_and_type():
    values = [derive_seed(s, p, *i) for s in range(20) for p in ("a", SEED_SEQUENCE) for i in ((), (3,))]
    assert all(isinstance(v, int) and 0 <= v < 2 ** 63 for v in values)
    assert len(set(values)) == len(values)


@pytest.mark.parametrize("args, needle", [
    ((True, "a"), "seed=True"),
    ((1.5, "a"), "seed=1.5"),
    ((0, ""), "purpose=''"),
    ((0, "a:b"), "without ':'"),
    ((0, 3), "purpose=3"),
    ((0, "a", 1.0), r"index\[0\]=1.0"),
])
def test_bad_arguments_are_named(args, needle):
    with pytest.raises(ValueError, match=needle):
        derive_seed(*args)
