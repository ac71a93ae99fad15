"""ENAS's controller as an ask/tell searcher: an LSTM policy over the space's sites, trained by REINFORCE.

The space exposes its choices per site: ``space.choices()`` returns the number of options of each site
and an architecture is the tuple of the chosen indices (``(2, 0, 1, ...)``), or, where the space has
``from_choices(index)`` / ``to_choices(arch)`` (NAR's backbone space, whose op numbers are global), the
architecture those indices name. One round (one controller update):

1. ``ask()`` samples ``samples_per_update`` architectures from the policy (a ``random.Random`` draws
   each choice from the policy's probabilities, so a run is reproducible) and returns the ones never
   scored before (as their ``space.canonical`` representatives, each once); a sample scored before
   reuses its recorded score, so nothing is scored twice. A sample outside ``max_params``/``max_flops``
   (or the ``admissible`` predicate) is not scored; it is left out of the update, or gets
   ``infeasible_reward`` when that is set. A round whose samples are all known is learnt from at once;
2. ``tell`` records the scores; when the round is complete the controller learns (:func:`reinforce_step`):
   ``reward = score + entropy_weight * entropy``, ``baseline = decay * baseline + (1 - decay) *
   mean(reward)``, ``loss = -sum((reward - baseline) * log_prob)``, one Adam step.

The settings are those of the ENAS code and its PyTorch ports (melodyguan/enas, carpedm20/ENAS-pytorch,
NNI): logits divided by a temperature (5) then ``tanh_constant * tanh`` (2.5), entropy bonus 1e-4,
baseline decay 0.99, Adam lr 3.5e-4, 20 samples per update. This is the one searcher that holds
tensors; its :meth:`ENASSearcher.state_dict` stays JSON (float32 values as Python floats, which
round-trip exactly), so a resumed search continues bit-identically (controller, Adam, baseline and
random state included).
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from fastnas.search.base import SearchConfig, check_float, check_int, config_from_dict
from fastnas.search.batch import BatchSearcher, check_state, rng_from_json, rng_to_json
from fastnas.search.history import Arch, SearchRecord, SearchResult, best_of, canonical
from fastnas.search.registry import register_searcher

__all__ = ["ENASConfig", "ENASController", "ENASSearcher", "reinforce_step", "space_choices", "choice_codec"]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1
ORIGIN = "controller"


@dataclass(frozen=True)
class ENASConfig:
    """Settings of :class:`ENASSearcher` (defaults: the ENAS code and its PyTorch ports).

    Attributes:
        updates: controller updates (rounds); at most ``updates * samples_per_update`` architectures
            are scored.
        samples_per_update: architectures sampled per update (REINFORCE's batch).
        hidden: LSTM hidden size (64 in NNI and the TF CIFAR scripts, 100 in the PyTorch port).
        temperature: logits are divided by it before the tanh.
        tanh_constant: logits become ``tanh_constant * tanh(logits / temperature)`` (None: no tanh).
        entropy_weight: weight of the policy's entropy added to each reward.
        baseline_decay: decay of the reward's moving-average baseline, in [0, 1).
        baseline_init: the baseline before the first update (None: the first update's mean reward).
        lr: Adam's learning rate.
        seed: seeds the controller's initial weights and the sampling ``random.Random``.
        topk: length of ``result().topk``.
        max_params, max_flops: upper limits on ``space.params`` / ``space.flops`` (None: none).
        infeasible_reward: the reward of a sample outside the limits (None: left out of the update).
    """

    updates: int = 100
    samples_per_update: int = 20
    hidden: int = 64
    temperature: float = 5.0
    tanh_constant: Optional[float] = 2.5
    entropy_weight: float = 1e-4
    baseline_decay: float = 0.99
    baseline_init: Optional[float] = None
    lr: float = 3.5e-4
    seed: int = 0
    topk: int = 10
    max_params: Optional[float] = None
    max_flops: Optional[float] = None
    infeasible_reward: Optional[float] = None

    def __post_init__(self) -> None:
        for name in ("updates", "samples_per_update", "hidden", "topk"):
            check_int(name, getattr(self, name), 1)
        check_int("seed", self.seed, 0)
        check_float("temperature", self.temperature, low=0.0, low_open=True)
        if self.tanh_constant is not None:
            check_float("tanh_constant", self.tanh_constant, low=0.0, low_open=True)
        check_float("entropy_weight", self.entropy_weight, low=0.0)
        check_float("baseline_decay", self.baseline_decay, low=0.0, high=1.0, high_open=True)
        check_float("lr", self.lr, low=0.0, low_open=True)
        for name in ("baseline_init", "infeasible_reward"):
            if getattr(self, name) is not None:
                check_float(name, getattr(self, name), low=-math.inf)
        for name in ("max_params", "max_flops"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                          and value > 0):
                raise ValueError(f"{name}={value!r}: expected a positive number or None")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ENASConfig":
        return config_from_dict(cls, d)

    @classmethod
    def from_search_config(cls, config: SearchConfig) -> "ENASConfig":
        """``generations`` updates of ``population`` samples; the seed, top-k and limits as given."""
        return cls(updates=config.generations, samples_per_update=config.population, seed=config.seed,
                   topk=config.topk, max_params=config.max_params, max_flops=config.max_flops)


def space_choices(space: Any) -> Tuple[int, ...]:
    """``space.choices()`` checked: the number of options of each site (a tuple of integers >= 1).

    Raises:
        ValueError: the space has no ``choices()`` (the controller needs an architecture to be a tuple
            of choice indices, one per site) or returned something else.
    """
    fn = getattr(space, "choices", None)
    name = getattr(space, "name", type(space).__name__)
    if fn is None:
        raise ValueError(f"--searcher enas needs a space whose architectures are choices per site "
                         f"(space.choices()); space {name!r} has none: use evolution or random search")
    choices = fn()
    if not (isinstance(choices, (tuple, list)) and choices
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in choices)):
        raise ValueError(f"space {name!r}: choices()={choices!r}: expected a non-empty tuple of option "
                         "counts (integers >= 1), one per site")
    return tuple(choices)


def choice_codec(space: Any) -> Tuple[Any, Any]:
    """``(decode, encode)``: choice indices -> architecture and back (``space.from_choices`` /
    ``space.to_choices`` where the space has them, else the identity on tuples)."""
    decode = getattr(space, "from_choices", None)
    encode = getattr(space, "to_choices", None)
    if decode is None or encode is None:
        return tuple, tuple
    return decode, encode


class ENASController(nn.Module):
    """The ENAS policy: an LSTM cell walks the sites; at site ``i`` it reads an embedding of the choice
    made at site ``i - 1`` (site 0: a learned start vector) and a linear head gives the logits of site
    ``i``'s options, ``tanh_constant * tanh(head(h) / temperature)``.

    Args:
        choices: the number of options of each site.
        hidden: the LSTM's hidden (and embedding) size.
        temperature, tanh_constant: the logits' transform (``tanh_constant=None``: ``head(h) / temperature``).
    """

    def __init__(self, choices: Sequence[int], hidden: int = 64, temperature: float = 5.0,
                 tanh_constant: Optional[float] = 2.5) -> None:
        super().__init__()
        self.choices = tuple(int(n) for n in choices)
        self.hidden = hidden
        self.temperature = float(temperature)
        self.tanh_constant = None if tanh_constant is None else float(tanh_constant)
        self.start = nn.Parameter(torch.zeros(1, hidden))
        nn.init.uniform_(self.start, -0.1, 0.1)
        # embeds[i] embeds site i's choice as site i + 1's input (the last site's choice feeds nothing)
        self.embeds = nn.ModuleList(nn.Embedding(n, hidden) for n in self.choices[:-1])
        self.lstm = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in self.choices)

    def logits(self, h: torch.Tensor, site: int) -> torch.Tensor:
        """Site ``site``'s logits from the LSTM state ``h`` (B, hidden) -> (B, n_site)."""
        z = self.heads[site](h) / self.temperature
        return z if self.tanh_constant is None else self.tanh_constant * torch.tanh(z)

    def _walk(self, batch: int, pick: Any) -> Tuple[List[Tuple[int, ...]], torch.Tensor, torch.Tensor]:
        x = self.start.expand(batch, -1)  # (B, H)
        h = torch.zeros(batch, self.hidden)
        c = torch.zeros(batch, self.hidden)
        columns: List[List[int]] = []
        log_prob = torch.zeros(batch)
        entropy = torch.zeros(batch)
        for site in range(len(self.choices)):
            h, c = self.lstm(x, (h, c))
            logp = torch.log_softmax(self.logits(h, site), dim=-1)  # (B, n_site)
            idx = pick(site, logp)
            columns.append(idx)
            index = torch.tensor(idx, dtype=torch.long)
            log_prob = log_prob + logp.gather(1, index[:, None])[:, 0]
            entropy = entropy - (logp.exp() * logp).sum(-1)
            if site + 1 < len(self.choices):
                x = self.embeds[site](index)
        archs = [tuple(col[b] for col in columns) for b in range(batch)]
        return archs, log_prob, entropy

    def forward(self, archs: Sequence[Tuple[int, ...]]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Log-probabilities (B,) of ``archs`` under the policy and the entropies (B,) of the policy along
        them (summed over the sites); differentiable."""
        archs = [tuple(a) for a in archs]
        _, log_prob, entropy = self._walk(len(archs), lambda site, logp: [a[site] for a in archs])
        return log_prob, entropy

    def sample(self, batch: int, rng: random.Random
               ) -> Tuple[List[Tuple[int, ...]], torch.Tensor, torch.Tensor]:
        """``batch`` architectures drawn from the policy, with their log-probabilities (B,) and entropies
        (B,). Each choice is drawn by ``rng`` (one ``rng.random()`` per site and sample, inverted through
        the cumulative probabilities), so the draws depend only on ``rng`` and the weights."""
        def pick(site: int, logp: torch.Tensor) -> List[int]:
            out = []
            for row in logp.detach().exp().tolist():
                cum, total = [], 0.0
                for p in row:
                    total += p
                    cum.append(total)
                out.append(min(bisect.bisect_right(cum, rng.random() * total), len(row) - 1))
            return out

        return self._walk(batch, pick)

    def greedy(self) -> Tuple[Tuple[int, ...], List[List[float]]]:
        """The most likely choice at each site given the previous ones, and the option probabilities of
        each site along that path."""
        probs: List[List[float]] = []

        def pick(site: int, logp: torch.Tensor) -> List[int]:
            probs.append(logp[0].exp().tolist())
            return [int(logp[0].argmax())]

        with torch.no_grad():
            archs, _, _ = self._walk(1, pick)
        return archs[0], probs


def reinforce_step(controller: ENASController, optimizer: torch.optim.Optimizer,
                   archs: Sequence[Tuple[int, ...]], scores: Sequence[float], *, baseline: Optional[float],
                   entropy_weight: float, baseline_decay: float) -> Dict[str, float]:
    """One REINFORCE update of ``controller`` on sampled ``archs`` scored ``scores``.

    ``reward_i = score_i + entropy_weight * entropy_i`` (the entropy as a number, as in ENAS);
    ``baseline = decay * baseline + (1 - decay) * mean(reward)`` (``baseline=None``: the mean reward);
    ``loss = -sum_i (reward_i - baseline) * log_prob_i``; one ``optimizer`` step (the gradients are left
    in ``.grad``).

    Returns:
        ``{"baseline", "loss", "reward", "entropy"}``: the new baseline, the loss, the mean reward and the
        mean entropy (Python floats).
    """
    log_prob, entropy = controller(archs)
    rewards = [float(s) + entropy_weight * float(e) for s, e in zip(scores, entropy.tolist())]
    mean = math.fsum(rewards) / len(rewards)
    baseline = mean if baseline is None else baseline_decay * baseline + (1.0 - baseline_decay) * mean
    advantage = torch.tensor([r - baseline for r in rewards], dtype=log_prob.dtype)
    loss = -(advantage * log_prob).sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return {"baseline": baseline, "loss": float(loss.detach()), "reward": mean,
            "entropy": float(entropy.detach().mean())}


def _tensor_to_json(t: torch.Tensor) -> Dict[str, Any]:
    return {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
            "data": t.detach().reshape(-1).tolist()}


def _tensor_from_json(d: Mapping[str, Any]) -> torch.Tensor:
    return torch.tensor(d["data"], dtype=getattr(torch, d["dtype"])).reshape(d["shape"])


def _is_tensor_json(v: Any) -> bool:
    return isinstance(v, Mapping) and set(v) == {"dtype", "shape", "data"}


class ENASSearcher(BatchSearcher):
    """ENAS's controller as a :class:`~fastnas.search.base.Searcher` (see the module docstring).

    Attributes:
        config: the settings.
        controller: the :class:`ENASController` (CPU, float32).
        optimizer: its Adam.
        baseline: the moving-average baseline (None before the first update).
        rng: draws the samples.
        updates_done: controller updates so far (rounds closed).
        samples: the open round's sampled choice indices (None when no round is open).
        trace: one entry per update: ``{"update", "baseline", "reward", "entropy", "loss", "used"}``.
    """

    def __init__(self, space: Any, config: Optional[ENASConfig] = None) -> None:
        super().__init__(space)
        self.config = config if config is not None else ENASConfig()
        self.choices = space_choices(space)
        self.decode, self.encode = choice_codec(space)
        self._build()

    def _build(self) -> None:
        cfg = self.config
        gen = torch.random.fork_rng(devices=[])
        with gen:  # the initial weights come from the seed, without touching torch's global stream
            torch.manual_seed(cfg.seed)
            self.controller = ENASController(self.choices, cfg.hidden, cfg.temperature, cfg.tanh_constant)
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=cfg.lr)
        self.baseline: Optional[float] = cfg.baseline_init
        self.rng = random.Random(cfg.seed)
        self.updates_done = 0
        self.samples: Optional[List[Tuple[int, ...]]] = None
        self.trace: List[Dict[str, Any]] = []
        self._infeasible: set = set()

    # ---- progress

    @property
    def done(self) -> bool:
        return self.pending is None and self.updates_done >= self.config.updates

    @property
    def rounds_done(self) -> int:
        return self.updates_done

    @property
    def planned_rounds(self) -> int:
        return self.config.updates

    @property
    def total(self) -> int:
        """At most this many are scored (fewer: repeated samples reuse their score)."""
        return self.config.updates * self.config.samples_per_update

    def _generation(self) -> int:
        return self.updates_done

    # ---- rounds

    def _scored(self) -> Dict[Arch, SearchRecord]:
        return {r.arch: r for r in self.history}

    def _propose(self) -> List[Tuple[Arch, str]]:
        cfg = self.config
        constraints = self._constraints(cfg.max_params, cfg.max_flops)
        while self.updates_done < cfg.updates:
            with torch.no_grad():
                samples, _, _ = self.controller.sample(cfg.samples_per_update, self.rng)
            scored = self._scored()
            new: List[Arch] = []
            for index in samples:
                arch = self.decode(index)
                rep = canonical(self.space, arch)
                if rep in scored or rep in new:
                    if rep != arch:
                        self.equivalent += 1
                    continue
                if rep in self._infeasible:
                    continue
                ok, params, flops = constraints.measure(self.space, rep)
                if not ok:
                    self._infeasible.add(rep)
                    continue
                self.measured[rep] = (params, flops)
                new.append(rep)
            self.samples = samples
            if new:
                return [(a, ORIGIN) for a in new]
            self._close_round()  # every sample known already (or infeasible): learn and sample again
        return []

    def _nothing_new(self) -> None:
        pass  # _propose returns nothing only once every update is done

    def _close_round(self) -> None:
        cfg = self.config
        samples, self.samples = self.samples or [], None
        scored = self._scored()
        used: List[Tuple[int, ...]] = []
        rewards: List[float] = []
        for arch in samples:
            record = scored.get(canonical(self.space, self.decode(arch)))
            if record is not None and not record.flagged and math.isfinite(record.score):
                used.append(arch)
                rewards.append(record.score)
            elif cfg.infeasible_reward is not None:
                used.append(arch)
                rewards.append(cfg.infeasible_reward)
        entry: Dict[str, Any] = {"update": self.updates_done, "used": len(used)}
        if used:
            stats = reinforce_step(self.controller, self.optimizer, used, rewards, baseline=self.baseline,
                                   entropy_weight=cfg.entropy_weight, baseline_decay=cfg.baseline_decay)
            self.baseline = stats["baseline"]
            entry.update(stats)
        else:
            logger.info("enas: update %d has no usable sample (all infeasible or flagged); no step",
                        self.updates_done)
        self.trace.append(entry)
        self.updates_done += 1

    # ---- what the plots read

    def policy(self) -> Dict[str, Any]:
        """The policy now: ``greedy`` (the most likely choice per site given the previous ones),
        ``probs`` (each site's option probabilities along the greedy path), ``baseline`` and ``trace``
        (per update: baseline, mean reward, mean entropy, loss, samples used)."""
        index, probs = self.controller.greedy()
        return {"greedy": self.decode(index), "probs": probs, "baseline": self.baseline,
                "trace": [dict(t) for t in self.trace]}

    def arch_log_prob(self, arch: Sequence[int]) -> float:
        """``log p(arch)`` under the policy now."""
        with torch.no_grad():
            log_prob, _ = self.controller([tuple(self.encode(tuple(arch)))])
        return float(log_prob[0])

    # ---- state

    def state_dict(self) -> Dict[str, Any]:
        opt = self.optimizer.state_dict()["state"]
        return {
            "version": _STATE_VERSION,
            "kind": "enas",
            "space": getattr(self.space, "name", None),
            "config": self.config.to_dict(),
            "choices": list(self.choices),
            "controller": {k: _tensor_to_json(v) for k, v in self.controller.state_dict().items()},
            "optimizer": {str(i): {k: _tensor_to_json(v) if torch.is_tensor(v) else v for k, v in s.items()}
                          for i, s in opt.items()},
            "baseline": self.baseline,
            "rng": rng_to_json(self.rng.getstate()),
            "updates_done": self.updates_done,
            "samples": None if self.samples is None else [list(a) for a in self.samples],
            "pending": self._pending_to_json(),
            "history": [r.to_dict() for r in self.history],
            "equivalent": self.equivalent,
            "trace": self.trace,
        }

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        check_state(d, _STATE_VERSION, self.space, "enas")
        if tuple(d["choices"]) != self.choices:
            raise ValueError(f"enas state has choices {tuple(d['choices'])}, the space {self.choices}")
        self.config = ENASConfig.from_dict(d["config"])
        self._build()
        self.controller.load_state_dict({k: _tensor_from_json(v) for k, v in d["controller"].items()})
        opt = self.optimizer.state_dict()
        opt["state"] = {int(i): {k: _tensor_from_json(v) if _is_tensor_json(v) else v for k, v in s.items()}
                        for i, s in d["optimizer"].items()}
        self.optimizer.load_state_dict(opt)
        self.baseline = None if d["baseline"] is None else float(d["baseline"])
        self.rng.setstate(rng_from_json(d["rng"]))
        check_int("state updates_done", d["updates_done"], 0)
        self.updates_done = d["updates_done"]
        self.samples = None if d["samples"] is None else [tuple(int(g) for g in a) for a in d["samples"]]
        self._load_records(d)
        self.trace = [dict(t) for t in d.get("trace", [])]

    def result(self) -> SearchResult:
        return best_of(self.history, self.config.topk, False, self.config.to_dict(), self.equivalent)


def _create_enas(space: Any, config: Union[SearchConfig, ENASConfig, None] = None, **kwargs: Any) -> ENASSearcher:
    if config is None or isinstance(config, ENASConfig):
        cfg = config
    else:
        cfg = ENASConfig.from_search_config(config)
    if kwargs:
        cfg = dataclasses.replace(cfg or ENASConfig(), **kwargs)
    return ENASSearcher(space, cfg)


register_searcher("enas", space_check=space_choices)(_create_enas)
