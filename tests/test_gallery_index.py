"""Gallery indexes: exact search is the brute-force top k, approximate indexes find the exact
neighbours on clustered data, folders round-trip and corrupted or mixed folders are refused."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from fastreid_ext.inference import GalleryIndex, IndexFolderError, build_faiss_index
from fastreid_ext.inference.faiss_index import default_nlist
from fastreid_ext.inference.sources import folder_source, paths_source
from fastreid_ext.inference.synthetic import clustered_gallery


def _index(feats: np.ndarray, kind: str = "flat", **params) -> GalleryIndex:
    index, info = build_faiss_index(feats, kind, show_progress=False, **params)
    n = feats.shape[0]
    paths = [f"/data/g/{i:05d}.jpg" for i in range(n)]
    meta = {"fingerprint": "0123456789abcdef", "method": "Test", "params": info}
    return GalleryIndex(
        index,
        paths,
        ["/data/g"],
        meta,
        pids=list(range(n)),
        camids=[i % 6 for i in range(n)],
        modality=["visible" if i % 2 else "infrared" for i in range(n)],
    )


def _recall(approx: torch.Tensor, exact: torch.Tensor) -> float:
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact)]
    return float(np.mean(hits)) / exact.shape[1]


@pytest.fixture(scope="module")
def clustered():
    gallery, ids, queries, query_ids = clustered_gallery(6000, 64, 200, seed=3)
    return gallery, queries


def test_synthetic_features_are_clustered():
    gallery, ids, queries, query_ids = clustered_gallery(3000, 128, 50, seed=0)
    assert gallery.shape == (3000, 128) and gallery.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(gallery, axis=1), 1.0, rtol=1e-5)
    same = gallery[ids == ids[0]]
    assert len(same) >= 1 and ids.max() + 1 < 3000  # identities with several images
    sims = queries @ gallery.T
    own = np.array([sims[i, ids == q].mean() for i, q in enumerate(query_ids)])
    # cosine of a new photo with its identity's images: 1 / (1 + image_spread^2) = 0.61
    assert own.mean() == pytest.approx(1 / 1.64, abs=0.03)
    assert np.median(sims) < 0.1  # most of the gallery (other groups) is unrelated


def test_exact_search_is_brute_force_topk():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((500, 32)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    queries = torch.nn.functional.normalize(torch.randn(20, 32), dim=1)
    index = _index(feats)
    scores, ids = index.search(queries, 7)
    assert scores.dtype == torch.float32 and ids.dtype == torch.int64 and ids.shape == (20, 7)
    ref_scores, ref_ids = (queries @ torch.from_numpy(feats).t()).topk(7, dim=1)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=1e-5)
    assert torch.equal(ids, ref_ids)
    _, all_ids = index.search(queries.numpy(), 10_000)  # k beyond N: the whole gallery
    assert all_ids.shape == (20, 500) and sorted(all_ids[0].tolist()) == list(range(500))
    with pytest.raises(ValueError, match="dimension 16, the index 32"):
        index.search(torch.zeros(1, 16), 3)
    with pytest.raises(ValueError, match="nprobe applies to an 'ivf' index"):
        index.search(queries, 3, nprobe=4)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_the_exact_neighbours(kind, clustered):
    gallery, queries = clustered
    _, exact = _index(gallery).search(queries, 10)
    index = _index(gallery, kind)
    scores, ids = index.search(queries, 10)
    assert _recall(ids, exact) >= 0.95
    # scores are exact inner products of the rows returned
    torch.testing.assert_close(
        scores,
        torch.from_numpy((queries[:, None, :] * gallery[ids.numpy()]).sum(-1)),
        atol=1e-5,
        rtol=0,
    )
    # the search parameter matters: a minimal search misses neighbours on this data
    fewer = {"nprobe": 1} if kind == "ivf" else {"ef_search": 10}
    _, rough = index.search(queries, 10, **fewer)
    assert _recall(rough, exact) < _recall(ids, exact) - 0.05
    if kind == "ivf":
        assert index.meta["params"]["nlist"] == default_nlist(6000) == 310


def test_save_load_round_trip(tmp_path, clustered):
    gallery, queries = clustered
    for kind in ("flat", "ivf", "hnsw"):
        index = _index(gallery[:800], kind)
        folder = tmp_path / kind
        index.save(str(folder))
        assert sorted(os.listdir(folder)) == ["index.faiss", "meta.json", "rows.json"]
        loaded = GalleryIndex.load(str(folder))
        assert loaded.kind == kind and len(loaded) == 800 and loaded.dim == 64
        assert loaded.paths == index.paths and loaded.roots == ["/data/g"]
        assert loaded.pids == index.pids and loaded.camids == index.camids
        assert loaded.modality == index.modality
        assert loaded.meta["fingerprint"] == "0123456789abcdef"
        assert loaded.meta["params"] == index.meta["params"]
        for a, b in zip(index.search(queries, 5), loaded.search(queries, 5)):
            assert torch.equal(a, b)
        assert torch.equal(loaded.features([3, 1]), torch.from_numpy(gallery[[3, 1]]))


def test_corrupted_or_mixed_folders_are_refused(tmp_path, clustered):
    gallery, _ = clustered
    a, b = tmp_path / "a", tmp_path / "b"
    _index(gallery[:300]).save(str(a))
    _index(gallery[:300]).save(str(b))  # same content, another save

    def broken(name: str, change) -> str:
        folder = tmp_path / f"broken_{name}_{len(os.listdir(tmp_path))}"
        shutil.copytree(a, folder)
        change(folder)
        return str(folder)

    def flip_byte(folder, name="rows.json"):
        path = folder / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))

    cases = {
        "rows.json": lambda f: flip_byte(f),
        "index.faiss": lambda f: flip_byte(f, "index.faiss"),
        "truncated index.faiss": lambda f: (f / "index.faiss").write_bytes(
            (f / "index.faiss").read_bytes()[:-100]
        ),
        "mixed rows.json": lambda f: shutil.copy(b / "rows.json", f / "rows.json"),
        "missing meta.json": lambda f: (f / "meta.json").unlink(),
    }
    for case, change in cases.items():
        name = case.split()[-1]
        with pytest.raises(IndexFolderError, match=name.replace(".", r"\.")):
            GalleryIndex.load(broken(case, change))
    # a meta.json that disagrees with a consistent index file: row count named
    folder = broken("meta", lambda f: None)
    meta = json.loads((tmp_path / folder / "meta.json").read_text())
    meta["ntotal"] = 299
    (tmp_path / folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IndexFolderError, match="index.faiss.*299"):
        GalleryIndex.load(folder)
    with pytest.raises(IndexFolderError, match="does not exist"):
        GalleryIndex.load(str(tmp_path / "nowhere"))


def test_folder_sources_are_recursive_and_filtered(tmp_path):
    for rel in ("b/2.JPG", "a/x/1.png", "a/0.jpeg", "notes.txt", "c/skip.gif", "top.bmp"):
        path = tmp_path / "imgs" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    src = folder_source(str(tmp_path / "imgs"))
    root = str(tmp_path / "imgs")
    expected = ["a/0.jpeg", "a/x/1.png", "b/2.JPG", "top.bmp"]
    assert src.paths == [os.path.join(root, p) for p in expected]
    assert src.roots == [root] and src.pids is None and src.modality is None
    with pytest.raises(FileNotFoundError, match="missing"):
        folder_source(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="holds no image"):
        folder_source(str(tmp_path / "imgs" / "c"))
    listed = paths_source([src.paths[2], src.paths[1], src.paths[0]])
    assert listed.roots == [os.path.join(root, "a"), os.path.join(root, "b")]
