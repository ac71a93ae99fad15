"""User data in a ``.npz`` file and scikit-learn's bundled 8x8 digits."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

from fastnas.data._paths import PathLike, not_found
from fastnas.data.dataset import Dataset, from_tensors

__all__ = ["load_npz", "load_digits"]


_SAVE = "numpy.savez(path, x=images, y=labels[, x_test=..., y_test=...])"


def _check_archive(p: Path) -> None:
    """A ``.npz`` is a zip archive of ``.npy`` files; anything else (a text file, a lone ``.npy``) is named
    for what it is, before numpy would try to read it as a pickle."""
    with open(p, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"PK"):
        return
    if head.startswith(b"\x93NUMPY"):
        raise ValueError(f"{p}: a single .npy array, not a .npz archive; save the data with {_SAVE}")
    what = "the file is empty" if not head else f"it starts with {head!r}, not the zip signature b'PK'"
    raise ValueError(f"{p}: not a valid .npz archive ({what}); save the data with {_SAVE}")


def load_npz(path: PathLike, data_dir: Optional[PathLike] = None, seed: int = 0, **kw) -> Dataset:
    """A dataset from a ``.npz`` file with arrays ``x`` and ``y`` (optionally ``x_test``, ``y_test``).

    ``x`` may be ``(N,H,W)``, ``(N,C,H,W)`` or ``(N,H,W,C)``. A 4-D ``(N, A, B, D)`` is read as
    channels-last if only that reading gives square images (``A == B != D``), or, when both or
    neither do, if ``D`` is 1, 3 or 4 and ``A`` is not; pass ``layout="nchw"``/``"nhwc"`` to override. uint8 images are scaled by 1/255, other dtypes used as stored. Without a test set, a
    seeded stratified 80/20 split (``seed``) holds one out. A relative ``path`` is also looked up
    under ``data_dir``.
    """
    p = Path(path).expanduser()
    tried = [p]
    if not p.is_file() and data_dir is not None and not p.is_absolute():
        p = Path(data_dir).expanduser() / path
        tried.append(p)
    if not p.is_file():
        raise not_found(f"npz dataset {str(path)!r}", tried,
                        "Save your data with numpy.savez(path, x=images, y=labels[, x_test=..., y_test=...]).")
    _check_archive(p)
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e):  # numpy's message advises allow_pickle=True: unsafe for a file from elsewhere
            raise ValueError(f"{p}: holds object (pickled) arrays, which fastnas does not load (loading them "
                             f"can run code); save plain numeric arrays with {_SAVE}") from None
        raise ValueError(f"{p}: not a valid .npz archive ({e}); save the data with {_SAVE}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{p}: not a valid .npz archive ({type(e).__name__}: {e}); save the data with "
                         f"{_SAVE}") from None
    for k in ("x", "y"):
        if k not in arrays:
            raise ValueError(f"{p}: missing array {k!r} (has {sorted(arrays)}); expected x, y "
                             "and optionally x_test, y_test")
    kw.setdefault("name", p.name)
    try:
        return from_tensors(arrays["x"], arrays["y"], arrays.get("x_test"), arrays.get("y_test"),
                            seed=seed, **kw)
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from None


def load_digits(data_dir: Optional[PathLike] = None, seed: int = 0, **kw) -> Dataset:
    """scikit-learn's bundled digits: 1797 images, 1x8x8, values 0..16, 10 classes.

    No official test split: a seeded stratified 80/20 split (``seed``) holds 20% of each class out.
    Images stay 8x8 (``resolution=8``). ``data_dir`` is unused: the data ships with scikit-learn.
    """
    del data_dir
    from sklearn.datasets import load_digits as _sk_load_digits  # import here: sklearn is slow to import

    d = _sk_load_digits()
    x = d.images.astype(np.float32)  # (1797, 8, 8)
    kw.setdefault("scale", 16.0)
    kw.setdefault("name", "digits")
    kw.setdefault("classes", tuple(str(i) for i in range(10)))
    return from_tensors(x, d.target, seed=seed, num_classes=10, **kw)
