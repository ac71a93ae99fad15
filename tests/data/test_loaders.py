from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from fastnas.data import (
    FASHION_MNIST_DIR, DataNotFoundError, from_tensors, list_datasets, load_dataset, read_cifar_batch,
    read_idx,
)

from _data_writers import make_idx_set, write_cifar_batch, write_idx


def _raw(ds, x):
    """Undo the normalisation: back to the [0, 1] scale."""
    m = torch.tensor(ds.mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(ds.std, dtype=torch.float32).view(1, -1, 1, 1)
    return x * s + m


# ---- registry ------------------------------------------------------------------------------------

def test_list_datasets():
    assert list_datasets() == ["cifar10", "cifar100", "digits", "fashion-mnist", "mnist"]
    assert list_datasets("cifar*") == ["cifar10", "cifar100"]


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"cifar10") as e:
        load_dataset("cifar1O")
    assert "Did you mean" in str(e.value)


def test_name_aliases(tmp_path):
    make_idx_set(tmp_path)
    for name in ("fashion_mnist", "Fashion-MNIST", "fashionmnist"):
        assert load_dataset(name, data_dir=tmp_path).name == "fashion-mnist"


# ---- digits --------------------------------------------------------------------------------------

def test_digits_real_load():
    ds = load_dataset("digits")
    assert ds.train_x.shape[0] + ds.test_x.shape[0] == 1797
    assert ds.train_x.shape[1:] == (1, 8, 8) and ds.resolution == 8 and ds.in_channels == 1
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert set(ds.train_y.tolist()) == set(range(10)) == set(ds.test_y.tolist())
    assert ds.num_classes == 10
    assert abs(ds.test_x.shape[0] - 0.2 * 1797) < 10  # stratified 80/20
    # Normalised with train statistics: train mean 0, std 1 (per channel).
    assert abs(ds.train_x.mean().item()) < 1e-5
    assert abs(ds.train_x.std(unbiased=False).item() - 1) < 1e-4
    raw = _raw(ds, ds.train_x)
    assert raw.min().item() > -1e-5 and raw.max().item() < 1 + 1e-5  # values 0..16 scaled by 1/16


def test_digits_split_is_seeded():
    a, b, c = load_dataset("digits", seed=0), load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.test_x, c.test_x)


# ---- IDX -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_loader(tmp_path, name, gz):
    arrays = make_idx_set(tmp_path, gz=gz)
    ds = load_dataset(name, data_dir=tmp_path)
    assert ds.train_x.shape == (40, 1, 6, 6) and ds.test_x.shape == (20, 1, 6, 6)
    assert ds.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    raw = _raw(ds, ds.train_x)[:, 0].numpy()
    np.testing.assert_allclose(raw, arrays["train-images-idx3-ubyte"] / 255.0, atol=1e-5)
    raw_test = _raw(ds, ds.test_x)[:, 0].numpy()
    np.testing.assert_allclose(raw_test, arrays["t10k-images-idx3-ubyte"] / 255.0, atol=1e-5)


def test_idx_finds_subfolder_and_dotted_names(tmp_path):
    sub = tmp_path / "MNIST" / "raw"
    arrays = make_idx_set(sub)
    os.rename(sub / "train-images-idx3-ubyte", sub / "train-images.idx3-ubyte")
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()


def test_read_idx_other_dtypes(tmp_path):
    import struct
    a = np.arange(12, dtype=">i4").reshape(3, 4)
    p = tmp_path / "a.idx"
    p.write_bytes(struct.pack(">HBB", 0, 0x0C, 2) + struct.pack(">2I", 3, 4) + a.tobytes())
    out = read_idx(p)
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, np.arange(12).reshape(3, 4))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_names_file(tmp_path, gz):
    p = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 4, 4), np.uint8))
    raw = p.read_bytes()[:-7]
    if gz:
        p.unlink()
        p = tmp_path / "train-images-idx3-ubyte.gz"
        raw = gzip.compress(raw)
    p.write_bytes(raw)
    with pytest.raises(ValueError, match="truncated") as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_idx_corrupt_gzip_and_bad_magic(tmp_path):
    p = tmp_path / "x.gz"
    p.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00\x00\x00\x03abc")[:-6])
    with pytest.raises(ValueError, match="gzip") as e:
        read_idx(p)
    assert str(p) in str(e.value)
    q = tmp_path / "y"
    q.write_bytes(b"\x89PNG\r\n\x1a\nxxxx")
    with pytest.raises(ValueError, match="not an IDX file") as e:
        read_idx(q)
    assert str(q) in str(e.value)


def test_idx_label_count_mismatch(tmp_path):
    make_idx_set(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte"):
        load_dataset("mnist", data_dir=tmp_path)


def test_idx_loader_corrupt_file_through_registry(tmp_path):
    make_idx_set(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ValueError, match=str(p)):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_idx_missing_dir_lists_paths_and_hint(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("fashion-mnist", data_dir=missing)
    msg = str(e.value)
    assert isinstance(e.value, DataNotFoundError)
    assert str(missing) in msg and str(missing / "fashion-mnist") in msg
    assert "apt-get install dataset-fashion-mnist" in msg


def test_idx_missing_one_file(tmp_path):
    make_idx_set(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte") as e:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(tmp_path) in str(e.value)


def test_data_dir_env(tmp_path, monkeypatch):
    make_idx_set(tmp_path / "mnist")
    monkeypatch.setenv("FASTNAS_DATA_DIR", str(tmp_path))
    assert load_dataset("mnist").train_x.shape[0] == 40


@pytest.mark.skipif(not Path(FASHION_MNIST_DIR).is_dir(),
                    reason=f"{FASHION_MNIST_DIR} absent (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_real(monkeypatch):
    monkeypatch.delenv("FASTNAS_DATA_DIR", raising=False)
    ds = load_dataset("fashion-mnist")
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_y.bincount().tolist() == [6000] * 10
    assert ds.test_y.bincount().tolist() == [1000] * 10
    assert ds.mean[0] == pytest.approx(0.2860, abs=1e-3) and ds.std[0] == pytest.approx(0.3530, abs=1e-3)
    assert ds.classes[0] == "T-shirt/top"


# ---- CIFAR ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("use_parent", [False, True])
def test_cifar10(cifar10_dir, use_parent):
    ds = load_dataset("cifar10", data_dir=cifar10_dir.parent if use_parent else cifar10_dir)
    assert ds.train_x.shape == (30, 3, 32, 32) and ds.test_x.shape == (5, 3, 32, 32)
    assert ds.num_classes == 10 and ds.in_channels == 3 and ds.resolution == 32 and ds.augment
    assert ds.classes == tuple(f"c{i}" for i in range(10))
    x1, y1 = read_cifar_batch(cifar10_dir / "data_batch_1")
    assert ds.train_y[:6].tolist() == y1.tolist()
    np.testing.assert_allclose(_raw(ds, ds.train_x[:6]).numpy(), x1 / 255.0, atol=1e-5)
    # Channel-major: the first 1024 bytes are the red plane.
    with open(cifar10_dir / "data_batch_1", "rb") as f:
        data = pickle.load(f, encoding="bytes")[b"data"]
    np.testing.assert_array_equal(x1[0, 0].reshape(-1), data[0, :1024])
    assert len(ds.mean) == 3


def test_cifar100(cifar100_dir):
    ds = load_dataset("cifar100", data_dir=cifar100_dir.parent)
    assert ds.train_x.shape == (12, 3, 32, 32) and ds.num_classes == 100
    _, y = read_cifar_batch(cifar100_dir / "train", b"fine_labels")
    assert ds.train_y.tolist() == y.tolist()
    assert ds.classes is None


def test_cifar_protocol5_pickle(tmp_path):
    p = tmp_path / "b"
    data, labels = write_cifar_batch(p, 3, b"labels", 10, seed=0, protocol=5)
    x, y = read_cifar_batch(p)
    assert y.tolist() == labels and x.reshape(3, -1).tolist() == data.tolist()


def test_cifar_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("cifar10", data_dir=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "data_batch_1") in msg
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in msg
    assert "cifar-10-batches-py" in msg and "never downloads" in msg


def test_cifar_missing_test_batch(cifar10_dir):
    (cifar10_dir / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_dataset("cifar10", data_dir=cifar10_dir)


def test_cifar_truncated(cifar10_dir):
    p = cifar10_dir / "data_batch_3"
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(ValueError, match="corrupt or truncated") as e:
        load_dataset("cifar10", data_dir=cifar10_dir)
    assert str(p) in str(e.value)


def test_cifar_wrong_keys_and_shape(tmp_path):
    p = tmp_path / "train"
    with open(p, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"coarse_labels": [0, 1]}, f)
    with pytest.raises(ValueError, match="fine_labels"):
        read_cifar_batch(p, b"fine_labels")
    with open(p, "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        read_cifar_batch(p)


def test_cifar_refuses_code_in_pickle(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    p = tmp_path / "test_batch"
    with open(p, "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(ValueError, match="refusing"):
        read_cifar_batch(p)


# ---- npz -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["nhw", "nchw", "nhwc"])
def test_npz_layouts(tmp_path, layout):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 3, 5, 5), dtype=np.uint8)
    y = np.arange(50) % 5
    stored = {"nhw": x[:, 0], "nchw": x, "nhwc": x.transpose(0, 2, 3, 1)}[layout]
    p = tmp_path / "d.npz"
    np.savez(p, x=stored, y=y)
    ds = load_dataset(str(p), seed=3)
    c = 1 if layout == "nhw" else 3
    assert ds.in_channels == c and ds.resolution == 5 and ds.name == "d.npz"
    assert ds.train_x.shape[0] == 40 and ds.test_x.shape[0] == 10  # stratified 80/20
    assert ds.test_y.bincount().tolist() == [2] * 5
    # Every sample lands in exactly one side, with its own label.
    ref = torch.from_numpy(x[:, :c].astype(np.float32) / 255.0)
    got = torch.cat([_raw(ds, ds.train_x), _raw(ds, ds.test_x)])
    labels = torch.cat([ds.train_y, ds.test_y])
    order = sorted(range(50), key=lambda i: tuple(got[i].flatten().tolist()))
    ref_order = sorted(range(50), key=lambda i: tuple(ref[i].flatten().tolist()))
    torch.testing.assert_close(got[order], ref[ref_order], atol=1e-5, rtol=0)
    assert labels[order].tolist() == [int(y[i]) for i in ref_order]


def test_npz_with_test_set_and_relative_path(tmp_path):
    x = np.random.default_rng(0).random((8, 4, 4, 1)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(8) % 2, x_test=x[:3], y_test=np.array([1, 0, 1]))
    ds = load_dataset("d.npz", data_dir=tmp_path)
    assert ds.train_x.shape == (8, 1, 4, 4) and ds.test_y.tolist() == [1, 0, 1]
    np.testing.assert_allclose(_raw(ds, ds.train_x)[:, 0].numpy(), x[..., 0], atol=1e-5)


def test_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_dataset(str(tmp_path / "nope.npz"))
    p = tmp_path / "bad.npz"
    np.savez(p, images=np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="missing array 'x'") as e:
        load_dataset(str(p))
    assert str(p) in str(e.value)
    p.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a valid .npz archive") as e:
        load_dataset(str(p))
    assert str(p) in str(e.value) and "allow_pickle" not in str(e.value)
    p.write_text("x,y\n1,2\n")  # a text file named .npz: numpy would suggest allow_pickle (unsafe)
    with pytest.raises(ValueError, match="not a valid .npz archive") as e:
        load_dataset(str(p))
    assert "pickle" not in str(e.value)
    np.save(tmp_path / "one.npy", np.zeros(3))
    (tmp_path / "one.npy").rename(p)
    with pytest.raises(ValueError, match="a single .npy array, not a .npz archive"):
        load_dataset(str(p))
    np.savez(p, x=np.array([{}, {}], dtype=object), y=np.zeros(2))
    with pytest.raises(ValueError, match="object \\(pickled\\) arrays, which fastnas does not load") as e:
        load_dataset(str(p))
    assert "allow_pickle" not in str(e.value)
    np.savez(p, x=np.zeros((4, 3, 3)), y=np.zeros(5))
    with pytest.raises(ValueError, match=str(p)):
        load_dataset(str(p))


# ---- from_tensors --------------------------------------------------------------------------------

def test_normalisation_uses_train_statistics():
    x = torch.full((4, 2, 3, 3), 0.0)
    x[:, 0] = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(4, 1, 1)
    x[:, 1] = 5.0  # constant channel: std recorded as 1
    xt = torch.full((2, 2, 3, 3), 10.0)
    ds = from_tensors(x, torch.tensor([0, 1, 0, 1]), xt, torch.tensor([0, 1]))
    assert ds.mean == pytest.approx((1.5, 5.0)) and ds.std == pytest.approx((np.std([0, 1, 2, 3]), 1.0))
    torch.testing.assert_close(ds.test_x[:, 0], torch.full((2, 3, 3), (10 - 1.5) / np.std([0, 1, 2, 3])),
                               check_dtype=False)
    torch.testing.assert_close(ds.test_x[:, 1], torch.full((2, 3, 3), 5.0))
    assert ds.pad_fill[0] == pytest.approx(-1.5 / np.std([0, 1, 2, 3]))


def test_from_tensors_validation():
    x = torch.zeros(4, 1, 3, 3)
    with pytest.raises(ValueError, match="together"):
        from_tensors(x, torch.zeros(4), x_test=x)
    with pytest.raises(ValueError, match=r"\(4,\)"):
        from_tensors(x, torch.zeros(3))
    with pytest.raises(ValueError, match="non-square"):
        from_tensors(torch.zeros(4, 1, 3, 5), torch.zeros(4))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        from_tensors(x, torch.tensor([0, 1, 2, 0]), num_classes=2)
    with pytest.raises(ValueError, match="class indices >= 0, got a minimum of -1") as e:
        from_tensors(x, torch.tensor([0, -1, 1, 0]))
    assert "[0, 0)" not in str(e.value)
    with pytest.raises(ValueError, match="non-integral"):
        from_tensors(x, torch.tensor([0.5, 1, 0, 0]))
    with pytest.raises(ValueError, match="layout"):
        from_tensors(x, torch.zeros(4), layout="chw")
    ds = from_tensors(x.numpy(), np.array([0, 1, 0, 1]), normalize=False)
    assert ds.mean == (0.0,) and ds.std == (1.0,) and ds.num_classes == 2
    assert ds.to("cpu").train_x.shape == ds.train_x.shape and "Dataset(" in repr(ds)


@pytest.mark.parametrize("shape,layout", [
    ((2, 3, 5, 5), "nchw"), ((2, 5, 5, 3), "nhwc"), ((2, 2, 3, 3), "nchw"), ((2, 4, 4, 1), "nhwc"),
    ((2, 1, 4, 4), "nchw"), ((2, 28, 28, 1), "nhwc"), ((2, 3, 3, 3), "nchw"),
])
def test_layout_detection(shape, layout):
    x = torch.randn(*shape)
    ds = from_tensors(x, torch.tensor([0, 1]), x, torch.tensor([0, 1]), normalize=False)
    expected = x if layout == "nchw" else x.permute(0, 3, 1, 2)
    assert torch.equal(ds.train_x, expected)
    ds = from_tensors(x.permute(0, 2, 3, 1) if layout == "nchw" else x, torch.tensor([0, 1]),
                      layout="nhwc", test_fraction=0.5, normalize=False)
    assert ds.in_channels == expected.shape[1]
