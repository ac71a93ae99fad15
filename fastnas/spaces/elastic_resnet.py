"""An elastic ResNet family (once-for-all style): nested members of one supernet, for REG-NAS.

A member is a ResNet of ``len(stage_channels)`` stages. Stage ``s`` has a fixed output width
``stage_channels[s]`` and runs its first ``d_s`` blocks (``d_s`` one of ``depths``); each block is a
:class:`~fastnas.spaces.elastic_resnet_ops.BasicBlock` with its own inner width ``w`` (one of the stage's
width choices) and kernel ``k`` (one of ``kernels``, used by both of its convs)::

    x -> conv k x k (c_in -> w, stride) BN ReLU -> conv k x k (w -> c_out) BN -> + shortcut(x) -> ReLU

The shortcut is an identity, or a 1x1 conv + BN at the first block of a stage that changes the stride or
the channels. Stage 0 keeps the resolution; every later stage halves it. Stem: 3x3 conv + BN + ReLU of
``stage_channels[0]`` channels; head: global average pooling and a linear classifier.

An architecture is a tuple of stages, a stage a tuple of its used blocks' ``(width, kernel)`` pairs (so
the depth is the length: unused blocks have no genes and every member has one representation)::

    ((( 8, 3), (16, 5)),            text form "8k3,16k5|32k3|48k5,64k3,32k3"
     ((32, 3),),
     ((48, 5), (64, 3), (32, 3)))

The supernet owns only the largest member's weights. A member uses slices of them (OFA's elastic
layers): block ``i`` of stage ``s`` is the supernet block ``stages.{s}.{i}``; its first conv is
``conv1.0.weight[:w, :, c:c+k, c:c+k]`` (the channel prefix, and the ``k x k`` centre of the largest
``K x K`` kernel, ``c = (K - k) // 2``), its BatchNorm the first ``w`` entries (weights and running
statistics), its second conv ``conv2.0.weight[:, :w, c:c+k, c:c+k]``; the shortcut, the second BatchNorm,
the stem and the classifier are whole. OFA's learned kernel-transformation matrices are not used: a small
kernel is the plain centre crop. Channels are not re-sorted by importance (the prefix is the member).

Family (REG-NAS): :meth:`ElasticResNet.largest`, :meth:`ElasticResNet.smallest`,
:meth:`ElasticResNet.contains` (``small`` no deeper in any stage and, block by block, no wider and no
larger kernel); then every weight and BatchNorm statistic of ``small`` is a slice of ``big``'s
(:meth:`ElasticResNet.embedding`, :meth:`ElasticResNet.shrink`).

Example::

    space = create_space("elastic_resnet")            # C=16: stages (16, 32, 64), depths 1..3, kernels 3, 5
    big, small = space.largest(), space.smallest()
    space.contains(big, small)                         # True
    net = space.supernet()
    logits = net(x, space.parse("8k3,16k5|32k3|48k5,64k3,32k3"))   # (B, 3, 32, 32) -> (B, 10)
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import random
import re
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from fastnas._hints import did_you_mean
from fastnas.ops import ParamSlice
from fastnas.spaces.base import (
    CellGraph, Presets, Space,
    Supernet, check_class_name, register_space, size_keyword,
)
from fastnas.spaces.elastic_resnet_ops import BasicBlock, ConvBN, ElasticBlock, ResNet

__all__ = ["ElasticResNet", "ElasticResNetSupernet", "TRAIN_RECIPE", "SAMPLING", "ENUMERATE_LIMIT"]

Block = Tuple[int, int]  # (width, kernel)
Stage = Tuple[Block, ...]
Arch = Tuple[Stage, ...]
Entry = Union[str, ParamSlice]
Box = Tuple[Tuple[int, int], ...]

#: ``ElasticResNet(sampling=...)``: ``"uniform"`` (every architecture equally likely, the protocol's
#: ``sample``) or ``"ofa"`` (once-for-all: each stage's depth uniform over ``depths``, then each block's
#: width and kernel uniform).
SAMPLING = ("uniform", "ofa")

#: :meth:`ElasticResNet.enumerate` refuses larger spaces (``size()`` still counts them).
ENUMERATE_LIMIT = 100_000

#: The supernet recipe: the usual CIFAR ResNet SGD (momentum 0.9, Nesterov, weight decay 5e-4, cosine), at
#: lr 0.05 for the run's batch of 64 (0.1 at 128 scaled linearly), gradients clipped at norm 5 as
#: fastnas's fallback recipe does. Not a published OFA recipe (OFA trains on ImageNet only).
TRAIN_RECIPE: Dict[str, Any] = {"lr": 0.05, "lr_min": 0.001, "momentum": 0.9, "nesterov": True,
                                "weight_decay": 5e-4, "grad_clip": 5.0}

_BLOCK = re.compile(r"^(\d+)k(\d+)$")
_DEFAULT_RATIOS = (0.5, 0.75, 1.0)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer")
    return value


def _int_tuple(name: str, values: Any, *, odd: bool = False) -> Tuple[int, ...]:
    """Distinct positive ints, sorted; ``ValueError`` naming ``name`` otherwise."""
    what = "positive odd integers" if odd else "positive integers"
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name}={values!r}: expected a non-empty sequence of {what}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or (odd and v % 2 == 0):
            raise ValueError(f"{name}={values!r}: {v!r} is not one of the {what} expected")
    if len(set(values)) != len(values):
        raise ValueError(f"{name}={values!r}: expected distinct values")
    return tuple(sorted(values))


def _box(full: Sequence[int], shape: Sequence[int]) -> Box:
    """The box of a member tensor of ``shape`` inside the largest tensor of shape ``full``: the prefix of
    every dim, except the kernel dims of a conv weight (dims 2, 3 of a 4-D tensor), which are centred."""
    box = []
    for d, (n, m) in enumerate(zip(full, shape)):
        if m > n:
            raise ValueError(f"shape {tuple(shape)} does not fit in {tuple(full)}")
        lo = (n - m) // 2 if len(full) == 4 and d >= 2 else 0
        box.append((lo, lo + m))
    while box and box[-1] == (0, full[len(box) - 1]):  # trailing whole dims: left implicit
        box.pop()
    return tuple(box)


def _entry(name: str, full: Sequence[int], shape: Sequence[int]) -> Entry:
    """The name where the member uses the whole tensor, else the slice."""
    box = _box(full, shape)
    return ParamSlice(name, box) if box else name


def _view(t: torch.Tensor, box: Box) -> torch.Tensor:
    return t[tuple(slice(lo, hi) for lo, hi in box)]


@register_space("elastic_resnet")
class ElasticResNet(Space):
    """An elastic ResNet family: per-stage depth, per-block inner width and kernel; see the module docstring.

    Args:
        C: channels of the first stage; stages have ``C * 2**s`` channels (default 16).
        max_depth: blocks per stage of the largest member; the depth choices are ``1 .. max_depth``
            unless ``depths`` is given (default 3).
        num_classes: classifier outputs (default 10).
        in_channels: input image channels (default 3).
        resolution: input height = width, used by :meth:`flops` (default 32).
        stages: number of stages when ``stage_channels`` is not given (default 3).
        stage_channels: the output channels of every stage, e.g. ``(16, 32, 64)`` (instead of ``C``).
        depths: the depth choices of every stage, e.g. ``(2, 3)`` (its maximum is ``max_depth``).
        width_ratios: a block's inner-width choices as fractions of its stage's channels, each rounded to
            the nearest integer (at least 1; equal roundings count once); default ``(0.5, 0.75, 1.0)``.
        widths: instead of ``width_ratios``, the inner-width choices in channels, one sequence per stage.
        kernels: kernel choices, odd (a smaller kernel is the centre of the largest); default ``(3, 5)``.
        sampling: what :meth:`sample` draws; one of :data:`SAMPLING` (default ``"uniform"``).
        channels, cells: the generic names of ``C`` and ``max_depth`` (see
            :func:`~fastnas.spaces.create_space`).

    ``None`` keeps a default.
    """

    name = "elastic_resnet"

    def __init__(self, C: Optional[int] = None, max_depth: Optional[int] = None, num_classes: Optional[int] = None,
                 in_channels: Optional[int] = None, resolution: Optional[int] = None, *,
                 stages: Optional[int] = None, stage_channels: Optional[Sequence[int]] = None,
                 depths: Optional[Sequence[int]] = None, width_ratios: Optional[Sequence[float]] = None,
                 widths: Optional[Sequence[Sequence[int]]] = None, kernels: Optional[Sequence[int]] = None,
                 sampling: Optional[str] = None, channels: Optional[int] = None, cells: Optional[int] = None):
        C = size_keyword("C", C, "channels", channels, None)
        max_depth = size_keyword("max_depth", max_depth, "cells", cells, None)
        if stage_channels is not None:
            if C is not None:
                raise ValueError(f"C={C!r} (channels) and stage_channels={stage_channels!r}: give one of them")
            if isinstance(stage_channels, (str, bytes)) or not isinstance(stage_channels, Sequence) \
                    or not stage_channels:
                raise ValueError(f"stage_channels={stage_channels!r}: expected a non-empty sequence of positive "
                                 "integers")
            for c in stage_channels:
                if isinstance(c, bool) or not isinstance(c, int) or c < 1:
                    raise ValueError(f"stage_channels={stage_channels!r}: {c!r} is not a positive integer")
            if stages is not None and stages != len(stage_channels):
                raise ValueError(f"stages={stages!r} and stage_channels={stage_channels!r} ({len(stage_channels)} "
                                 "stages) disagree; give one of them")
            self.stage_channels: Tuple[int, ...] = tuple(stage_channels)
        else:
            c0 = _positive_int("C", 16 if C is None else C)
            n = _positive_int("stages", 3 if stages is None else stages)
            self.stage_channels = tuple(c0 * 2 ** s for s in range(n))
        S = len(self.stage_channels)

        if depths is not None:
            self.depths = _int_tuple("depths", depths)
            if max_depth is not None and max(self.depths) != max_depth:
                raise ValueError(f"max_depth={max_depth!r} (cells) and depths={depths!r} disagree: the largest "
                                 "depth choice is the largest member's depth")
        else:
            self.depths = tuple(range(1, _positive_int("max_depth", 3 if max_depth is None else max_depth) + 1))
        self.max_depth = max(self.depths)

        if widths is not None:
            if width_ratios is not None:
                raise ValueError(f"width_ratios={width_ratios!r} and widths={widths!r}: give one of them")
            if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence) or len(widths) != S:
                raise ValueError(f"widths={widths!r}: expected one sequence of channel counts per stage ({S})")
            self.widths: Tuple[Tuple[int, ...], ...] = tuple(_int_tuple(f"widths[{s}]", w)
                                                             for s, w in enumerate(widths))
            self.width_ratios: Optional[Tuple[float, ...]] = None
        else:
            ratios = _DEFAULT_RATIOS if width_ratios is None else width_ratios
            if isinstance(ratios, (str, bytes)) or not isinstance(ratios, Sequence) or not ratios or not all(
                    isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and r > 0
                    for r in ratios):
                raise ValueError(f"width_ratios={width_ratios!r}: expected a non-empty sequence of positive numbers")
            self.width_ratios = tuple(sorted(set(float(r) for r in ratios)))
            self.widths = tuple(tuple(sorted({max(1, int(math.floor(r * c + 0.5))) for r in self.width_ratios}))
                                for c in self.stage_channels)
        self.kernels = _int_tuple("kernels", (3, 5) if kernels is None else kernels, odd=True)
        self.sampling = "uniform" if sampling is None else sampling
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling={sampling!r}: expected one of {list(SAMPLING)}"
                             f"{did_you_mean(str(sampling), SAMPLING, n=1)}")
        self.num_classes = _positive_int("num_classes", 10 if num_classes is None else num_classes)
        self.in_channels = _positive_int("in_channels", 3 if in_channels is None else in_channels)
        self.resolution = _positive_int("resolution", 32 if resolution is None else resolution)
        # the block genes of each stage, in enumeration order (width-major), and the stage counts
        self._genes: Tuple[Tuple[Block, ...], ...] = tuple(tuple(itertools.product(w, self.kernels))
                                                           for w in self.widths)
        self._stage_counts = tuple(sum(len(g) ** d for d in self.depths) for g in self._genes)

    def config(self) -> Dict[str, Any]:
        cfg: Dict[str, Any] = {"stage_channels": self.stage_channels, "depths": self.depths}
        if self.width_ratios is None:
            cfg["widths"] = self.widths
        else:
            cfg["width_ratios"] = self.width_ratios
        cfg.update(kernels=self.kernels, num_classes=self.num_classes, in_channels=self.in_channels,
                   resolution=self.resolution, sampling=self.sampling)
        return cfg

    def __repr__(self) -> str:
        return "ElasticResNet(" + ", ".join(f"{k}={v!r}" for k, v in self.config().items()) + ")"

    # ---- architectures

    def _example(self) -> str:
        return self.format(self.smallest())

    def validate(self, arch: Any) -> Arch:
        """Returns ``arch`` as nested tuples if it is a member of this space (lists accepted), else
        ``ValueError``."""
        return self._checked(arch, f"arch={arch!r}")

    def _checked(self, arch: Any, what: str) -> Arch:
        """``arch`` as nested tuples, or a ``ValueError`` starting with ``what`` (the value as the caller
        named it)."""
        S = len(self.stage_channels)
        if isinstance(arch, str):
            raise ValueError(f"{what} is a string; expected {S} stages of (width, kernel) blocks "
                             f"(use parse() for the text form, e.g. {self._example()!r})")
        if not isinstance(arch, (tuple, list)) or len(arch) != S:
            raise ValueError(f"{what}: expected a tuple of {S} stages, each a tuple of "
                             f"{' or '.join(map(str, self.depths))} (width, kernel) blocks, as {self.smallest()!r}")
        out = []
        for s, stage in enumerate(arch):
            if not isinstance(stage, (tuple, list)) or len(stage) not in self.depths:
                raise ValueError(f"{what}: stage {s + 1} is {stage!r}; expected a tuple of "
                                 f"{' or '.join(map(str, self.depths))} (width, kernel) blocks")
            blocks = []
            for i, block in enumerate(stage):
                if not isinstance(block, (tuple, list)) or len(block) != 2 or any(
                        isinstance(v, bool) or not isinstance(v, int) for v in block):
                    raise ValueError(f"{what}: stage {s + 1} block {i + 1} is {block!r}; expected a "
                                     "(width, kernel) pair of integers")
                w, k = block
                if w not in self.widths[s]:
                    raise ValueError(f"{what}: stage {s + 1} block {i + 1}: width {w} is not one of "
                                     f"{list(self.widths[s])}")
                if k not in self.kernels:
                    raise ValueError(f"{what}: stage {s + 1} block {i + 1}: kernel {k} is not one of "
                                     f"{list(self.kernels)}")
                blocks.append((w, k))
            out.append(tuple(blocks))
        return tuple(out)

    def format(self, arch: Any) -> str:
        """Stages joined by ``|``, a stage's blocks ``{width}k{kernel}`` joined by ``,``: ``"8k3,16k5|32k3"``."""
        return "|".join(",".join(f"{w}k{k}" for w, k in stage) for stage in self.validate(arch))

    def parse(self, text: str) -> Arch:
        """Architecture from the text form of :meth:`format` (spaces around the parts are ignored)."""
        S = len(self.stage_channels)
        example = self._example()
        if not isinstance(text, str):
            raise ValueError(f"text={text!r}: expected a string like {example!r}")
        parts = text.strip().split("|")
        if len(parts) != S:
            raise ValueError(f"text={text!r}: {len(parts)} stage(s) separated by '|'; expected {S}, like {example!r}")
        arch = []
        for s, part in enumerate(parts):
            blocks = []
            for item in part.split(","):
                m = _BLOCK.match(item.strip())
                if m is None:
                    raise ValueError(f"text={text!r}: stage {s + 1} block {item.strip()!r} is not "
                                     f"'<width>k<kernel>' (blocks joined by ',', stages by '|', like {example!r})")
                blocks.append((int(m.group(1)), int(m.group(2))))
            arch.append(tuple(blocks))
        return self._checked(arch, f"text={text!r}")

    def _decode(self, s: int, r: int) -> Stage:
        """Stage ``s``'s ``r``-th option in enumeration order: depths ascending, then the blocks'
        genes (``widths x kernels``) as digits, the first block most significant."""
        genes = self._genes[s]
        n = len(genes)
        for d in self.depths:
            if r < n ** d:
                digits = []
                for _ in range(d):
                    r, g = divmod(r, n)
                    digits.append(genes[g])
                return tuple(reversed(digits))
            r -= n ** d
        raise AssertionError("r out of range")  # pragma: no cover - callers draw r < count

    def size(self) -> int:
        """The number of architectures: the product over stages of ``sum_d (|widths| * |kernels|) ** d``."""
        return math.prod(self._stage_counts)

    def enumerate(self) -> Iterator[Arch]:
        """Every architecture (stage 1 varying slowest), where :meth:`size` is at most
        :data:`ENUMERATE_LIMIT`; else ``NotImplementedError``."""
        n = self.size()
        if n > ENUMERATE_LIMIT:
            raise NotImplementedError(f"space {self.name!r} has {n:,} architectures, more than {ENUMERATE_LIMIT:,} "
                                      "to enumerate (lower cells/depths, widths or kernels)")
        return itertools.product(*([self._decode(s, r) for r in range(c)] for s, c in enumerate(self._stage_counts)))

    def sample(self, rng: random.Random) -> Arch:
        """``sampling="uniform"``: every architecture equally likely (stages independent, a stage's option
        uniform over its count, so deeper stages, having more options, are drawn more often).
        ``"ofa"``: per stage a depth uniform over ``depths``, then each block's width and kernel uniform."""
        if self.sampling == "uniform":
            return tuple(self._decode(s, rng.randrange(c)) for s, c in enumerate(self._stage_counts))
        return tuple(tuple(self._random_block(s, rng) for _ in range(rng.choice(self.depths)))
                     for s in range(len(self.stage_channels)))

    def _random_block(self, s: int, rng: random.Random) -> Block:
        return rng.choice(self.widths[s]), rng.choice(self.kernels)

    def mutate(self, arch: Any, prob: float, rng: random.Random) -> Arch:
        """Each gene re-drawn with probability ``prob`` (possibly to the same value): per stage the depth
        (uniform over ``depths``), then per kept block its width and its kernel; blocks a deeper stage adds
        are drawn at random."""
        a = self.validate(arch)
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob={prob!r}: expected a probability in [0, 1]")
        out = []
        for s, stage in enumerate(a):
            d = rng.choice(self.depths) if rng.random() < prob else len(stage)
            blocks = []
            for i in range(d):
                if i < len(stage):
                    w, k = stage[i]
                    if rng.random() < prob:
                        w = rng.choice(self.widths[s])
                    if rng.random() < prob:
                        k = rng.choice(self.kernels)
                    blocks.append((w, k))
                else:
                    blocks.append(self._random_block(s, rng))
            out.append(tuple(blocks))
        return tuple(out)

    def crossover(self, a: Any, b: Any, rng: random.Random) -> Arch:
        """Each gene from ``a`` or ``b`` with probability 1/2: per stage the depth, then per block its width
        and its kernel (from the parent that has the block, where only one has it)."""
        a, b = self.validate(a), self.validate(b)
        out = []
        for sa, sb in zip(a, b):
            d = len(sa) if rng.random() < 0.5 else len(sb)
            blocks = []
            for i in range(d):
                if i < len(sa) and i < len(sb):
                    w = sa[i][0] if rng.random() < 0.5 else sb[i][0]
                    k = sa[i][1] if rng.random() < 0.5 else sb[i][1]
                    blocks.append((w, k))
                else:
                    blocks.append(sa[i] if i < len(sa) else sb[i])
            out.append(tuple(blocks))
        return tuple(out)

    # ---- family

    def largest(self) -> Arch:
        """Every stage at the largest depth, every block at its largest width and kernel: the member that
        owns all the supernet's weights."""
        K = max(self.kernels)
        return tuple(((max(w), K),) * self.max_depth for w in self.widths)

    def smallest(self) -> Arch:
        """Every stage at the smallest depth, every block at its smallest width and kernel."""
        k = min(self.kernels)
        return tuple(((min(w), k),) * min(self.depths) for w in self.widths)

    def contains(self, big: Any, small: Any) -> bool:
        """Whether ``small`` is nested in ``big``: in every stage ``small`` is no deeper and each of its
        blocks is no wider and has no larger kernel than ``big``'s block at the same position. Then every
        weight of ``small`` is a slice of ``big``'s (:meth:`embedding`). ``ValueError`` naming the argument
        that is not an architecture of this space."""
        big = self._checked(big, f"big={big!r} is not an architecture of this {self.name} space {self!r}")
        small = self._checked(small, f"small={small!r} is not an architecture of this {self.name} space {self!r}")
        return all(len(ss) <= len(sb) and all(ws <= wb and ks <= kb for (wb, kb), (ws, ks) in zip(sb, ss))
                   for sb, ss in zip(big, small))

    def embedding(self, big: Any, small: Any) -> Dict[str, Entry]:
        """Where ``small``'s network sits in ``big``'s: for every ``state_dict`` key of ``build(small)``, the
        same key of ``build(big)`` (a name where the tensors have the same shape) or its
        :class:`~fastnas.ops.ParamSlice` (channel prefixes, kernel centres). ``ValueError`` unless
        :meth:`contains` ``(big, small)``."""
        if not self.contains(big, small):
            raise ValueError(f"small={self.format(small)!r} is not contained in big={self.format(big)!r}: it is "
                             "deeper, wider or of a larger kernel somewhere (see contains())")
        full = _state_shapes(self, self.validate(big))
        return {k: _entry(k, full[k], shape) for k, shape in _state_shapes(self, self.validate(small)).items()}

    def shrink(self, net: nn.Module, big: Any, small: Any) -> nn.Module:
        """The network of ``small`` with the weights and BatchNorm statistics of ``net`` (a network of
        ``big``: ``build(big)``, ``extract(big)`` or an exported one) sliced out (see :meth:`embedding`);
        same device, dtype and train/eval mode as ``net``."""
        where = self.embedding(big, small)
        state = net.state_dict()
        ref = next(iter(state.values()))
        out = self.build(small).to(device=ref.device, dtype=ref.dtype)
        out.load_state_dict({k: _view(state[e.name], e.index) if isinstance(e, ParamSlice) else state[e]
                             for k, e in where.items()})
        return out.train(net.training)

    # ---- presets and plots

    def presets(self, data: Optional[str] = None) -> Presets:
        """GeNAS's NAS-Bench-201 sigmas (2e-3, 1e-2, 2e-2) and :data:`TRAIN_RECIPE`, for every dataset."""
        return Presets(sigmas=(2e-3, 1e-2, 2e-2), train=TRAIN_RECIPE)

    def cell_graph(self, arch: Any) -> List[CellGraph]:
        """One chain per stage: ``in -> 1 -> ... -> out``, an edge per block labelled ``{width}k{kernel}``."""
        a = self.validate(arch)
        graphs = []
        for s, stage in enumerate(a):
            nodes = ["in"] + [str(i) for i in range(1, len(stage))] + ["out"]
            stride = 1 if s == 0 else 2
            graphs.append(CellGraph(f"stage {s + 1}: {self.stage_channels[s]} channels, stride {stride}, "
                                    f"depth {len(stage)}", nodes,
                                    [(nodes[i], nodes[i + 1], f"{w}k{k}") for i, (w, k) in enumerate(stage)]))
        return graphs

    # ---- cost

    def _cost(self, arch: Arch) -> Tuple[int, int]:
        """(parameters, multiply-adds per image) of ``build(arch)``."""
        c, h = self.stage_channels[0], self.resolution
        params = self.in_channels * c * 9 + 2 * c
        macs = self.in_channels * c * 9 * h * h
        for s, stage in enumerate(arch):
            out = self.stage_channels[s]
            for i, (w, k) in enumerate(stage):
                stride = 2 if s > 0 and i == 0 else 1
                h = -(-h // stride)  # padding k // 2 (odd k): ceil(h / stride)
                params += k * k * c * w + 2 * w + k * k * w * out + 2 * out
                macs += (k * k * c * w + k * k * w * out) * h * h
                if stride != 1 or c != out:
                    params += c * out + 2 * out
                    macs += c * out * h * h
                c = out
        params += c * self.num_classes + self.num_classes
        macs += c * self.num_classes + self.num_classes
        return params, macs

    def params(self, arch: Any) -> int:
        """Parameters of ``build(arch)`` (convs, BatchNorm weights and biases, the classifier)."""
        return self._cost(self.validate(arch))[0]

    def flops(self, arch: Any) -> float:
        """Multiply-adds (millions, per image at ``resolution``) of the convs and the classifier of
        ``build(arch)``, the classifier's bias counted as one each (NAS-Bench-201's convention); BatchNorm,
        ReLU, the residual additions and pooling are not counted."""
        return self._cost(self.validate(arch))[1] / 1e6

    # ---- networks

    def build(self, arch: Any, **kwargs: Any) -> nn.Module:
        """The standalone :class:`~fastnas.spaces.elastic_resnet_ops.ResNet` of ``arch``, fresh weights."""
        if kwargs:
            raise ValueError(f"build: unexpected arguments {sorted(kwargs)}; the network's sizes are the space's")
        return ResNet(self.validate(arch), self.stage_channels, self.num_classes, self.in_channels)

    def supernet(self, **kwargs: Any) -> "ElasticResNetSupernet":
        """The supernet: the largest member's weights, every member a slice of them."""
        if kwargs:
            raise ValueError(f"supernet: unexpected arguments {sorted(kwargs)}")
        return ElasticResNetSupernet(self)


@functools.lru_cache(maxsize=4096)
def _member_shapes(arch: Arch, stage_channels: Tuple[int, ...], num_classes: int,
                   in_channels: int) -> Dict[str, Tuple[int, ...]]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation work
        net = ResNet(arch, stage_channels, num_classes, in_channels)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _state_shapes(space: ElasticResNet, arch: Arch) -> Dict[str, Tuple[int, ...]]:
    """``state_dict`` key -> shape of ``build(arch)``, without building it (cached per member)."""
    return _member_shapes(arch, space.stage_channels, space.num_classes, space.in_channels)


_EXPORTED = (ConvBN, BasicBlock, ResNet)


class ElasticResNetSupernet(Supernet):
    """The largest member's weights, under the names of the member networks: ``stem.*``,
    ``stages.{s}.{i}.conv1.0.weight`` (``(max width, c_in, K, K)``), ``stages.{s}.{i}.conv1.1.*``
    (BatchNorm of the max width), ``stages.{s}.{i}.conv2.*``, ``stages.{s}.{i}.shortcut.*``,
    ``classifier.*``. ``forward(x, arch)`` runs the member's slices (see the module docstring); a member's
    network (:meth:`extract`) has the same keys, with its shapes."""

    def __init__(self, space: ElasticResNet) -> None:
        super().__init__()
        self.space = space
        K = max(space.kernels)
        c = space.stage_channels[0]
        self.stem = ConvBN(space.in_channels, c, 3)
        stages = []
        for s, out in enumerate(space.stage_channels):
            blocks = []
            for i in range(space.max_depth):
                blocks.append(ElasticBlock(c, max(space.widths[s]), out, K, 2 if s > 0 and i == 0 else 1))
                c = out
            stages.append(nn.ModuleList(blocks))
        self.stages = nn.ModuleList(stages)
        self.classifier = nn.Linear(c, space.num_classes)
        self._full = {k: tuple(v.shape) for k, v in self.state_dict().items()}  # shapes never change

    def forward(self, x: torch.Tensor, arch: Any) -> torch.Tensor:  # (B, in_channels, H, W) -> (B, classes)
        a = self.space.validate(arch)
        x = torch.relu(self.stem(x))
        for blocks, stage in zip(self.stages, a):
            for block, (w, k) in zip(blocks, stage):
                x = block(x, w, k)
        return self.classifier(x.mean(dim=(2, 3)))

    def _map(self, arch: Arch) -> Dict[str, Entry]:
        """Member ``state_dict`` key -> the supernet's tensor of that key (a name) or its slice."""
        return {k: _entry(k, self._full[k], shape) for k, shape in _state_shapes(self.space, arch).items()}

    def path_parameters(self, arch: Any) -> List[Entry]:
        """The path's parameters in ``named_parameters()`` order: names of the tensors the member uses whole
        (stem, shortcuts, second BatchNorms, classifier, and blocks at the largest width and kernel), slices
        of the others; nothing of the blocks beyond a stage's depth."""
        mapping = self._map(self.space.validate(arch))
        return [mapping[n] for n, _ in self.named_parameters() if n in mapping]

    def extract(self, arch: Any, *, return_map: bool = False):
        """The member's :class:`~fastnas.spaces.elastic_resnet_ops.ResNet` with its slices of the weights and
        BatchNorm statistics copied in; same device, dtype and train/eval mode. With ``return_map=True``:
        ``(net, name_map)``, every parameter of ``net`` -> the supernet's name or slice it came from."""
        a = self.space.validate(arch)
        ref = self.classifier.weight
        net = self.space.build(a).to(device=ref.device, dtype=ref.dtype)
        mapping = self._map(a)
        source = self.state_dict()
        net.load_state_dict({k: _view(source[e.name], e.index) if isinstance(e, ParamSlice) else source[e]
                             for k, e in mapping.items()})
        net.train(self.training)
        if not return_map:
            return net
        return net, {n: mapping[n] for n, _ in net.named_parameters()}

    def searched_prefixes(self) -> Tuple[str, ...]:
        """``stages.``: every block is searched (the stem and the classifier are not)."""
        return ("stages.",)

    def export_source(self, arch: Any, class_name: str = "Network") -> str:
        """Plain PyTorch source (imports only torch) defining ``class_name`` with ``arch`` baked in; its
        ``state_dict`` keys and shapes are those of ``extract(arch)``, so ``load_state_dict`` of that works."""
        a = self.space.validate(arch)
        taken = {obj.__name__ for obj in _EXPORTED} | {"ARCH", "STAGE_CHANNELS", "torch", "nn"}
        check_class_name(class_name, taken)
        s = self.space
        parts = [
            f'"""Elastic ResNet member {s.format(a)}\n\n'
            f'Generated by fastnas from {s!r}. Needs only torch.\n"""\n',
            "from __future__ import annotations\n",
            "import torch",
            "from torch import nn\n",
            f"ARCH = {a!r}",
            f"STAGE_CHANNELS = {s.stage_channels!r}\n",
        ]
        parts += ["\n" + inspect.getsource(obj) for obj in _EXPORTED]
        parts.append(
            f"\nclass {class_name}(ResNet):\n"
            f'    """Elastic ResNet member {s.format(a)}"""\n\n'
            f"    def __init__(self):\n"
            f"        super().__init__(ARCH, STAGE_CHANNELS, num_classes={s.num_classes}, "
            f"in_channels={s.in_channels})\n"
        )
        return "\n".join(parts)
