"""``run_search(..., world=...)``: ranks score their share of each round and tell all of it, so every rank's
searcher ends where one process's does; callbacks run on rank 0 only. The ranks are threads here, with
an all-gather built on a barrier (the real one, torch.distributed over Gloo, is tested in tests/cli)."""

from __future__ import annotations

import threading

import pytest
from _toy_space import GeneSpace

from fastnas.search import SearchConfig, create_searcher, run_search

CONFIG = SearchConfig(population=7, generations=3, topk=3, mutations=3, crossovers=3, mutate_prob=0.3, seed=11)


class ThreadWorld:
    """Rank ``rank`` of ``size`` threads sharing one exchange."""

    def __init__(self, rank: int, size: int, shared: dict) -> None:
        self.rank, self.size, self.shared = rank, size, shared

    def all_gather_object(self, obj):
        slots, barrier = self.shared["slots"], self.shared["barrier"]
        slots[self.rank] = obj
        barrier.wait()
        out = list(slots)
        barrier.wait()  # nobody overwrites a slot before everyone has read
        return out


def score(arch) -> float:
    return float(sum(g * 7 ** i for i, g in enumerate(arch)))


def _search(name, world=None, scored=None, events=None):
    searcher = create_searcher(name, GeneSpace(6, 5), CONFIG)

    def fn(arch):
        if scored is not None:
            scored.append(arch)
        return score(arch)

    callback = None if events is None else (lambda event, info: events.append((event, info.get("n_scored"))))
    result = run_search(searcher, fn, callback=callback, world=world)
    return searcher, result


@pytest.mark.parametrize("name", ["evolution", "random"])
@pytest.mark.parametrize("size", [2, 3])
def test_ranks_end_as_one_process(name, size):
    events_one = []
    one, one_result = _search(name, events=events_one)
    shared = {"slots": [None] * size, "barrier": threading.Barrier(size, timeout=30)}
    out, errors = [None] * size, []

    def rank_main(rank):
        try:
            scored, events = [], []
            searcher, result = _search(name, ThreadWorld(rank, size, shared), scored, events)
            out[rank] = (searcher.state_dict(), result, scored, events)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
            shared["barrier"].abort()

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    history = [r.text for r in one_result.history]
    for rank, (state, result, scored, events) in enumerate(out):
        assert state == one.state_dict()
        assert [r.text for r in result.history] == history
        assert [r.score for r in result.history] == [r.score for r in one_result.history]
        assert events == (events_one if rank == 0 else [])  # records and checkpoints: rank 0 alone
    shares = [out[r][2] for r in range(size)]
    assert sum(len(s) for s in shares) == len(history)  # every candidate scored once, by one rank
    rounds = sum(1 for event, _ in events_one if event == "generation")
    assert all(abs(len(a) - len(b)) <= rounds for a in shares for b in shares)  # at most one more per round
    assert len(set().union(*map(set, shares))) == len(history)


def test_one_process_scores_each_candidate_after_the_previous_is_told():
    """A world of one keeps today's order: score, tell, checkpoint, then the next candidate."""
    log = []
    searcher = create_searcher("evolution", GeneSpace(6, 5), CONFIG)

    def fn(arch):
        log.append(("score", searcher.n_scored))
        return score(arch)

    run_search(searcher, fn, callback=lambda event, info: log.append((event, info["n_scored"])))
    firsts = [n for what, n in log if what == "score"]
    assert firsts == list(range(len(firsts)))  # candidate k is scored when k have been told
