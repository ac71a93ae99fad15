"""NAR's backbone space: refine the convolutions of any ``nn.Module`` by tracing it with ``torch.fx``.

The model is traced (:func:`torch.fx.symbolic_trace`, with the module path of a failing submodule in the
error) and its shapes propagated on ``example_input``. Then:

**Residual blocks.** Every ``add`` of two graph values (``operator.add``/``iadd``, ``torch.add``,
``Tensor.add``/``add_``) whose inputs share an ancestor (the fork: the block input) is a residual block. Its
*body* is every node that is an ancestor of exactly one of the two inputs (the symmetric difference of
the two ancestor sets, each input included): the residual branch and the shortcut branch, not what comes
before the fork. An add with a parameter or constant (no common ancestor) is no block.

**Sites.** A refinable convolution is a module ``nn.Conv2d`` with a 3x3 kernel called (``call_module``) in
the body of some residual block; it belongs to the first such block in graph order (the innermost, for
nested blocks). A module called more than once is one site (every call takes the same choice). The 1x1
projection shortcuts, the stem and the classifier are not sites. torchvision's BasicBlock / Bottleneck and
:mod:`fastnas.spaces.resnets` give: every 3x3 conv of every block.

**Granularity.** ``"conv"``: one gene per site (NAR's ResNet-18 "-16"). ``"block"``: one gene per
residual block, applied to every site of that block (NAR's "-8"); a block's allowed ops are those
allowed at all of its sites.

**Candidates.** :data:`~fastnas.spaces.backbone_ops.CANDIDATE_OPS` (see
:mod:`fastnas.spaces.backbone_ops` for how each keeps the original conv's channels and stride). An op
is allowed at a site if its output shape equals the original conv's there and, with
``max_params="original"`` (default, as in the paper), it has no more parameters than the original conv
(a number ``r``: at most ``r`` times as many; ``None``: any).

**Architectures.** A tuple of one int per gene: 0 keeps the original conv, ``i >= 1`` is
``candidates[i - 1]`` (the same number means the same op everywhere, as in the paper's lists). Text form
``[1,0,0,2]``; :meth:`BackboneSpace.describe` gives the op names.

**Supernet.** The traced graph with every site's ``call_module`` given a second argument, the arch's gene
(``getitem`` of a new ``arch`` placeholder), and the site module replaced by a :class:`Choice` holding the
original conv (``ops.original``, the model's weights) and one fresh module per allowed op (``ops.<name>``).
Everything else -- BatchNorms after the sites, shortcuts, the stem, the head -- is the model's, shared by all
paths. ``extract(arch)`` is a :class:`torch.fx.GraphModule` on the base model's own graph (every node,
skip and ``add`` as traced) with each site module swapped for a copy of its chosen op.

Example::

    space = BackboneSpace(resnets.resnet20(), torch.randn(1, 3, 32, 32), granularity="block")
    space.format(space.sample(random.Random(0)))     # e.g. "[3,0,5,0,0,3,0,0,6]"
    create_space("backbone", backbone="resnet18", granularity="conv")   # the registered built-ins
"""

from __future__ import annotations

import copy
import functools
import inspect
import itertools
import math
import operator
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from fastnas._hints import did_you_mean
from fastnas.spaces import backbone_ops, resnets
from fastnas.spaces.backbone_ops import CANDIDATE_OPS, make_op
from fastnas.spaces.base import Space, Supernet, check_class_name, register_space, size_keyword

__all__ = ["BackboneSpace", "BackboneSupernet", "Choice", "GRANULARITIES", "CANDIDATE_OPS", "ENUMERATE_LIMIT",
           "trace", "residual_blocks"]

GRANULARITIES = ("conv", "block")
ORIGINAL = "original"
ENUMERATE_LIMIT = 100_000

_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_")


# ---- tracing and graph analysis ---------------------------------------------------------------------------

class _PathTracer(fx.Tracer):
    """A tracer that remembers the module path being traced (to name the module that fails)."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: List[Tuple[str, str]] = []

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        try:
            name = self.path_of_module(m)
        except NameError:
            name = "?"
        self.stack.append((name, type(m).__name__))
        out = super().call_module(m, forward, args, kwargs)
        self.stack.pop()
        return out


def trace(model: nn.Module) -> fx.GraphModule:
    """``model`` as a GraphModule (sharing its modules); ``ValueError`` naming the submodule and fx's reason
    when it cannot be traced."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model={type(model).__name__}: expected a torch.nn.Module")
    tracer = _PathTracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, RuntimeError, ... : all mean "cannot trace"
        where = (f"its submodule {tracer.stack[-1][0]!r} ({tracer.stack[-1][1]})" if tracer.stack
                 else "its own forward")
        raise ValueError(f"model {type(model).__name__} cannot be traced by torch.fx (in {where}): "
                         f"{type(e).__name__}: {e}") from e
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _ADD_FUNCTIONS:
        pass
    elif node.op == "call_method" and node.target in _ADD_METHODS:
        pass
    else:
        return False
    return len(node.args) >= 2 and all(isinstance(a, fx.Node) for a in node.args[:2])


def _ancestors(node: fx.Node) -> set:
    seen = {node}
    todo = [node]
    while todo:
        for parent in todo.pop().all_input_nodes:
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def residual_blocks(graph: fx.Graph) -> List[Tuple[fx.Node, set]]:
    """``(add node, body nodes)`` of every residual block of ``graph``, in graph order (module docstring)."""
    blocks = []
    for node in graph.nodes:
        if _is_add(node):
            a, b = _ancestors(node.args[0]), _ancestors(node.args[1])
            if a & b:
                blocks.append((node, a ^ b))
    return blocks


@dataclass
class _Site:
    target: str  # the conv module's qualified name
    conv: nn.Conv2d
    block: int  # index of its residual block
    in_shape: Tuple[int, ...]  # per image (C, H, W)
    out_shape: Tuple[int, ...]
    params: int
    allowed: Tuple[str, ...] = ()
    why_not: Tuple[str, ...] = ()


def _numel(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _probe(module: nn.Module, in_shape: Sequence[int]) -> Tuple[Tuple[int, ...], int]:
    """The per-image output shape of ``module`` on one input of shape ``in_shape`` (on ``module``'s device,
    e.g. ``meta``) and the multiply-adds of its Conv2d and Linear layers."""
    total = [0]

    def hook(m, inputs, out):
        if isinstance(m, nn.Conv2d):
            total[0] += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total[0] += out[0].numel() * m.in_features

    hooks = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    device = next(iter(module.parameters()), torch.empty(0)).device
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, *in_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
    return tuple(out.shape[1:]), total[0]


def _node_macs(gm: fx.GraphModule, node: fx.Node) -> int:
    if node.op != "call_module":
        return 0
    m = gm.get_submodule(node.target)
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return 0
    per_image = math.prod(meta.shape[1:]) if len(meta.shape) > 1 else 1
    if isinstance(m, nn.Conv2d):
        return per_image * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
    if isinstance(m, nn.Linear):
        return per_image * m.in_features
    return 0


def _shape(node: Any) -> Optional[Tuple[int, ...]]:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


# ---- the space ---------------------------------------------------------------------------------------------

class BackboneSpace(Space):
    """NAR's backbone space over ``model``; see the module docstring.

    Args:
        model: any ``nn.Module`` torch.fx can trace (not modified; the space keeps a copy).
        example_input: one input batch ``(B, C, H, W)`` (shapes, FLOPs, candidate checks).
        granularity: ``"conv"`` (one gene per refinable conv) or ``"block"`` (one per residual block).
        candidates: candidate op names, a subset of :data:`CANDIDATE_OPS` in any order (arch index ``i``
            is ``candidates[i - 1]``); default all of them.
        max_params: ``"original"`` (a candidate has at most the original conv's parameters), a positive
            number ``r`` (at most ``r`` times), or ``None`` / ``"none"`` (no limit).
        backbone: the built-in name the model was made from (for :meth:`config` and :meth:`export_source`),
            with ``backbone_kwargs`` its constructor arguments.
    """

    name = "backbone"

    def __init__(self, model: nn.Module, example_input: torch.Tensor, *, granularity: str = "conv",
                 candidates: Optional[Sequence[str]] = None, max_params: Union[str, float, None] = "original",
                 backbone: Optional[str] = None, backbone_kwargs: Optional[Dict[str, Any]] = None) -> None:
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity={granularity!r}: expected one of {list(GRANULARITIES)}"
                             f"{did_you_mean(granularity, GRANULARITIES, n=1)}")
        cands = CANDIDATE_OPS if candidates is None else candidates
        if isinstance(cands, str) or not isinstance(cands, Sequence) or not cands:
            raise ValueError(f"candidates={candidates!r}: expected a non-empty sequence of op names from "
                             f"{list(CANDIDATE_OPS)}")
        for c in cands:
            if c not in CANDIDATE_OPS:
                raise ValueError(f"candidates: {c!r} is not a known candidate op; expected names from "
                                 f"{list(CANDIDATE_OPS)}{did_you_mean(c, CANDIDATE_OPS)}")
        if len(set(cands)) != len(cands):
            raise ValueError(f"candidates={list(cands)!r}: expected distinct op names")
        if isinstance(max_params, str) and max_params.lower() == "none":
            max_params = None
        if not (max_params is None or max_params == "original" or (
                isinstance(max_params, (int, float)) and not isinstance(max_params, bool)
                and math.isfinite(max_params) and max_params > 0)):
            raise ValueError(f"max_params={max_params!r}: expected 'original', a positive number (a multiple of "
                             "the original conv's parameters) or None (no limit)")
        if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2 \
                or not example_input.is_floating_point():
            raise ValueError(f"example_input={type(example_input).__name__}"
                             f"{tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else ''}: "
                             "expected a floating-point tensor batch (B, C, H, W)")
        self.granularity = granularity
        self.candidates: Tuple[str, ...] = tuple(cands)
        self.max_params = max_params
        self.backbone = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.backbone_call_kwargs: Dict[str, Any] = dict(self.backbone_kwargs)  # what the class was built with
        self.model_name = type(model).__name__

        base = trace(copy.deepcopy(model))
        base.eval()
        device = next(iter(base.parameters()), torch.empty(0)).device  # the model's device (shapes only)
        x = example_input.detach()[:1].to(device)
        try:
            with torch.no_grad():
                ShapeProp(base).propagate(x)
        except Exception as e:
            raise ValueError(f"example_input of shape {tuple(example_input.shape)} does not fit model "
                             f"{self.model_name}: {type(e).__name__}: {e}") from e
        self._base, self._base_device = base, device
        self.input_shape: Tuple[int, ...] = tuple(x.shape[1:])
        self.in_channels = int(x.shape[1])
        self.resolution = int(x.shape[-1])
        out = _shape(next(n for n in reversed(base.graph.nodes) if n.op == "output").args[0])
        self.num_classes = int(out[1]) if out is not None and len(out) == 2 else None

        self._find_sites()
        self._base_params = _numel(base)
        self._base_macs = sum(_node_macs(base, n) for n in base.graph.nodes)

    # ---- construction

    def _find_sites(self) -> None:
        base = self._base
        blocks = residual_blocks(base.graph)
        sites: Dict[str, _Site] = {}
        for node in base.graph.nodes:
            if node.op != "call_module" or node.target in sites:
                continue
            m = base.get_submodule(node.target)
            if not (isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (3, 3)):
                continue
            block = next((b for b, (_, body) in enumerate(blocks) if node in body), None)
            if block is None:
                continue
            sites[node.target] = _Site(node.target, m, block, _shape(node.args[0])[1:], _shape(node)[1:], _numel(m))
        if not sites:
            raise ValueError(f"model {self.model_name} has no refinable convolution: NAR refines 3x3 nn.Conv2d "
                             "modules inside residual blocks (a branch between a fork and an add of its output), "
                             f"and the traced graph has {len(blocks)} residual block(s) and no 3x3 conv in one")
        self._op_params: Dict[Tuple[str, str], int] = {}
        self._op_macs: Dict[Tuple[str, str], int] = {}
        for site in sites.values():
            self._op_params[site.target, ORIGINAL] = site.params
            self._op_macs[site.target, ORIGINAL] = _probe(site.conv, site.in_shape)[1]
            allowed, why = [], []
            for name in self.candidates:
                with torch.device("meta"):  # shapes, parameter counts and MACs without allocating weights
                    op = make_op(name, site.conv)
                shape, macs = _probe(op, site.in_shape)
                n = _numel(op)
                self._op_params[site.target, name], self._op_macs[site.target, name] = n, macs
                if shape != site.out_shape:
                    why.append(f"{name} gives shape {shape}, not {site.out_shape}")
                elif self.max_params == "original" and n > site.params:
                    why.append(f"{name} has {n} parameters > {site.params}")
                elif isinstance(self.max_params, (int, float)) and n > self.max_params * site.params:
                    why.append(f"{name} has {n} parameters > {self.max_params:g} x {site.params}")
                else:
                    allowed.append(name)
            site.allowed, site.why_not = tuple(allowed), tuple(why)
        self.sites: Tuple[_Site, ...] = tuple(sites.values())
        self._site_index = {s.target: i for i, s in enumerate(self.sites)}
        # genes: (label, site indices, allowed op names)
        genes = []
        if self.granularity == "conv":
            for i, s in enumerate(self.sites):
                genes.append((s.target, (i,), s.allowed))
        else:
            by_block: Dict[int, List[int]] = {}
            for i, s in enumerate(self.sites):
                by_block.setdefault(s.block, []).append(i)
            for b, idx in by_block.items():
                common = tuple(c for c in self.candidates if all(c in self.sites[i].allowed for i in idx))
                label = _common_prefix([self.sites[i].target for i in idx]) or str(blocks[b][0])
                genes.append((label, tuple(idx), common))
        empty = [(label, idx) for label, idx, allowed in genes if not allowed]
        if empty:
            lines = "; ".join(f"{label}: " + ", ".join(w for i in idx for w in self.sites[i].why_not) for label, idx
                              in empty[:4])
            raise ValueError(f"candidates={list(self.candidates)!r} with max_params={self.max_params!r} leave no "
                             f"choice but the original conv at {len(empty)} site(s) of {self.model_name} ({lines}); "
                             "give more candidates or a larger max_params")
        self.gene_labels: Tuple[str, ...] = tuple(g[0] for g in genes)
        self.gene_sites: Tuple[Tuple[int, ...], ...] = tuple(g[1] for g in genes)
        self.gene_ops: Tuple[Tuple[int, ...], ...] = tuple(
            (0,) + tuple(self.candidates.index(c) + 1 for c in g[2]) for g in genes)
        # site -> gene
        self._site_gene = {i: g for g, idx in enumerate(self.gene_sites) for i in idx}

    def op_name(self, index: int) -> str:
        return ORIGINAL if index == 0 else self.candidates[index - 1]

    def config(self) -> Dict[str, Any]:
        cfg: Dict[str, Any] = {}
        if self.backbone is not None:
            cfg.update(backbone=self.backbone, **self.backbone_kwargs, resolution=self.resolution)
        else:
            cfg.update(model=self._base, example_input=torch.zeros(1, *self.input_shape,
                                                                    device=self._base_device))
        cfg.update(granularity=self.granularity, candidates=self.candidates,
                   max_params="none" if self.max_params is None else self.max_params)
        return cfg

    def __repr__(self) -> str:
        what = self.backbone or self.model_name
        return (f"BackboneSpace({what}, input={self.input_shape}, granularity={self.granularity!r}, "
                f"{len(self.gene_ops)} genes, candidates={list(self.candidates)}, max_params={self.max_params!r})")

    # ---- architectures

    def validate(self, arch: Any) -> Tuple[int, ...]:
        if isinstance(arch, (str, bytes)) or not isinstance(arch, (tuple, list)):
            raise ValueError(f"architecture {arch!r}: expected a tuple of {len(self.gene_ops)} op indices "
                             f"(text form e.g. {self.format(self.original())})")
        if len(arch) != len(self.gene_ops):
            raise ValueError(f"architecture {arch!r}: expected {len(self.gene_ops)} op indices (one per "
                             f"{self.granularity}), got {len(arch)}")
        for g, (v, ok) in enumerate(zip(arch, self.gene_ops)):
            if isinstance(v, bool) or not isinstance(v, int) or v not in ok:
                names = ", ".join(f"{i}={self.op_name(i)}" for i in ok)
                raise ValueError(f"architecture {list(arch)!r}: entry {g} ({self.gene_labels[g]}) is {v!r}; "
                                 f"allowed there: {names}")
        return tuple(int(v) for v in arch)

    def original(self) -> Tuple[int, ...]:
        """The base model (every site keeps its conv)."""
        return (0,) * len(self.gene_ops)

    def format(self, arch: Any) -> str:
        return "[" + ",".join(str(v) for v in self.validate(arch)) + "]"

    def parse(self, text: str) -> Tuple[int, ...]:
        if not isinstance(text, str) or not re.fullmatch(r"\s*\[\s*\d+(\s*,\s*\d+)*\s*,?\s*\]\s*", text):
            raise ValueError(f"architecture {text!r}: expected a list of {len(self.gene_ops)} op indices like "
                             f"{self.format(self.original())} (0 keeps the original conv, i is candidate i: "
                             + ", ".join(f"{i + 1}={c}" for i, c in enumerate(self.candidates)) + ")")
        return self.validate(tuple(int(v) for v in re.findall(r"\d+", text)))

    def describe(self, arch: Any) -> List[str]:
        """The op names of ``arch``, one per gene (``"original"`` where it keeps the conv)."""
        return [self.op_name(v) for v in self.validate(arch)]

    def site_ops(self, arch: Any) -> Dict[str, str]:
        """Site module name -> op name of ``arch`` (every site; block granularity repeats a block's op)."""
        a = self.validate(arch)
        return {s.target: self.op_name(a[self._site_gene[i]]) for i, s in enumerate(self.sites)}

    def size(self) -> int:
        return math.prod(len(ok) for ok in self.gene_ops)

    # ---- choices per gene (what the ENAS controller walks)

    def choices(self) -> Tuple[int, ...]:
        """The number of allowed ops of each gene (the controller's option counts)."""
        return tuple(len(ok) for ok in self.gene_ops)

    def from_choices(self, index: Sequence[int]) -> Tuple[int, ...]:
        """The architecture whose gene ``g`` is gene ``g``'s ``index[g]``-th allowed op."""
        if len(index) != len(self.gene_ops) or any(not 0 <= i < len(ok) for i, ok in zip(index, self.gene_ops)):
            raise ValueError(f"choice indices {list(index)!r}: expected one per gene, below {list(self.choices())}")
        return tuple(ok[i] for i, ok in zip(index, self.gene_ops))

    def to_choices(self, arch: Any) -> Tuple[int, ...]:
        """The inverse of :meth:`from_choices`."""
        return tuple(ok.index(v) for v, ok in zip(self.validate(arch), self.gene_ops))

    def enumerate(self) -> Iterator[Tuple[int, ...]]:
        if self.size() > ENUMERATE_LIMIT:
            raise NotImplementedError(f"space backbone has {self.size()} architectures, more than "
                                      f"{ENUMERATE_LIMIT} to enumerate")
        return iter(itertools.product(*self.gene_ops))

    def sample(self, rng: random.Random) -> Tuple[int, ...]:
        return tuple(rng.choice(ok) for ok in self.gene_ops)

    def mutate(self, arch: Any, prob: float, rng: random.Random) -> Tuple[int, ...]:
        a = self.validate(arch)
        return tuple(rng.choice(ok) if rng.random() < prob else v for v, ok in zip(a, self.gene_ops))

    def crossover(self, a: Any, b: Any, rng: random.Random) -> Tuple[int, ...]:
        a, b = self.validate(a), self.validate(b)
        return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b))

    # ---- costs and networks

    def params(self, arch: Any) -> int:
        ops = self.site_ops(arch)
        return self._base_params + sum(self._op_params[s.target, ops[s.target]] - s.params for s in self.sites)

    def flops(self, arch: Any) -> float:
        ops = self.site_ops(arch)
        macs = self._base_macs + sum(self._op_macs[s.target, ops[s.target]] - self._op_macs[s.target, ORIGINAL]
                                     for s in self.sites)
        return macs / 1e6

    def supernet(self, **kwargs: Any) -> "BackboneSupernet":
        if kwargs:
            raise ValueError(f"supernet() of space backbone takes no arguments, got {sorted(kwargs)}")
        return BackboneSupernet(self)

    def build(self, arch: Any, **kwargs: Any) -> nn.Module:
        """The refined network of ``arch`` with fresh weights (every layer re-initialised), in train mode."""
        net = BackboneSupernet(self).extract(arch)
        for m in net.modules():
            if m is not net and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        return net.train()


def _common_prefix(names: Sequence[str]) -> str:
    parts = [n.split(".") for n in names]
    out = []
    for column in zip(*parts):
        if len(set(column)) != 1:
            break
        out.append(column[0])
    if len(names) == 1 and out:
        out = out[:-1]
    return ".".join(out)


# ---- the supernet ------------------------------------------------------------------------------------------

class Choice(nn.Module):
    """One site: ``forward(x, index)`` runs ``ops[names[index]]`` (``names[0] == "original"``)."""

    def __init__(self, ops: Dict[str, nn.Module], names: Sequence[str]) -> None:
        super().__init__()
        self.ops = nn.ModuleDict(ops)
        self.names = tuple(names)  # global op index -> name ("" where not allowed here)

    def forward(self, x: torch.Tensor, index: int) -> torch.Tensor:
        return self.ops[self.names[index]](x)


def _set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, leaf = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


class BackboneSupernet(Supernet):
    """The weight-sharing supernet of a :class:`BackboneSpace` (module docstring); ``net`` is the rewritten
    GraphModule, ``forward(x, arch)`` runs ``net(x, arch)``."""

    def __init__(self, space: BackboneSpace) -> None:
        super().__init__()
        self.space = space
        gm = copy.deepcopy(space._base)
        names = [ORIGINAL, *space.candidates]
        for i, site in enumerate(space.sites):
            allowed = set(space.op_name(v) for v in space.gene_ops[space._site_gene[i]])
            ops = {ORIGINAL: gm.get_submodule(site.target)}
            ops.update({c: make_op(c, site.conv).to(site.conv.weight.device) for c in space.candidates
                        if c in allowed})
            _set_submodule(gm, site.target, Choice(ops, [n if n in ops else "" for n in names]))
        graph = gm.graph
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        with graph.inserting_after(placeholders[-1]):
            arch = graph.placeholder("arch")
        for node in list(graph.nodes):
            if node.op == "call_module" and node.target in space._site_index:
                gene = space._site_gene[space._site_index[node.target]]
                with graph.inserting_before(node):
                    index = graph.call_function(operator.getitem, (arch, gene))
                node.args = (node.args[0], index)
        graph.lint()
        gm.recompile()
        self.net = gm
        self.train()
        # parameter name -> (site index, op name) for the site-owned ones
        self._owner: Dict[str, Tuple[int, str]] = {}
        for i, site in enumerate(space.sites):
            for op, mod in gm.get_submodule(site.target).ops.items():
                for pn, _ in mod.named_parameters():
                    self._owner[f"net.{site.target}.ops.{op}.{pn}"] = (i, op)

    def forward(self, x: torch.Tensor, arch: Any) -> torch.Tensor:
        return self.net(x, self.space.validate(arch))

    def path_parameters(self, arch: Any) -> List[str]:
        ops = self.space.site_ops(arch)
        sites = self.space.sites
        out = []
        for name, _ in self.named_parameters():
            owner = self._owner.get(name)
            if owner is None or ops[sites[owner[0]].target] == owner[1]:
                out.append(name)
        return out

    def searched_prefixes(self) -> Tuple[str, ...]:
        return tuple(f"net.{s.target}." for s in self.space.sites)

    def extract(self, arch: Any, *, return_map: bool = False) -> Any:
        """A GraphModule on the base model's graph with each site's chosen op (copied weights), in eval mode."""
        ops = self.space.site_ops(arch)
        base = self.space._base
        root: Dict[str, Any] = {}
        for node in base.graph.nodes:
            if node.op == "call_module" and node.target not in root:
                if node.target in ops:
                    mod = self.net.get_submodule(node.target).ops[ops[node.target]]
                else:
                    mod = self.net.get_submodule(node.target)
                root[node.target] = copy.deepcopy(mod)
            elif node.op == "get_attr" and node.target not in root:
                root[node.target] = copy.deepcopy(functools.reduce(getattr, node.target.split("."), self.net))
        net = fx.GraphModule(root, copy.deepcopy(base.graph), base.__class__.__name__)
        net.eval()
        if not return_map:
            return net
        name_map = {}
        for pn, _ in net.named_parameters():
            src = f"net.{pn}"
            for target, op in ops.items():
                if pn.startswith(target + "."):
                    src = f"net.{target}.ops.{op}.{pn[len(target) + 1:]}"
                    break
            name_map[pn] = src
        return net, name_map

    def export_source(self, arch: Any, class_name: str = "Network") -> str:
        """Plain PyTorch source of the refined backbone ``arch``: the backbone (the built-in's class, copied;
        a ``FILE.py:ClassName`` backbone is loaded from that file) with each site module replaced; its
        ``state_dict`` loads ``extract(arch)``'s. A model given as an object has no source to export."""
        s = self.space
        if s.backbone is None:
            raise NotImplementedError(f"export_source of a backbone space over a model object ({s.model_name}) is not "
                                      "supported (fastnas has no source for it): save extract(arch), a GraphModule, "
                                      "or give the model as --backbone FILE.py:ClassName")
        ops = s.site_ops(arch)
        exported = [backbone_ops.SepConv, backbone_ops.PoolConv, backbone_ops.make_op, backbone_ops._stride]
        user = s.backbone not in resnets.BACKBONES
        if not user:
            exported = [resnets.BasicBlock, resnets.CifarResNet] + exported
        taken = {o.__name__ for o in exported} | {"torch", "nn", "SITES", "CANDIDATE_OPS", "Tuple", "importlib",
                                                   "os", "BACKBONE_FILE", "BACKBONE_CLASS", "BACKBONE_KWARGS",
                                                   "_backbone_class", "_refine"}
        check_class_name(class_name, taken)
        parts = [
            f'"""{s.backbone} refined by NAR: {s.format(arch)}\n\nGenerated by fastnas from {s!r}. Needs only '
            'torch' + (' and the backbone\'s own file' if user else '') + '.\n"""\n',
            "from __future__ import annotations\n",
            *(["import importlib.util", "import os"] if user else []),
            "import torch",
            "from torch import nn\n",
            f"CANDIDATE_OPS = {CANDIDATE_OPS!r}",
            f"SITES = {ops!r}  # conv module -> op ('original' keeps it)",
        ]
        parts += ["\n" + inspect.getsource(o) for o in exported]
        refine = ("\n\ndef _refine(model):\n"
                  "    for target, op in SITES.items():\n"
                  "        if op != 'original':\n"
                  "            parent, _, leaf = target.rpartition('.')\n"
                  "            owner = model.get_submodule(parent) if parent else model\n"
                  "            setattr(owner, leaf, make_op(op, getattr(owner, leaf)))\n"
                  "    return model\n")
        parts.append(refine)
        if not user:
            ctor, _, _ = resnets.BACKBONES[s.backbone]
            built = ctor(**s.backbone_kwargs)
            parts.append(
                f"\nclass {class_name}(CifarResNet):\n"
                f'    """{s.backbone} refined: {s.format(arch)}"""\n\n'
                f"    def __init__(self):\n"
                f"        super().__init__({tuple(built.conv1.out_channels * 2 ** i for i in range(len(built.layers)))!r}, "
                f"{tuple(len(stage) for stage in built.layers)!r}, num_classes={built.fc.out_features}, "
                f"in_channels={built.conv1.in_channels})\n"
                f"        _refine(self)\n")
        else:
            path, cls = s.backbone.rsplit(":", 1)
            parts.append(
                f"\nBACKBONE_FILE = {str(Path(path).resolve())!r}  # the backbone's source (absolute, or beside this file)\n"
                f"BACKBONE_CLASS = {cls!r}\n"
                f"BACKBONE_KWARGS = {dict(s.backbone_call_kwargs)!r}\n\n\n"
                "def _backbone_class():\n"
                "    path = BACKBONE_FILE\n"
                "    if not os.path.isfile(path):\n"
                "        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.path.basename(BACKBONE_FILE))\n"
                "    spec = importlib.util.spec_from_file_location('_refined_backbone_source', path)\n"
                "    module = importlib.util.module_from_spec(spec)\n"
                "    spec.loader.exec_module(module)\n"
                "    return getattr(module, BACKBONE_CLASS)\n\n\n"
                f"class {class_name}(nn.Module):\n"
                f'    """{s.backbone} refined: {s.format(arch)} (the backbone as ``self.net``)"""\n\n'
                "    def __init__(self):\n"
                "        super().__init__()\n"
                "        self.net = _refine(_backbone_class()(**BACKBONE_KWARGS))\n\n"
                "    def forward(self, x):\n"
                "        return self.net(x)\n\n"
                "    def load_state_dict(self, state_dict, strict=True, assign=False):\n"
                "        # the weights are the refined backbone's own state_dict (keys without 'net.')\n"
                "        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)\n\n"
                "    def state_dict(self, *args, **kwargs):\n"
                "        return self.net.state_dict(*args, **kwargs)\n")
        return "\n".join(parts)


# ---- backbones from a file --------------------------------------------------------------------------------

def load_backbone_file(spec: str, num_classes: Optional[int] = None,
                       in_channels: Optional[int] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """The model of ``spec`` = ``"FILE.py:ClassName"``: the class loaded from that file and built with
    ``num_classes=`` / ``in_channels=`` where its constructor takes them (no arguments otherwise); returns
    the model and the keyword arguments it was built with."""
    import importlib.util

    path, _, cls_name = spec.rpartition(":")
    if not path or not cls_name.isidentifier() or not path.endswith(".py"):
        raise ValueError(f"backbone={spec!r}: expected resnet20, resnet18 or FILE.py:ClassName")
    if not Path(path).is_file():
        raise ValueError(f"backbone={spec!r}: no such file {path!r}")
    module_name = "_fastnas_backbone_" + re.sub(r"\W", "_", str(Path(path).resolve()))
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(loader_spec)
    try:
        loader_spec.loader.exec_module(module)
    except Exception as e:  # the user's file: any error it raises is reported with its type
        raise ValueError(f"backbone={spec!r}: importing {path!r} failed: {type(e).__name__}: {e}") from e
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        found = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)
                       and v.__module__ == module_name)
        raise ValueError(f"backbone={spec!r}: {path!r} defines no nn.Module class {cls_name!r}"
                         f"{did_you_mean(cls_name, found)} (its nn.Module classes: {found})")
    params = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels))
              if v is not None and k in params}
    try:
        model = cls(**kwargs)
    except Exception as e:  # the user's constructor
        raise ValueError(f"backbone={spec!r}: {cls_name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}) "
                         f"failed: {type(e).__name__}: {e}") from e
    return model, kwargs


def _parse_candidates(candidates: Any) -> Any:
    if isinstance(candidates, str):
        return tuple(c.strip() for c in candidates.split(",") if c.strip()) or candidates
    return candidates


def _parse_max_params(value: Any) -> Any:
    if isinstance(value, str) and value.lower() not in ("original", "none"):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"max_params={value!r}: expected 'original', a positive number (a multiple of the "
                             "original conv's parameters) or 'none' (no limit)") from None
    return value


# ---- registration ------------------------------------------------------------------------------------------

@register_space("backbone")
def create_backbone_space(backbone: Optional[str] = None, model: Optional[nn.Module] = None,
                          example_input: Optional[torch.Tensor] = None, *, channels: Optional[int] = None,
                          width: Optional[int] = None, cells: Optional[int] = None, blocks: Optional[int] = None,
                          num_classes: Optional[int] = None, in_channels: Optional[int] = None,
                          resolution: Optional[int] = None, granularity: Optional[str] = None,
                          candidates: Optional[Sequence[str]] = None,
                          max_params: Union[str, float, None] = "original") -> BackboneSpace:
    """``create_space("backbone", ...)``: a built-in ``backbone`` (``"resnet20"`` default, ``"resnet18"``) of
    ``width`` (generic: ``channels``) first-stage channels and ``blocks`` (generic: ``cells``) blocks per
    stage, on ``resolution`` x ``resolution`` inputs (default 32); ``backbone="FILE.py:ClassName"``, a
    user's network from a file (built with ``num_classes=``/``in_channels=`` where it takes them; the
    generic ``channels``/``cells`` do not apply to it) -- or a user ``model`` object with its
    ``example_input``. A built or loaded model is initialised under seed 0 (its weights are the supernet's
    original ops: the same in every process). ``candidates`` may be a comma-separated string, ``max_params`` a number's text."""
    granularity = "conv" if granularity is None else granularity
    candidates = _parse_candidates(candidates)
    max_params = _parse_max_params(max_params)
    if model is not None:
        if backbone is not None:
            raise ValueError(f"backbone={backbone!r} and model={type(model).__name__}: give one of them")
        if example_input is None:
            raise ValueError(f"model={type(model).__name__}: example_input (an input batch) is needed too")
        return BackboneSpace(model, example_input, granularity=granularity, candidates=candidates,
                             max_params=max_params)
    backbone = "resnet20" if backbone is None else backbone
    res = 32 if resolution is None else resolution
    if isinstance(res, bool) or not isinstance(res, int) or res < 1:
        raise ValueError(f"resolution={resolution!r}: expected a positive integer")
    if backbone.startswith("python:"):
        raise ValueError(f"backbone={backbone!r}: a model object given to fastnas.refine() (no source to rebuild it "
                         "from); give the object again from Python, or the model as FILE.py:ClassName")
    if ":" in backbone:
        path, _, cls_name = backbone.rpartition(":")
        if path and Path(path).is_file():  # recorded absolute: a run resumed from elsewhere finds it
            backbone = f"{Path(path).resolve()}:{cls_name}"
        if width is not None or blocks is not None:
            raise ValueError(f"backbone={backbone!r}: width/blocks apply to the built-in backbones only")
        with torch.random.fork_rng(devices=[]):  # the model's initial weights: the same in every process
            torch.manual_seed(0)
            model, call_kwargs = load_backbone_file(backbone, num_classes, in_channels)
        c_in = 3 if in_channels is None else in_channels
        space = BackboneSpace(model, torch.zeros(1, c_in, res, res), granularity=granularity, candidates=candidates,
                              max_params=max_params, backbone=backbone,
                              backbone_kwargs={"num_classes": num_classes, "in_channels": c_in})
        space.backbone_call_kwargs = call_kwargs
        if num_classes is not None and space.num_classes is not None and space.num_classes != num_classes:
            raise ValueError(f"backbone={backbone!r} gives {space.num_classes} outputs per image, the data has "
                             f"{num_classes} classes (give its constructor a num_classes argument, or build it "
                             "for this data)")
        return space
    if backbone not in resnets.BACKBONES:
        raise ValueError(f"backbone={backbone!r} is not a built-in backbone; expected one of "
                         f"{sorted(resnets.BACKBONES)}{did_you_mean(backbone, resnets.BACKBONES)}")
    ctor, default_width, default_blocks = resnets.BACKBONES[backbone]
    kwargs = {"width": size_keyword("width", width, "channels", channels, default_width),
              "blocks": size_keyword("blocks", blocks, "cells", cells, default_blocks),
              "num_classes": 10 if num_classes is None else num_classes,
              "in_channels": 3 if in_channels is None else in_channels}
    with torch.random.fork_rng(devices=[]):  # the model's initial weights: the same in every process
        torch.manual_seed(0)
        model = ctor(**kwargs)
    return BackboneSpace(model, torch.zeros(1, kwargs["in_channels"], res, res), granularity=granularity,
                         candidates=candidates, max_params=max_params, backbone=backbone, backbone_kwargs=kwargs)
