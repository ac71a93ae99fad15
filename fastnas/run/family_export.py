"""Exporting a model family: every member standalone, and the family as one weight file of shared tensors.

``export_family`` writes into a folder:

* ``member<k>.py`` + ``member<k>.pt`` (k = 1..K, smallest budget first): the member's network as plain
  PyTorch source (``class Network``; imports only torch) and its ``state_dict`` -- the supernet's
  weights for that member and BatchNorm statistics re-estimated for it;
* ``family.pt``: one set of tensors for the whole family -- for every supernet parameter some member
  uses, the box of it the members span (the largest member's tensor when the members are nested) --
  and, per member, its architecture, where each of its parameters lies in those tensors
  (``{"name", "box": [[start, stop], ...]}``, one range per dim), its own BatchNorm buffers and its
  ``state_dict`` key order;
* ``family.py``: ``load_member(k)`` builds member ``k`` (``member<k>.Network`` from the file beside it)
  with its parameters sliced out of ``family.pt``'s shared tensors; needs only torch.

The weight file holds only tensors, strings, numbers, lists and dicts, so
``torch.load(path, weights_only=True)`` reads it. :func:`read_family` checks such a file against a space.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn

from fastnas.run.rundir import write_bytes_atomic, write_text_atomic

__all__ = ["export_family", "read_family", "member_state_dict", "FAMILY_FORMAT", "FAMILY_VERSION"]

FAMILY_FORMAT = "fastnas-family"
FAMILY_VERSION = 1

Box = List[List[int]]


def _full_box(entry: Any, full_shape: Sequence[int]) -> Tuple[str, Box]:
    """``(supernet name, box over every dim)`` of a name-or-ParamSlice entry."""
    if isinstance(entry, str):
        return entry, [[0, int(n)] for n in full_shape]
    index = [list(map(int, r)) for r in entry.index]
    return entry.name, index + [[0, int(n)] for n in list(full_shape)[len(index):]]


def _save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def member_state_dict(family: Dict[str, Any], k: int) -> Dict[str, torch.Tensor]:
    """Member ``k``'s (1-based) ``state_dict`` from a family file's dict: views of the shared tensors and
    its own buffers."""
    member = family["members"][k - 1]
    shared = family["shared"]
    state = {key: shared[p["name"]][tuple(slice(lo, hi) for lo, hi in p["box"])] for key, p in member["params"].items()}
    state.update(member["buffers"])
    return {key: state[key] for key in member["keys"]}


def export_family(supernet: nn.Module, space: Any, archs: Sequence[Any], modules: Sequence[nn.Module],
                  out_dir: "Path | str") -> Dict[str, Path]:
    """Writes the members' standalone files and ``family.pt``/``family.py`` into ``out_dir``.

    Args:
        supernet: the trained supernet the members' weights come from.
        space: its space.
        archs: the members, smallest budget first.
        modules: the members' standalone modules with their own BatchNorm statistics (as
            :func:`fastnas.train.recalibrate_member` returns them), in the same order.
        out_dir: the folder (created).

    Returns:
        ``{"member1.py": path, ..., "family.pt": path, "family.py": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    full = {n: p.detach() for n, p in supernet.named_parameters()}
    files: Dict[str, Path] = {}
    members: List[Dict[str, Any]] = []
    boxes: Dict[str, Box] = {}
    for k, (arch, module) in enumerate(zip(archs, modules), start=1):
        state = {key: v.detach().cpu().clone() for key, v in module.state_dict().items()}
        source = supernet.export_source(arch, class_name="Network")
        write_text_atomic(out / f"member{k}.py", source)
        _save(state, out / f"member{k}.pt")
        files[f"member{k}.py"], files[f"member{k}.pt"] = out / f"member{k}.py", out / f"member{k}.pt"
        _, name_map = supernet.extract(arch, return_map=True)
        params: Dict[str, Dict[str, Any]] = {}
        for key, entry in name_map.items():
            name, box = _full_box(entry, full[entry if isinstance(entry, str) else entry.name].shape)
            params[key] = {"name": name, "box": box}
            if name in boxes:
                boxes[name] = [[min(a[0], b[0]), max(a[1], b[1])] for a, b in zip(boxes[name], box)]
            else:
                boxes[name] = [list(r) for r in box]
        buffers = {key: v for key, v in state.items() if key not in params}
        members.append({"arch": space.format(arch), "module": f"member{k}", "class_name": "Network",
                        "keys": list(state), "params": params, "buffers": buffers})
    # Shared tensors: each cropped to the box its members span; the members' boxes shifted into it.
    shared = {name: full[name][tuple(slice(lo, hi) for lo, hi in box)].cpu().clone().contiguous()
              for name, box in boxes.items()}
    for member in members:
        for p in member["params"].values():
            origin = boxes[p["name"]]
            p["box"] = [[lo - o[0], hi - o[0]] for (lo, hi), o in zip(p["box"], origin)]
    family = {"format": FAMILY_FORMAT, "version": FAMILY_VERSION, "space": space.name,
              "space_config": json.loads(json.dumps(space.config())), "shared": shared, "members": members}
    _save(family, out / "family.pt")
    write_text_atomic(out / "family.py", _family_source(space, [m["arch"] for m in members]))
    files["family.pt"], files["family.py"] = out / "family.pt", out / "family.py"
    return files


def read_family(path: "Path | str", space: Any) -> Dict[str, Any]:
    """A family file (``family.pt``) checked against ``space``: its format, its space, every member's
    architecture and every tensor's shape against ``space.build(arch)``. ``ValueError`` naming the file
    and what does not match."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"family file {str(path)!r} does not exist")
    try:
        family = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a file that is not its own
        raise ValueError(f"family file {str(path)!r} is not a torch file fastnas can read ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(family, dict) or family.get("format") != FAMILY_FORMAT:
        raise ValueError(f"family file {str(path)!r} is not a fastnas family file (no format {FAMILY_FORMAT!r})")
    if family.get("version") != FAMILY_VERSION:
        raise ValueError(f"family file {str(path)!r} has version {family.get('version')!r}; this fastnas reads "
                         f"{FAMILY_VERSION}")
    if family.get("space") != getattr(space, "name", None):
        raise ValueError(f"family file {str(path)!r} holds a family of space {family.get('space')!r}, not of "
                         f"{getattr(space, 'name', space)!r}")
    saved, now = family.get("space_config"), json.loads(json.dumps(space.config()))
    if saved != now:
        differ = sorted(key for key in set(saved or {}) | set(now) if (saved or {}).get(key) != now.get(key))
        raise ValueError(f"family file {str(path)!r} was made for another {space.name} space: "
                         + ", ".join(f"{key} {(saved or {}).get(key)!r} (this space: {now.get(key)!r})" for key in differ))
    for k, member in enumerate(family["members"], start=1):
        try:
            arch = space.parse(member["arch"])
        except ValueError as e:
            raise ValueError(f"family file {str(path)!r}: member {k} {member['arch']!r} is not an architecture of "
                             f"this space ({e})") from None
        with torch.device("meta"):
            expected = {key: tuple(v.shape) for key, v in space.build(arch).state_dict().items()}
        try:
            got = {key: tuple(v.shape) for key, v in member_state_dict(family, k).items()}
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(f"family file {str(path)!r}: member {k} refers to a shared tensor it lacks ({e})") from None
        if got != expected:
            bad = sorted(key for key in set(got) | set(expected) if got.get(key) != expected.get(key))
            raise ValueError(f"family file {str(path)!r}: member {k} ({member['arch']}) does not match this space "
                             f"(size settings {space.config()}): {bad[0]} has shape {got.get(bad[0])}, the space "
                             f"builds {expected.get(bad[0])}")
    return family


def _family_source(space: Any, archs: List[str]) -> str:
    listed = "\n".join(f"    {a!r}," for a in archs)
    return f'''"""A fastnas model family of {len(archs)} members of space {space.name!r}, smallest budget first.

family.pt holds one set of tensors shared by all members; load_member(k) builds member k (1-based) from
member<k>.py beside this file, its parameters sliced out of the shared tensors and its own BatchNorm
statistics. Generated by fastnas; needs only torch. Keep the folder together.

    import family
    net = family.load_member(2)          # an nn.Module in eval mode
"""

from __future__ import annotations

import importlib.util
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
MEMBERS = [
{listed}
]


def load_family(path=None):
    """The family file's dict: "shared" tensors, "members" (arch, params -> name and box, buffers)."""
    return torch.load(path or os.path.join(HERE, "family.pt"), map_location="cpu", weights_only=True)


def member_state_dict(k, family=None):
    """Member k's state_dict: views of the shared tensors (no copies) and its own buffers."""
    family = family if family is not None else load_family()
    if not 1 <= k <= len(family["members"]):
        raise ValueError(f"k={{k!r}}: expected a member 1..{{len(family['members'])}}")
    member = family["members"][k - 1]
    shared = family["shared"]
    state = {{key: shared[p["name"]][tuple(slice(lo, hi) for lo, hi in p["box"])]
             for key, p in member["params"].items()}}
    state.update(member["buffers"])
    return {{key: state[key] for key in member["keys"]}}  # in the network's state_dict order


def member_class(k):
    """The network class of member k (member<k>.py's Network)."""
    name = "member%d" % k
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Network


def load_member(k, family=None):
    """Member k (1-based) with its weights from the family file, in eval mode."""
    net = member_class(k)()
    net.load_state_dict(member_state_dict(k, family))
    return net.eval()
'''
