"""tools/search.py: results against a direct computation, ground truth, outputs, bad input.

A tiny random demo Baseline and the gallery index of the synthetic test split (8 identities x 3
images) are built once in-process; the CLI's ``main`` runs in-process too. The reference scores
are computed independently of the index: ``encode_texts(captions) @ encode_images(paths).T``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from fastreid_ext.data import CUHKPEDES
from fastreid_ext.inference import GalleryIndex
from fastreid_ext.search import Query, pick_evenly, read_queries_file
from fastreid_ext.search.output import draw_result
from fastreid_ext.search.records import Hit, SearchResult
from fastreid_ext.tools import search as search_tool
from fastreid_ext.tools import serve_search as serve_tool

from .search_helpers import build_index, build_vi_index, demo_opts, tiny_checkpoint

CAPTIONS = ["a man in a red shirt and black pants", "a woman with a blue backpack"]


@pytest.fixture(scope="module")
def setup(synthetic_root, tmp_path_factory):
    """(index folder, predictor, weights, gallery features [N, D] encoded without the index)."""
    folder = tmp_path_factory.mktemp("search")
    weights = tiny_checkpoint(str(folder / "model.pth"), demo_opts(synthetic_root))
    index_dir = str(folder / "index")
    predictor = build_index(weights, synthetic_root, index_dir)
    index = GalleryIndex.load(index_dir)
    gallery = predictor.encode_images(index.paths, progress=False)
    return index_dir, predictor, weights, gallery, index


def run(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``search.py argv`` run in-process."""
    try:
        code = search_tool.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def reference(setup, captions, k):
    """Top-k (scores [Q, k], ids [Q, k]) of ``captions`` by the direct computation."""
    _, predictor, _, gallery, _ = setup
    scores = predictor.encode_texts(captions, progress=False) @ gallery.T
    return torch.topk(scores, k, dim=1)


def test_scores_order_and_table_match_direct_computation(setup, capsys, tmp_path):
    index_dir, _, _, _, index = setup
    out_json = tmp_path / "out" / "results.json"
    code, out, err = run(capsys, "--index", index_dir, *CAPTIONS, "--topk", 5, "--json", out_json)
    assert code == 0, err
    doc = json.loads(out_json.read_text())
    ref_scores, ref_ids = reference(setup, CAPTIONS, 5)
    assert [r["query"]["text"] for r in doc["results"]] == CAPTIONS
    for qi, result in enumerate(doc["results"]):
        hits = result["hits"]
        assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
        assert [h["gallery_index"] for h in hits] == ref_ids[qi].tolist()
        assert [h["score"] for h in hits] == pytest.approx(ref_scores[qi].tolist(), abs=1e-5)
        assert [h["path"] for h in hits] == [index.paths[i] for i in ref_ids[qi].tolist()]
        assert [h["pid"] for h in hits] == [index.pids[i] for i in ref_ids[qi].tolist()]
        assert all(h["correct"] is None for h in hits)  # no ground truth for free text
    assert doc["index_fingerprint"] == doc["model_fingerprint"] == index.meta["fingerprint"]
    # the printed table: rank, score, pid, path for every hit of every query, in order
    rows = re.findall(r"^(\d+)\s+(-?\d\.\d{4})\s+(\d+)\s+(\S+)\s*$", out, flags=re.M)
    expected = [
        (str(h["rank"]), f"{h['score']:.4f}", str(h["pid"]), h["path"])
        for r in doc["results"]
        for h in r["hits"]
    ]
    assert rows == expected
    assert "correct" not in out


def test_from_split_marks_hits_by_identity(setup, synthetic_root, capsys, tmp_path):
    index_dir, _, _, _, index = setup
    split = CUHKPEDES(root=synthetic_root).test
    out_json = tmp_path / "split.json"
    code, out, err = run(
        capsys, "--index", index_dir, "--from-split", "--num-queries", 4, "--topk", 3,
        "--json", out_json,
    )  # fmt: skip
    assert code == 0, err
    picked = pick_evenly(split.num_captions, 4)
    assert len(picked) == 4 and len({split.caption_pids[i] for i in picked}) >= 3
    doc = json.loads(out_json.read_text())
    assert [r["query"]["text"] for r in doc["results"]] == [split.captions[i] for i in picked]
    ref_scores, ref_ids = reference(setup, [split.captions[i] for i in picked], 3)
    top1 = 0
    for qi, (i, result) in enumerate(zip(picked, doc["results"])):
        assert result["query"]["pid"] == split.caption_pids[i]
        assert [h["gallery_index"] for h in result["hits"]] == ref_ids[qi].tolist()
        truth = [split.image_pids[g] == split.caption_pids[i] for g in ref_ids[qi].tolist()]
        assert [h["correct"] for h in result["hits"]] == truth
        top1 += truth[0]
    assert f"correct at rank 1 {top1}/4" in out
    assert re.search(r"^1\s+\S+\s+\d+\s+(yes|no)\s+/", out, flags=re.M)


def test_queries_file_with_and_without_pids(setup, capsys, tmp_path):
    index_dir, _, _, _, index = setup
    pid = index.pids[0]
    qfile = tmp_path / "q.txt"
    qfile.write_text(f"{pid}\t{CAPTIONS[0]}\n\n{CAPTIONS[1]}\n", encoding="utf-8")
    queries = read_queries_file(str(qfile))
    assert [(q.text, q.pid, q.source) for q in queries] == [
        (CAPTIONS[0], pid, "q.txt:1"),
        (CAPTIONS[1], None, "q.txt:3"),
    ]
    out_json = tmp_path / "f.json"
    code, _, err = run(capsys, "--index", index_dir, "--queries-file", qfile, "--json", out_json)
    assert code == 0, err
    first, second = json.loads(out_json.read_text())["results"]
    assert [h["correct"] for h in first["hits"]] == [h["pid"] == pid for h in first["hits"]]
    assert all(h["correct"] is None for h in second["hits"])
    assert len(first["hits"]) == 10  # default --topk
    bad = tmp_path / "bad.txt"
    bad.write_text("ok caption\nseven\ta caption\n", encoding="utf-8")
    code, _, err = run(capsys, "--index", index_dir, "--queries-file", bad)
    assert code == 2 and f"{bad}:2" in err and "'seven'" in err


def test_grids_show_each_result(setup, capsys, tmp_path):
    index_dir = setup[0]
    grid, grid_dir = tmp_path / "all.png", tmp_path / "grids"
    out_json = tmp_path / "g.json"
    code, _, err = run(
        capsys, "--index", index_dir, *CAPTIONS, "--from-split", "--num-queries", 1,
        "--topk", 4, "--grid", grid, "--grid-dir", grid_dir, "--json", out_json,
    )  # fmt: skip
    assert code == 0, err
    files = sorted(os.listdir(grid_dir))
    assert files == ["query_001.png", "query_002.png", "query_003.png"]
    doc = json.loads(out_json.read_text())
    stacked = Image.open(grid).convert("RGB")
    y = 0
    for name, rec in zip(files, doc["results"]):
        single = Image.open(grid_dir / name).convert("RGB")
        # each file is the grid of its JSON record (query text, paths, scores, correct flags)
        result = SearchResult(Query(**rec["query"]), [Hit(**h) for h in rec["hits"]])
        assert list(single.getdata()) == list(draw_result(result).getdata())
        # ... and the stacked image holds it, top to bottom
        crop = stacked.crop((0, y, single.width, y + single.height))
        assert list(crop.getdata()) == list(single.getdata())
        y += single.height + 8
    assert stacked.height == y - 8
    assert doc["results"][2]["hits"][0]["correct"] is not None  # the split query has truth


def test_fingerprint_mismatch_is_refused_unless_allowed(setup, synthetic_root, capsys, tmp_path):
    index_dir, _, _, _, index = setup
    other = tiny_checkpoint(str(tmp_path / "other.pth"), demo_opts(synthetic_root), seed=1)
    code, _, err = run(capsys, "--index", index_dir, "--weights", other, CAPTIONS[0])
    assert code == 2
    assert "fingerprint" in err and index.meta["fingerprint"] in err and "--allow-mismatch" in err
    out_json = tmp_path / "m.json"
    code, _, err = run(
        capsys, "--index", index_dir, "--weights", other, CAPTIONS[0], "--allow-mismatch",
        "--json", out_json,
    )  # fmt: skip
    assert code == 0, err
    doc = json.loads(out_json.read_text())
    assert doc["weights"] == index.meta["weights"]  # the index's record, not the model used
    assert doc["model_fingerprint"] != doc["index_fingerprint"] == index.meta["fingerprint"]


def test_bad_input_is_reported_with_its_name(setup, capsys, tmp_path):
    index_dir = setup[0]
    missing = tmp_path / "no-index"
    cases = [
        (["--index", missing, "x"], [str(missing), "does not exist"]),
        (["--index", tmp_path, "x"], ["meta.json", "missing"]),
        (["--index", index_dir], ["no query"]),
        (["--index", index_dir, "x", "--topk", 0], ["--topk must be at least 1"]),
        (["--index", index_dir, "--queries-file", missing], ["queries file not found", "no-index"]),
        (["--index", index_dir, "  "], ["query argument 1 is empty"]),
        (["--index", index_dir, "x", "--modality", "infrared"], ["--query-image and --modality"]),
        (["--index", index_dir, "x", "--opts", "MODEL.DEVICE"], ["KEY VALUE pairs"]),
        (["--index", index_dir, "--from-split", "train"], ["unknown split 'train'"]),
    ]
    img = Image.new("RGB", (32, 64))
    img.save(tmp_path / "q.jpg")
    cases.append(
        (
            ["--index", index_dir, "--query-image", tmp_path / "q.jpg", "--modality", "visible"],
            ["is an image", "text-image index takes captions"],
        )
    )
    for argv, words in cases:
        code, out, err = run(capsys, *argv)
        assert code == 2, (argv, out, err)
        for word in words:
            assert word in err, (argv, err)


def test_from_split_needs_a_dataset_index(setup, tmp_path, capsys):
    """An index of a plain folder has no split queries (and no identities)."""
    _, predictor, _, _, index = setup
    from fastreid_ext.inference import build_gallery_index

    folder = Path(index.paths[0]).parent
    build_gallery_index(predictor, str(folder), progress=False).save(str(tmp_path / "idx"))
    code, _, err = run(capsys, "--index", tmp_path / "idx", "--from-split")
    assert code == 2 and "built from a folder source" in err
    code, out, err = run(capsys, "--index", tmp_path / "idx", CAPTIONS[0], "--topk", 2)
    assert code == 0, err
    assert re.findall(r"^(\d)\s+-?\d\.\d{4}\s+/\S+\s*$", out, flags=re.M) == ["1", "2"]  # no pid


@pytest.mark.parametrize("tool", [search_tool, serve_tool])
def test_help(tool, capsys):
    with pytest.raises(SystemExit) as exc:
        tool.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--index", "--config-file", "--weights", "--allow-mismatch", "--topk"):
        assert flag in text
    assert "output/demo/" in text


def test_visible_infrared_query_images(tmp_path, capsys):
    """Infrared query images retrieve visible images only, unless --same-modality; split
    queries are the dataset's infrared query images with their identities."""
    index_dir, p, index = build_vi_index(str(tmp_path))
    query = next(x for x, m in zip(index.paths, index.modality) if m == "infrared")
    visible = [i for i, m in enumerate(index.modality) if m == "visible"]
    gallery = p.encode_images([index.paths[i] for i in visible], "visible", progress=False)
    ref = torch.topk((p.encode_images([query], "infrared", progress=False) @ gallery.T)[0], 3)
    out = tmp_path / "vi.json"
    argv = ["--index", index_dir, "--query-image", query, "--modality", "infrared", "--topk", 3]
    code, _, err = run(capsys, *argv, "--json", out)
    assert code == 0, err
    hits = json.loads(out.read_text())["results"][0]["hits"]
    assert [h["gallery_index"] for h in hits] == [visible[i] for i in ref.indices.tolist()]
    assert [h["score"] for h in hits] == pytest.approx(ref.values.tolist(), abs=1e-5)
    code, _, err = run(capsys, *argv, "--same-modality", "--json", out)
    assert code == 0, err
    best = json.loads(out.read_text())["results"][0]["hits"][0]
    assert best["path"] == query and best["score"] == pytest.approx(1.0, abs=1e-5)  # itself
    code, _, err = run(capsys, "--index", index_dir, "--from-split", "--num-queries", 0,
                       "--json", out, "--topk", 2)  # fmt: skip
    assert code == 0, err
    results = json.loads(out.read_text())["results"]
    infrared = [i for i, m in enumerate(index.modality) if m == "infrared"]
    assert sorted(r["query"]["image"] for r in results) == sorted(index.paths[i] for i in infrared)
    for r in results:
        assert r["query"]["modality"] == "infrared"
        assert r["query"]["pid"] == index.pids[index.paths.index(r["query"]["image"])]
        assert all(index.modality[h["gallery_index"]] == "visible" for h in r["hits"])
        assert [h["correct"] for h in r["hits"]] == [
            h["pid"] == r["query"]["pid"] for h in r["hits"]
        ]
    code, _, err = run(capsys, "--index", index_dir, "a man in red")
    assert code == 2 and "visible-infrared index takes query images" in err
    code, _, err = run(capsys, "--index", index_dir, "--query-image", query)
    assert code == 2 and "--query-image and --modality (visible or infrared) go together" in err
