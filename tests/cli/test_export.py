"""``fastnas export``: the written file's ``load()`` takes raw images (as the dataset's source gives them) and
gives the supernet path's predictions; it imports only torch; recalibration is bounded and reported."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from _cli_helpers import REPO, tiny

# A clean interpreter (-I: no PYTHONPATH, no user site, no cwd on sys.path) in which fastnas cannot be
# imported (an import hook refuses it even where it is installed); then the exported module.
_CLEAN = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == 'fastnas' or name.startswith('fastnas.'):
            raise ImportError('fastnas is blocked here')
sys.meta_path.insert(0, Block())
try:
    import fastnas
except ImportError:
    pass
else:
    raise SystemExit('fastnas is importable in the clean interpreter')
"""


def _run_clean(script: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-I", "-c", _CLEAN + textwrap.dedent(script)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _supernet_logits(run_dir: Path, arch_text: str, x: torch.Tensor) -> torch.Tensor:
    """The run's supernet path on normalised images ``x``, BatchNorm recalibrated on one pass over the
    supernet-train split (what the export does when its batches cover the split)."""
    from fastnas.data import Batches
    from fastnas.run.pipeline import Run, prepare_from_run

    p = prepare_from_run(str(run_dir), {}, read_only=True)
    run = Run(p)
    run.load_trained()
    arch = p.space.parse(arch_text)
    run.supernet.recalibrate(arch, Batches(p.train[0], None, p.config.batch_size, shuffle=False))
    with torch.no_grad():
        return run.supernet(x, arch)


def test_load_takes_raw_digits_and_matches_the_supernet(cli, tiny_run, tmp_path):
    out = tmp_path / "digits_net.py"
    r = cli("export", "--run", tiny_run, "--out", out)
    assert r.code == 0, r.err
    assert "load() applies x/16 then (x - mean)/std" in r.out and "digits: float32 0..16" in r.out
    assert "import digits_net" in r.out and "model = digits_net.load()" in r.out and "logits = model(x)" in r.out
    assert "BatchNorm recalibration 4/4 batches" in r.err  # 128 images in batches of 32, shown as it runs
    imports = [line.split()[1] for line in out.read_text().splitlines() if line.startswith(("import ", "from "))]
    assert "fastnas" not in imports and "numpy" not in imports

    # The raw test images, as scikit-learn gives them (0..16 floats), and fastnas's normalised ones.
    from sklearn.datasets import load_digits

    from fastnas.data import load_dataset, stratified_split

    config_seed = 0
    digits = load_digits()
    _, test_idx = stratified_split(digits.target, 0.2, config_seed)
    dataset = load_dataset("digits", seed=config_seed)
    assert torch.equal(dataset.test_y, torch.from_numpy(digits.target[test_idx]))
    raw = digits.images[test_idx].astype(np.float32)  # (N, 8, 8), 0..16
    np.save(tmp_path / "raw.npy", raw)

    arch = json.loads((tiny_run / "result.json").read_text())["arch"]
    expected = _supernet_logits(tiny_run, arch, dataset.test_x)
    labels = dataset.test_y

    # Elsewhere (load()'s default path is beside the file, not the working directory).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _run_clean(f"""
        import numpy as np
        import torch
        sys.path.insert(0, {str(tmp_path)!r})
        import digits_net
        model = digits_net.load()
        assert not model.training and not any(m.training for m in model.modules())
        raw = np.load({str(tmp_path / 'raw.npy')!r})
        x = torch.from_numpy(raw).unsqueeze(1)           # (N, 1, 8, 8) float32 0..16
        with torch.no_grad():
            logits = model(x)
            same = [model(raw),                             # numpy (N, 8, 8)
                    model(x.to(torch.uint8)),               # integer input
                    model(x.double()),
                    digits_net.load({str(out.with_suffix('.pt'))!r})(x)]
        for other in same:
            assert torch.equal(other, logits)
        torch.save(logits, 'logits.pt')
        assert 'fastnas' not in sys.modules
        print('ok')
    """, cwd=elsewhere)
    got = torch.load(elsewhere / "logits.pt")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    acc_exported = (got.argmax(1) == labels).float().mean().item()
    acc_supernet = (expected.argmax(1) == labels).float().mean().item()
    assert acc_exported == acc_supernet
    reported = re.search(r"test accuracy ([0-9.]+)% on the run's (\d+) test images", r.out)
    assert reported and int(reported.group(2)) == len(labels)
    assert float(reported.group(1)) == round(100 * acc_exported, 2)  # what export says is what raw input gets


def _data_writers():
    spec = importlib.util.spec_from_file_location("_data_writers", REPO / "tests" / "data" / "_data_writers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_load_takes_uint8_idx_images(cli, tmp_path):
    data = tmp_path / "mnist"
    arrays = _data_writers().make_idx_set(data, n_train=80, n_test=24, size=12, seed=3)
    run_dir = tmp_path / "run"
    r = cli("train-supernet", *tiny(valid_size=16, limit_train=0), "--data", "mnist", "--data-dir", data,
            "--out", run_dir)
    assert r.code == 0, r.err
    arch = "|nor_conv_3x3~0|+|nor_conv_1x1~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    out = tmp_path / "idx_net.py"
    r = cli("export", "--run", run_dir, "--arch", arch, "--out", out, "--recal-batches", "all")
    assert r.code == 0, r.err
    assert "mnist: uint8 0..255, shape (N, 1, 12, 12) or (N, 12, 12)" in r.out and "x/255 then" in r.out

    from fastnas.data import load_dataset

    dataset = load_dataset("mnist", data_dir=data)
    expected = _supernet_logits(run_dir, arch, dataset.test_x)
    raw = arrays["t10k-images-idx3-ubyte"]  # (N, 12, 12) uint8, as the IDX file holds it
    np.save(tmp_path / "raw.npy", raw)
    _run_clean(f"""
        import numpy as np
        import torch
        sys.path.insert(0, {str(tmp_path)!r})
        import idx_net
        model = idx_net.load()
        raw = torch.from_numpy(np.load({str(tmp_path / 'raw.npy')!r}))
        assert raw.dtype == torch.uint8
        with torch.no_grad():
            logits = model(raw.unsqueeze(1))                # (N, 1, 12, 12) uint8 0..255
            assert torch.equal(model(raw), logits)          # (N, 12, 12)
            assert torch.equal(model(raw.unsqueeze(-1)), logits)  # (N, 12, 12, 1)
            try:
                model(raw[:, :6])
            except ValueError as e:
                assert 'expected raw images of shape (N, 1, 12, 12)' in str(e), e
            else:
                raise AssertionError('a wrong shape was accepted')
        torch.save(logits, 'logits.pt')
    """, cwd=tmp_path)
    got = torch.load(tmp_path / "logits.pt")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_recalibration_is_bounded_and_the_flags_are_checked(cli, tiny_run, tmp_path):
    out = tmp_path / "net.py"
    r = cli("export", "--run", tiny_run, "--out", out, "--recal-batches", "2", "--recal-batch-size", "16")
    assert r.code == 0, r.err
    assert "on 2 batches of 16: 32 of the 128 supernet-train images" in r.err
    assert "BatchNorm recalibration 2/2 batches" in r.err and "on 2 batches of 16" in r.out
    for flags in (["--recal-batches", "0"], ["--recal-batches", "some"], ["--recal-batch-size", "0"],
                  ["--class-name", "load"], ["--class-name", "Preprocess"]):
        bad = tmp_path / "bad"
        bad.mkdir(exist_ok=True)
        r = cli("export", "--run", tiny_run, "--out", bad / "net.py", *flags)
        assert r.code == 2 and r.err.startswith("fastnas: error: "), (flags, r.err)
        assert flags[0] in r.err, (flags, r.err)
        assert not list(bad.iterdir())


def test_datasets_record_their_raw_units_and_preprocess_reproduces_them():
    from fastnas.data import from_tensors, load_dataset
    from fastnas.spaces.export import Preprocess

    digits = load_dataset("digits")
    assert (digits.scale, digits.layout, digits.raw_dtype) == (16.0, "nhw", "float32")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)  # channels-last, as an .npz may store it
    xt = rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
    d = from_tensors(x, np.arange(40) % 4, xt, np.arange(12) % 4)
    assert (d.scale, d.layout, d.raw_dtype) == (255.0, "nhwc", "uint8")
    pre = Preprocess(d.scale, d.mean, d.std, d.image_shape)
    assert torch.equal(pre(xt), d.test_x)  # numpy (N, H, W, C) uint8 -> the normalised (N, C, H, W)
    assert torch.equal(pre(torch.from_numpy(xt).permute(0, 3, 1, 2)), d.test_x)
    assert list(pre.state_dict()) == []  # the constants live in the exported file, not in the weights
    f = from_tensors(rng.normal(size=(30, 1, 6, 6)).astype(np.float32), np.arange(30) % 3)
    assert (f.scale, f.layout, f.raw_dtype) == (1.0, "nchw", "float32")
