"""Retrieval grids, saved rankings, the worst-queries page and training curves."""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fastreid.utils.events import EventStorage
from PIL import Image

from fastreid_ext.data.datasets.base import RetrievalSplit
from fastreid_ext.data.vi.base import INFRARED, VISIBLE, VIEvaluationPlan, VIImage, VIRetrievalTask
from fastreid_ext.engine.setup import build_cfg
from fastreid_ext.evaluation.rankings import RankingFileError, rank_queries, read_ranking
from fastreid_ext.evaluation.retrieval_metrics import retrieval_metrics
from fastreid_ext.evaluation.t2i_evaluator import TextImageEvaluator
from fastreid_ext.evaluation.vi_evaluator import VIReIDEvaluator, _ordered
from fastreid_ext.evaluation.vi_metrics import metrics_from_similarity
from fastreid_ext.tools.visualize_results import main as visualize_main
from fastreid_ext.visualization import TrainingCurvesHook, draw_retrieval_grid, worst_queries
from fastreid_ext.visualization.curves import (
    build_figure,
    extract_curves,
    read_metrics,
    write_training_curves,
)
from fastreid_ext.visualization.grid import (
    BORDER,
    COLORS,
    GAP,
    QUERY_GAP,
    grid_size,
    line_height,
    text_font,
)
from fastreid_ext.visualization.report import visualize_ranking

from .conftest import TOOLS, run_isolated, run_train_net, tiny_opts

H, W = 32, 16
WHITE = (255, 255, 255)


def _images(folder: Path, n: int, prefix: str = "img") -> list[str]:
    """``n`` solid-colour ``W x H`` JPEG files (distinct colours)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{prefix}_{i:03d}.png"
        Image.new("RGB", (W, H), ((37 * i) % 256, 90, (200 - 11 * i) % 256)).save(p)
        paths.append(str(p))
    return paths


def _ap(matches: list[bool]) -> float:
    """Average precision of a full ranked list of match flags (independent reference)."""
    hits = [i for i, m in enumerate(matches) if m]
    return float(np.mean([(n + 1) / (p + 1) for n, p in enumerate(hits)])) if hits else np.nan


def _blank(img: Image.Image, box) -> bool:
    return all(px == WHITE for px in img.crop(box).getdata())


# ------------------------------------------------------------------------------------- grid
@pytest.mark.parametrize("k,cell", [(1, (32, 16)), (4, (32, 16)), (7, (48, 24))])
def test_grid_size_is_a_function_of_k_and_cell_size(k, cell):
    h, w = cell
    lh = line_height(text_font())
    gallery = [Image.new("RGB", (w, h), (128, 128, 128))] * k
    img = draw_retrieval_grid(Image.new("RGB", (w, h)), gallery, [0.5] * k, cell_size=cell)
    cell_w = w + 2 * BORDER
    assert img.size == (
        GAP + cell_w + QUERY_GAP + k * (cell_w + GAP),
        GAP + h + 2 * BORDER + lh + GAP,
    )
    labelled = draw_retrieval_grid("a", gallery, [0.5] * k, labels=["x"] * k, cell_size=cell)
    header = lh + lh // 2  # one caption line and the spacer under it
    assert labelled.size == (GAP + k * (cell_w + GAP), GAP + header + h + 2 * BORDER + 2 * lh + GAP)
    assert labelled.size == grid_size(k, cell, False, 1, 1)
    long = draw_retrieval_grid(" ".join(["word"] * 60), gallery, [0.5] * k, cell_size=cell)
    extra = long.height - (labelled.height - lh)
    assert extra > 0 and extra % lh == 0  # the caption wraps over more lines


def test_grid_borders_mark_correct_items_and_text_is_drawn():
    ch, cw = 48, 64  # wide enough for "#1: 0.900" (narrower cells cut the text)
    draw = functools.partial(draw_retrieval_grid, cell_size=(ch, cw))
    grey = (128, 128, 128)
    gallery = [Image.new("RGB", (W, H), grey) for _ in range(4)]
    query = Image.new("RGB", (W, H), (50, 50, 50))
    correct = [True, False, True, False]
    img = draw(query, gallery, [0.9, 0.8, 0.7, 0.6], correct)
    cell_w, cell_h = cw + 2 * BORDER, ch + 2 * BORDER
    lh = line_height(text_font())
    assert img.getpixel((GAP + 1, GAP + ch // 2)) == COLORS["query"]
    x0 = GAP + cell_w + QUERY_GAP
    for i, ok in enumerate(correct):
        x = x0 + i * (cell_w + GAP)
        assert img.getpixel((x + 1, GAP + ch // 2)) == COLORS["correct" if ok else "wrong"]
        assert img.getpixel((x + cell_w - 2, GAP + 1)) == COLORS["correct" if ok else "wrong"]
        assert img.getpixel((x + cell_w // 2, GAP + cell_h // 2)) == grey  # the image itself
        assert img.getpixel((x + BORDER + 1, GAP + cell_h // 2)) == WHITE  # aspect-ratio padding
        assert not _blank(img, (x, GAP + cell_h + 1, x + cell_w, GAP + cell_h + lh))
    unknown = draw(query, gallery, [0.9, 0.8, 0.7, 0.6])
    assert unknown.getpixel((x0 + 1, GAP + ch // 2)) == COLORS["unknown"]
    # only the changed score changes its text
    other = draw(query, gallery, [0.1, 0.8, 0.7, 0.6], correct)
    text_box = [(x0 + i * (cell_w + GAP), GAP + cell_h + 1) for i in range(4)]
    boxes = [(x, y, x + cell_w, y + lh) for x, y in text_box]
    assert img.crop(boxes[0]).tobytes() != other.crop(boxes[0]).tobytes()
    assert img.crop(boxes[1]).tobytes() == other.crop(boxes[1]).tobytes()
    labelled = draw(query, gallery, [0.9] * 4, labels=["pid 1", "", "pid 3", "pid 4"])
    label_boxes = [(x, y + lh, x + cell_w, y + 2 * lh) for x, y in text_box]
    assert [_blank(labelled, b) for b in label_boxes] == [False, True, False, False]


def test_grid_errors_name_the_missing_path(tmp_path):
    good = _images(tmp_path, 1)[0]
    missing = str(tmp_path / "nope" / "missing.jpg")
    with pytest.raises(FileNotFoundError, match=r"gallery image #2 not found: .*missing\.jpg"):
        draw_retrieval_grid("a caption", [good, missing], [0.2, 0.1])
    with pytest.raises(FileNotFoundError, match=r"query image not found: .*missing\.jpg"):
        draw_retrieval_grid(Path(missing), [good], [0.2])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"not a readable image: .*broken\.jpg"):
        draw_retrieval_grid("a caption", [str(broken)], [0.2])
    with pytest.raises(ValueError, match="correct has 1 items, gallery has 2"):
        draw_retrieval_grid("a caption", [good, good], [0.2, 0.1], [True])


# --------------------------------------------------------------------------------- rankings
def test_rank_queries_matches_the_evaluators_metrics():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(40, 8, generator=g), dim=1)
    gal = torch.nn.functional.normalize(torch.randn(30, 8, generator=g), dim=1)
    gal[7] = gal[3]  # an exact tie: the lower gallery index ranks first
    q_pids, g_pids = torch.randint(0, 10, (40,), generator=g), torch.arange(30) % 10
    ranked = rank_queries(q, gal, q_pids, g_pids, 6, chunk_size=7)
    m = retrieval_metrics(q, gal, q_pids, g_pids, return_topk_indices=6)
    assert torch.equal(ranked.topk, m["topk_indices"])
    assert 100 * ranked.ap.mean().item() == pytest.approx(m["mAP"], rel=1e-12)
    assert 100 * (ranked.first_rank == 1).double().mean().item() == pytest.approx(m["R1"])
    # SYSU rule: camera-2 gallery items are removed for camera-3 queries
    q_cams, g_cams = (
        torch.randint(1, 7, (40,), generator=g),
        torch.randint(1, 7, (30,), generator=g),
    )
    ranked = rank_queries(q, gal, q_pids, g_pids, 30, exclude=(q_cams == 3, g_cams == 2))
    vm = metrics_from_similarity(q @ gal.t(), q_pids, g_pids, q_cams, g_cams, "sysu")
    valid = ~ranked.ap.isnan()
    assert ranked.ap[valid].mean().item() == pytest.approx(vm.mAP, rel=1e-12)
    assert (ranked.first_rank[valid] == 1).double().mean().item() == pytest.approx(vm.cmc[0])
    for i in torch.nonzero(q_cams == 3).flatten().tolist():
        kept = ranked.topk[i][ranked.topk[i] >= 0]
        assert len(kept) == int((g_cams != 2).sum()) and not (g_cams[kept] == 2).any()


def _t2i_evaluator(tmp_path: Path, out: Path, topk: int):
    paths = _images(tmp_path / "gallery", 12)
    g_pids = [i // 3 for i in range(12)]
    q_pids = [0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2, 3, 3, 2, 1, 0]
    split = RetrievalSplit(
        image_pids=g_pids,
        img_paths=paths,
        caption_pids=q_pids,
        captions=[f"caption {i} of person {p} in a red coat" for i, p in enumerate(q_pids)],
        caption_image_ids=[3 * p for p in q_pids],
    )
    cfg = build_cfg("", [])
    cfg.TEST.T2I.SAVE_RANKING_TOPK = topk
    ev = TextImageEvaluator(cfg, split, str(out), "SYN")
    gen = torch.Generator().manual_seed(1)
    ev.process({"indices": torch.arange(12)}, {"image_feats": torch.randn(12, 8, generator=gen)})
    ev.process({"indices": torch.arange(16)}, {"text_feats": torch.randn(16, 8, generator=gen)})
    return ev


def test_t2i_ranking_file_worst_queries_and_grids(tmp_path):
    out = tmp_path / "run"
    results = _t2i_evaluator(tmp_path, out, topk=12).evaluate()  # the whole gallery is saved
    assert results == _t2i_evaluator(tmp_path, tmp_path / "nosave", topk=0).evaluate()
    assert not (tmp_path / "nosave").exists()
    records = read_ranking(str(out / "ranking_SYN.jsonl"))
    assert len(records) == 16 and all(r["kind"] == "t2i" and r["format"] == 2 for r in records)
    aps = []
    for r in records:
        matches = [it["match"] for it in r["ranking"]]
        assert len(matches) == 12 and matches == [it["pid"] == r["pid"] for it in r["ranking"]]
        aps.append(_ap(matches))
        assert r["ap"] == pytest.approx(aps[-1], abs=1e-7)
        assert r["first_match_rank"] == matches.index(True) + 1
    assert 100 * np.mean(aps) == pytest.approx(results["mAP"], abs=1e-5)
    expected = sorted(range(16), key=lambda i: (aps[i], i))[:5]
    assert [r["query"] for r in worst_queries(records, 5)] == expected

    rep = visualize_ranking(str(out / "ranking_SYN.jsonl"), str(tmp_path / "vis"), 4, 3, 5)
    assert [Path(p).name for p in rep.grids] == [
        "query_000000.png",
        "query_000008.png",
        "query_000015.png",
    ]
    page = Path(rep.worst_html).read_text()
    rows = page.split("<tr>")[2:]
    assert len(rows) == 5
    for row, q in zip(rows, expected):
        assert f"<td>{q}</td>" in row and f"{100 * aps[q]:.2f}" in row
        assert f"worst_{rows.index(row) + 1:03d}_query_{q:06d}.png" in row
    grids = [
        Image.open(tmp_path / "vis" / "grids" / f"worst_{n + 1:03d}_query_{q:06d}.png")
        for n, q in enumerate(expected)
    ]
    sheet = Image.open(rep.worst_png)
    assert sheet.size == (max(g.width for g in grids), sum(g.height for g in grids) + 4 * GAP)
    assert grids[0].width == GAP + 4 * (64 + 2 * BORDER + GAP)  # 4 cells of the default size


def _vi_plan(tmp_path: Path) -> VIEvaluationPlan:
    gallery = _images(tmp_path / "vis", 12, "v")
    queries = _images(tmp_path / "ir", 8, "ir")
    images = [VIImage(p, i // 2, 1 + (i % 2), VISIBLE) for i, p in enumerate(gallery)]
    images += [VIImage(p, (i // 2) % 6, 3 if i % 2 else 6, INFRARED) for i, p in enumerate(queries)]
    q = np.arange(12, 20)
    tasks = [
        VIRetrievalTask("all-single", "sysu", q, [np.arange(12), np.arange(0, 12, 2)]),
        VIRetrievalTask("v2i", "regdb", q, [np.arange(12)]),
    ]
    return VIEvaluationPlan(images, tasks)


def test_vi_ranking_files_match_trial_zero_and_draw_query_images(tmp_path):
    plan = _vi_plan(tmp_path)
    cfg = build_cfg("", [])
    cfg.TEST.VI.SAVE_RANKING_TOPK = 12
    ev = VIReIDEvaluator(cfg, plan, "SYS", str(tmp_path / "run"))
    feats = torch.randn(20, 8, generator=torch.Generator().manual_seed(2))
    ev.process({"indices": torch.arange(20)}, {"image_feats": feats})
    ev.evaluate()
    feats = _ordered(ev._parts, 20)  # the features the evaluator ranks
    pids = torch.tensor([x.pid for x in plan.images])
    cams = torch.tensor([x.camid for x in plan.images])
    for task in plan.tasks:
        path = tmp_path / "run" / f"ranking_SYS_{task.name}.jsonl"
        records = read_ranking(str(path))
        q, g = torch.as_tensor(task.query), torch.as_tensor(task.galleries[0])
        ref = metrics_from_similarity(
            feats[q] @ feats[g].t(), pids[q], pids[g], cams[q], cams[g], task.protocol
        )
        aps = [r["ap"] for r in records if r["ap"] is not None]
        assert np.mean(aps) == pytest.approx(ref.mAP, abs=1e-7)
        for r in records:
            assert r["kind"] == "vi" and r["task"] == task.name and r["trial"] == 0
            excluded = task.protocol == "sysu" and r["camid"] == 3
            assert len(r["ranking"]) == (6 if excluded else 12)
            assert all(it["camid"] != 2 for it in r["ranking"]) or not excluded
        rep = visualize_ranking(str(path), str(tmp_path / "vis" / task.name), 3, 2, 2)
        grid = Image.open(rep.grids[0])
        cell_w = 64 + 2 * BORDER
        assert grid.width == GAP + cell_w + QUERY_GAP + 3 * (cell_w + GAP)  # query image + 3
        assert grid.getpixel((GAP + 1, grid.height // 2)) == COLORS["query"]


def test_old_ranking_files_are_read_and_bad_ones_refused(tmp_path):
    paths = _images(tmp_path, 3)
    old = tmp_path / "ranking_OLD.jsonl"  # what the evaluator wrote before format 2
    lines = [
        {
            "query": i,
            "caption": f"caption {i}",
            "pid": i,
            "ranking": [
                {"gallery": j, "img_path": paths[j], "score": 0.5 - 0.1 * j, "match": i == j}
                for j in range(3)
            ],
        }
        for i in range(2)
    ]
    old.write_text("".join(json.dumps(x) + "\n" for x in lines))
    records = read_ranking(str(old))
    assert [(r["format"], r["kind"]) for r in records] == [(1, "t2i"), (1, "t2i")]
    rep = visualize_ranking(str(old), str(tmp_path / "vis"), 3, 5, 5)
    assert len(rep.grids) == 2 and rep.worst_html is None and "format 2" in rep.skipped
    with pytest.raises(ValueError, match="no per-query AP"):
        worst_queries(records, 1)
    del lines[1]["ranking"]
    old.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(RankingFileError, match=r"ranking_OLD\.jsonl:2: missing field 'ranking'"):
        read_ranking(str(old))
    old.write_text(json.dumps({**lines[0], "format": 3}) + "\n")
    with pytest.raises(RankingFileError, match="format 3 is newer"):
        read_ranking(str(old))


# ----------------------------------------------------------------------------------- curves
METRICS = [
    {"iteration": 9, "total_loss": 5.0, "loss_a": 3.0, "loss_b": 2.0, "lr": 0.1, "time": 0.2},
    {"iteration": 19, "total_loss": 4.0, "loss_a": 2.5, "loss_b": 1.5, "lr": 0.1},
    {
        "iteration": 19,
        "R1": 10.0,
        "R5": 30.0,
        "mAP": 12.0,
        "DS/i2t/R1": 8.0,
        "metric": 10.0,
        "epoch": 1,
    },
    {"iteration": 29, "total_loss": 3.0, "loss_a": 2.0, "loss_b": 1.0},
    {"iteration": 29, "total_loss": 2.9, "loss_a": 1.9, "loss_b": 1.0},  # rewritten on resume
    {"iteration": 39, "R1": 20.0, "R5": 40.0, "mAP": 22.0, "DS/i2t/R1": 9.0, "epoch": 2},
]


def test_extract_curves_series_and_figure(tmp_path):
    curves = extract_curves(METRICS)
    assert curves.losses == {
        "loss_a": ([9.0, 19.0, 29.0], [3.0, 2.5, 1.9]),
        "loss_b": ([9.0, 19.0, 29.0], [2.0, 1.5, 1.0]),
        "total_loss": ([9.0, 19.0, 29.0], [5.0, 4.0, 2.9]),
    }
    assert curves.eval_x == "epoch"
    assert curves.evals == {
        "DS/i2t/R1": ([1.0, 2.0], [8.0, 9.0]),
        "R1": ([1.0, 2.0], [10.0, 20.0]),
        "mAP": ([1.0, 2.0], [12.0, 22.0]),
    }
    no_epoch = extract_curves([{k: v for k, v in r.items() if k != "epoch"} for r in METRICS])
    assert no_epoch.eval_x == "iteration" and no_epoch.evals["R1"] == ([19.0, 39.0], [10.0, 20.0])
    ax_loss, ax_eval = build_figure(curves).axes
    assert len(ax_loss.lines) == 3 and len(ax_eval.lines) == 3
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in METRICS))
    png = Image.open(write_training_curves(str(run)))
    assert png.size == (1200, 450) and len(set(png.convert("L").getdata())) > 10
    (run / "metrics.json").write_text('{"iteration": 1}\n{"total_loss": 2}\n')
    with pytest.raises(ValueError, match=r"metrics\.json:2: expected an object with an integer"):
        read_metrics(str(run / "metrics.json"))


def test_curves_hook_records_epochs_and_never_fails(tmp_path, caplog):
    (tmp_path / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in METRICS))
    cfg = build_cfg("", ["OUTPUT_DIR", str(tmp_path)])
    hook = TrainingCurvesHook(cfg)
    with EventStorage(start_iter=39) as storage:
        hook.trainer = SimpleNamespace(epoch=3, storage=storage)
        hook.after_epoch()
        assert storage.latest()["epoch"] == (4, 39)
    hook.after_train()
    assert Image.open(tmp_path / "training_curves.png").size == (1200, 450)
    (tmp_path / "metrics.json").write_text("not json\n")
    with caplog.at_level(logging.WARNING):
        hook.after_train()  # no exception
    assert "Could not draw the training curves" in caplog.text


def test_visualize_results_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        visualize_main(["--help"])
    assert e.value.code == 0 and "--num-queries" in capsys.readouterr().out
    run = tmp_path / "run"
    _t2i_evaluator(tmp_path, run, topk=5).evaluate()
    (run / "metrics.json").write_text("".join(json.dumps(r) + "\n" for r in METRICS))
    assert visualize_main([str(run), "--topk", "3", "--num-queries", "2", "--worst", "4"]) == 0
    out = capsys.readouterr().out
    assert f"2 query grids in {run / 'visualization' / 'SYN' / 'grids'}" in out
    assert str(run / "visualization" / "SYN" / "worst_queries.html") in out
    assert f"training curves: {run / 'training_curves.png'}" in out
    assert len(list((run / "visualization" / "SYN" / "grids").glob("worst_*.png"))) == 4
    # a config file names its OUTPUT_DIR; several runs go to one sub-folder each of --output
    config = tmp_path / "run.yml"
    config.write_text(f"OUTPUT_DIR: {run}\n")
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text(json.dumps(METRICS[0]) + "\n")
    assert visualize_main([str(config), str(other), "--output", str(tmp_path / "vis")]) == 0
    assert (tmp_path / "vis" / "run" / "SYN" / "worst_queries.png").is_file()
    assert (tmp_path / "vis" / "run" / "training_curves.png").is_file()
    assert (tmp_path / "vis" / "other" / "training_curves.png").is_file()
    assert "no ranking_*.jsonl in" in capsys.readouterr().out
    assert visualize_main([str(tmp_path / "absent")]) == 1
    assert "run folder not found" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_run_writes_curves_and_rankings_then_the_tool_draws_them(synthetic_root, tmp_path):
    out = tmp_path / "run"
    run_train_net(
        [
            "--config-file",
            str(TOOLS.parent / "configs" / "Baseline" / "demo.yml"),
            *tiny_opts(synthetic_root, str(out), epochs=2),
            "TEST.T2I.SAVE_RANKING_TOPK",
            "5",
        ]
    )
    assert Image.open(out / "training_curves.png").size == (1200, 450)
    curves = extract_curves(read_metrics(str(out / "metrics.json")))
    assert curves.eval_x == "epoch" and curves.evals["R1"][0] == [1.0, 2.0]
    results = json.loads((out / "results.json").read_text())
    records = read_ranking(str(out / "ranking_CUHKPEDES.jsonl"))
    assert curves.evals["mAP"][1][-1] == pytest.approx(results["mAP"])
    assert 100 * np.mean([r["ap"] for r in records]) == pytest.approx(results["mAP"], abs=1e-4)
    tool = run_isolated([sys.executable, str(TOOLS / "visualize_results.py"), str(out)])
    assert tool.returncode == 0, tool.stderr
    assert "worst queries page" in tool.stdout
    assert len(list((out / "visualization" / "CUHKPEDES" / "grids").glob("query_*.png"))) == 10
