"""The report's plots show what result.json says, readably: loss_vs_sigma draws result.json's top 5 with
unique, untruncated labels and one tick per sigma; cell graphs have non-overlapping nodes and labels."""

from __future__ import annotations

import json
import math
import random
from itertools import combinations

import pytest

from _cli_helpers import tiny
from fastnas.cli import main
from fastnas.metrics.combine import Score
from fastnas.run import plots
from fastnas.search.history import make_record
from fastnas.spaces import create_space
from fastnas.spaces.darts import DARTS, DARTS_V1, DARTS_V2
from fastnas.spaces.nb201 import NB201

pytest.importorskip("matplotlib")

SIGMAS = (2e-3, 1e-2, 2e-2)


def test_loss_vs_sigma_draws_the_top_5_of_result_json(tmp_path, monkeypatch):
    drawn = {}
    original = plots.plot_loss_vs_sigma

    def spy(series, sigmas, path, title=""):
        drawn["series"] = list(series)
        return original(series, sigmas, path, title)

    monkeypatch.setattr(plots, "plot_loss_vs_sigma", spy)
    out = tmp_path / "run"
    args = tiny(population=12, generations=2, topk=6, mutations=4, crossovers=4, metric="angle+flatness")
    assert main(["search", *args, "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert "loss_vs_sigma" in result["plots"] and (out / result["plots"]["loss_vs_sigma"]).exists()
    top5 = [r["text"] for r in result["topk"][:5]]
    assert [s.text for s in drawn["series"]] == top5
    assert [s.rank for s in drawn["series"]] == [1, 2, 3, 4, 5]
    assert [s.score for s in drawn["series"]] == [r["score"] for r in result["topk"][:5]]
    space = create_space("nb201")
    assert len({space.canonical(space.parse(t)) for t in top5}) == 5  # five classes, not five copies


def _records(texts, space):
    out = []
    for i, text in enumerate(texts):
        losses = {f"loss@{s:g}": 2.0 + 0.01 * (i // 2) + s for s in SIGMAS}  # pairs of equal curves
        out.append(make_record(space, space.parse(text), Score(value=1.0 - 0.1 * i, parts=losses), 0, "random",
                               measured=(1, 1.0)))
    return out


# Five cells sharing a 61-character prefix (the old legend cut labels at 45 characters).
PREFIX = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|"
SHARED = [PREFIX + tail for tail in ("nor_conv_3x3~1|nor_conv_3x3~2|", "nor_conv_3x3~1|nor_conv_1x1~2|",
                                     "nor_conv_3x3~1|avg_pool_3x3~2|", "nor_conv_1x1~1|nor_conv_3x3~2|",
                                     "avg_pool_3x3~1|nor_conv_3x3~2|")]


def test_loss_vs_sigma_labels_are_unique_and_the_texts_complete(tmp_path):
    space = NB201()
    series = plots.loss_vs_sigma_series(_records(SHARED + SHARED[:1], space), SIGMAS)
    assert [s.text for s in series] == SHARED  # the first five, in top-k order
    fig = plots.plot_loss_vs_sigma(series, SIGMAS, tmp_path / "l.png")
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [s.label for s in series] and len(set(labels)) == 5
    assert all("..." not in label for label in labels)
    listing = "".join(t.get_text() for t in fig.texts).replace("\n", "").replace(" ", "")
    for text in SHARED:
        assert text in listing  # every architecture in full
    # one tick per sigma, labelled as given, no minor tick labels between them
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.002", "0.01", "0.02"]
    assert not [t for t in ax.get_xticklabels(minor=True) if t.get_text()]
    # equal curves stay distinguishable: distinct markers and line styles, slightly shifted
    lines = ax.get_lines()
    assert len({line.get_marker() for line in lines}) == 5 and len({line.get_linestyle() for line in lines}) >= 4
    assert len({tuple(line.get_xdata()) for line in lines}) == 5
    assert (tmp_path / "l.png").stat().st_size > 5000


def test_loss_vs_sigma_wraps_long_texts(tmp_path):
    space = DARTS()
    rng = random.Random(0)
    records = [make_record(space, space.sample(rng), Score(value=float(-i), parts={f"loss@{s:g}": s for s in SIGMAS}),
                           0, "random", measured=(1, 1.0)) for i in range(3)]
    series = plots.loss_vs_sigma_series(records, SIGMAS)
    fig = plots.plot_loss_vs_sigma(series, SIGMAS, tmp_path / "d.png")
    lines = fig.texts[0].get_text().split("\n")
    assert len(lines) > 3 and max(map(len, lines)) <= 110
    listing = "".join(line[5:] for line in lines).replace(" ", "")
    assert all(s.text.replace(" ", "") in listing for s in series)


def _boxes_apart(a, b):
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


@pytest.mark.parametrize("space, arch", [
    (DARTS(), DARTS_V2), (DARTS(), DARTS_V1),
    (NB201(), ("nor_conv_3x3",) * 6),
    (NB201(), ("nor_conv_1x1", "skip_connect", "nor_conv_3x3", "avg_pool_3x3", "avg_pool_3x3", "avg_pool_3x3")),
])
def test_cell_graph_layout_is_layered_without_overlaps(tmp_path, space, arch):
    fig = plots.plot_cell(space, arch, tmp_path / "cell.png")
    assert (tmp_path / "cell.png").stat().st_size > 5000
    for graph in space.cell_graph(arch):
        pos = plots.cell_layout(graph)
        assert set(pos) == set(graph.nodes)
        for (a, pa), (b, pb) in combinations(pos.items(), 2):
            assert math.dist(pa, pb) > 3 * plots._RADIUS, (a, b)
        for src, dst, _ in graph.edges:
            assert pos[src][0] < pos[dst][0]  # left to right
        labels = plots.edge_labels(graph, pos)
        assert len(labels) == sum(1 for e in graph.edges if e[2])
        for (ta, _, ba), (tb, _, bb) in combinations(labels, 2):
            assert _boxes_apart(ba, bb), (ta, tb)
        for _, _, box in labels:
            for x, y in pos.values():
                node = (x - plots._RADIUS, y - plots._RADIUS, x + plots._RADIUS, y + plots._RADIUS)
                assert _boxes_apart(box, node)
    assert len(fig.axes) == len(space.cell_graph(arch))


def test_cell_graph_of_random_darts_cells_renders(tmp_path):
    space = DARTS()
    rng = random.Random(5)
    for k in range(5):
        arch = space.sample(rng)
        plots.plot_cell(space, arch, tmp_path / f"c{k}.png")
        for graph in space.cell_graph(arch):
            labels = plots.edge_labels(graph, plots.cell_layout(graph))
            overlapping = sum(not _boxes_apart(a[2], b[2]) for a, b in combinations(labels, 2))
            assert overlapping <= 1
