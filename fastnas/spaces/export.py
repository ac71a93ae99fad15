"""What ``fastnas export`` appends to a space's network source: the input preprocessing and ``load()``.

A space's :meth:`~fastnas.spaces.base.Supernet.export_source` defines the network, which takes images
normalised as in training. :func:`with_loader` adds, space-independently:

* the constants of the run's input pipeline (``INPUT_SCALE``, ``INPUT_MEAN``, ``INPUT_STD``,
  ``IMAGE_SHAPE``) and the weights file name (``WEIGHTS``);
* :class:`Preprocess` (its source is copied; it imports only torch): raw images as the dataset's
  source gives them -> ``(x / scale - mean) / std``, exactly the float32 operations of
  :func:`fastnas.data.from_tensors`;
* ``load(path=None)``: the network with its weights (``torch.load(..., weights_only=True)``, default
  the weights file beside the source), behind ``Preprocess``, in eval mode.

The weights file stays the network's own ``state_dict``, so ``Network().load_state_dict(...)`` works
as before for inputs that are already normalised.
"""

from __future__ import annotations

import ast
import inspect
import keyword
from typing import Any, Sequence, Tuple

import torch
from torch import nn

__all__ = ["Preprocess", "with_loader", "LOADER_NAMES"]


class Preprocess(nn.Module):
    """Raw images, as the dataset's source gives them, to the network's input: ``(x / scale - mean) / std``.

    Accepts ``(N, C, H, W)``, ``(N, H, W, C)`` and, for one channel, ``(N, H, W)``; a tensor or numpy
    array of any real dtype (integers such as uint8 become float32) on any device (moved to this
    module's). The constants are buffers (they follow ``.to(device)``) that are not in the state_dict.

    Args:
        scale: the raw images are divided by this first (255 for uint8 data).
        mean, std: per-channel training statistics of the scaled images, ``C`` values each.
        image_shape: ``(C, H, W)`` of the network's input.
    """

    # String annotations: this source is copied into files that may not import typing.
    def __init__(self, scale: float, mean: "Sequence[float]", std: "Sequence[float]",
                 image_shape: "Tuple[int, int, int]") -> None:
        super().__init__()
        c, h, w = (int(v) for v in image_shape)
        if len(mean) != c or len(std) != c:
            raise ValueError(f"mean/std: expected {c} values each (one per channel), got {len(mean)} and {len(std)}")
        if not float(scale) > 0 or not all(float(s) > 0 for s in std):
            raise ValueError(f"scale={scale!r}, std={tuple(std)!r}: expected positive values")
        self.image_shape = (c, h, w)
        self.register_buffer("scale", torch.tensor(float(scale)), persistent=False)
        self.register_buffer("mean", torch.tensor([float(m) for m in mean]).view(1, c, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(s) for s in std]).view(1, c, 1, 1), persistent=False)

    def forward(self, x: "Any") -> "torch.Tensor":
        x = torch.as_tensor(x, device=self.mean.device)
        c, h, w = self.image_shape
        if x.dim() == 3 and c == 1 and tuple(x.shape[1:]) == (h, w):
            x = x.unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
        elif x.dim() == 4 and tuple(x.shape[1:]) != (c, h, w) and tuple(x.shape[1:]) == (h, w, c):
            # (N, H, W, C) -> (N, C, H, W) with NCHW strides (contiguous() keeps channels-last strides when
            # C == 1, and the convolutions then take another, not bit-identical, path).
            x = x.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, h, w):
            one = f", (N, {h}, {w})" if c == 1 else ""
            raise ValueError(f"x: expected raw images of shape (N, {c}, {h}, {w}), (N, {h}, {w}, {c}){one}; "
                             f"got {tuple(x.shape)}")
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"x: expected real-valued images, got dtype {x.dtype}")
        x = x.to(self.mean.dtype)  # uint8 / integers / float64 -> float32 (the weights' dtype)
        return (x / self.scale - self.mean) / self.std  # (N, C, H, W)


#: Top-level names the appended code defines; a network class may not take one of them.
LOADER_NAMES = frozenset({"Preprocess", "load", "INPUT_SCALE", "INPUT_MEAN", "INPUT_STD", "IMAGE_SHAPE",
                          "WEIGHTS", "os", "OrderedDict"})


def _top_level_names(tree: ast.Module) -> set:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def with_loader(source: str, class_name: str, *, weights: str, scale: float, mean: Sequence[float],
                std: Sequence[float], image_shape: Tuple[int, int, int], input_note: str = "") -> str:
    """``source`` (a space's exported network defining ``class_name``) with the preprocessing and ``load()``.

    Args:
        source: the output of ``supernet.export_source(arch, class_name=class_name)``.
        class_name: the network class ``load()`` builds (``--class-name``).
        weights: the weights file's name, looked up beside the source file by ``load()``.
        scale, mean, std: the run's input pipeline (:class:`~fastnas.data.Dataset`'s ``scale``, ``mean``,
            ``std``): a raw image ``r`` is fed as ``(r / scale - mean) / std``.
        image_shape: ``(C, H, W)``.
        input_note: one line on what raw images are (dataset, dtype, range), for the docstring.

    Raises:
        ValueError: ``class_name`` is one of :data:`LOADER_NAMES`, or the source does not define it, or
            defines a name the loader needs.
    """
    if not isinstance(class_name, str) or not class_name.isidentifier() or keyword.iskeyword(class_name) \
            or class_name in LOADER_NAMES:
        raise ValueError(f"--class-name {class_name!r}: expected a Python identifier other than "
                         f"{sorted(LOADER_NAMES)} (the exported file defines those)")
    tree = ast.parse(source)
    defined = _top_level_names(tree)
    if class_name not in defined:
        raise ValueError(f"the exported source does not define the class {class_name!r}")
    clash = sorted(defined & (LOADER_NAMES - {"os", "OrderedDict"}))
    if clash:
        raise ValueError(f"the space's exported source already defines {clash}, which load() needs")
    c, h, w = (int(v) for v in image_shape)
    mean_t = tuple(float(m) for m in mean)
    std_t = tuple(float(s) for s in std)
    Preprocess(scale, mean_t, std_t, (c, h, w))  # checks the values now, not when the file is imported
    note = f"\n\n    {input_note}" if input_note else ""
    parts = [
        "",
        "",
        "# ---- input preprocessing and load(): added by `fastnas export` ------------------------------",
        "",
        "import os",
        "from collections import OrderedDict",
        "",
        "import torch",
        "from torch import nn",
        "",
        "#: The run's input pipeline: a raw image r (as the dataset's source gives it) is fed as",
        "#: (r / INPUT_SCALE - INPUT_MEAN) / INPUT_STD per channel, with the training set's mean and std.",
        f"INPUT_SCALE = {float(scale)!r}",
        f"INPUT_MEAN = {mean_t!r}",
        f"INPUT_STD = {std_t!r}",
        f"IMAGE_SHAPE = {(c, h, w)!r}",
        f"WEIGHTS = {weights!r}",
        "",
        "",
        inspect.getsource(Preprocess).rstrip("\n"),
        "",
        "",
        'def load(path: "str | None" = None) -> "nn.Module":',
        '    """The exported network with its weights, in eval mode, taking raw images: ``load()(x)`` are the',
        f"    logits ``(N, num_classes)`` of raw images ``x``.{note}",
        "",
        "    The module is ``nn.Sequential(preprocess=Preprocess(...), network=" + class_name + "())``; its",
        "    ``network`` takes images already normalised as in training.",
        "",
        "    Args:",
        f"        path: the weights file; default: {weights} (``WEIGHTS``) in the directory of this file.",
        '    """',
        "    if path is None:",
        "        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), WEIGHTS)",
        f"    network = {class_name}()",
        '    network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))',
        "    preprocess = Preprocess(INPUT_SCALE, INPUT_MEAN, INPUT_STD, IMAGE_SHAPE)",
        "    model = nn.Sequential(OrderedDict(preprocess=preprocess, network=network))",
        "    return model.eval()",
    ]
    if "__all__" in defined:
        parts += ["", "", '__all__ = [*__all__, "Preprocess", "load"]']
    return source.rstrip("\n") + "\n" + "\n".join(parts) + "\n"
