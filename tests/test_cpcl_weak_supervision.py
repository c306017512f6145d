"""Weak supervision is enforced: CPCL's training sees nothing of a training identity.

* The training pairs and batches carry no identity (type and item checks).
* No CPCL module except the isolated diagnostic mentions identities.
* Training on a disguised copy of the data -- training ids scrambled, every image file and folder
  renamed at random (no identity-bearing prefix such as CUHK-PEDES's ``p<id>_s<n>.jpg``), the
  annotation (image) order shuffled -- gives bit-identical pseudo labels, weights, memories,
  losses and metrics. Only the pixels and the captions are left to carry an identity.

What legitimately depends on the order of the pairs: the random batch sampler (positions, not
pairs), the order images and captions are encoded in, DBSCAN's cluster numbering and border
points, OPLM's ties (lowest index) and the summation order of the centroids. An exact comparison
therefore puts both runs' pairs in one order: right after ``CPCLTrainer.build_train_set`` (the
production data path: annotation parsing, ``build_weak_pairs``) the test's trainer reorders the
pairs into the original annotation order and numbers their image ids by first appearance (the
ids mean only "same image or not", so this keeps every grouping the data path made). Everything
after that -- features, clustering, OPLM, the pair selection, the sampler, the losses and the
memories -- runs unmodified on each copy. A leak through the ids, the file or folder names or
the annotation order before that point changes the pairs' image-id grouping; a leak after it
reads the (renamed) paths: either way the two runs differ. (What no order mapping can show: code
after that point exploiting pair positions, which both runs present in the original order.)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections import defaultdict, deque
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

import cpcl
from cpcl.data import CPCLTrainSet, WeakPair, build_weak_pairs
from cpcl.hooks import CPCLPseudoLabelHook
from cpcl.trainer import CPCLTrainer
from fastreid_ext.engine import build_cfg, seed_everything

from .conftest import REPO, tiny_opts

DEMO = str(REPO / "configs" / "CPCL" / "demo.yml")

# (image path, caption) of every training pair
PairKey = Tuple[str, str]


def _opts(root: str, out: str, epochs: int = 2) -> List[str]:
    """Two clusterings on the tiny data with the real configs' CPCL recipe where it matters for
    a leak: de-duplicated images (OPLM units), image pseudo-label positives, "either" pairs."""
    return tiny_opts(root, out, epochs=epochs) + [
        "MODEL.CPCL.CLUSTER.START_EPOCH", "0",
        "MODEL.CPCL.CLUSTER.DEDUP_IMAGES", "True",
        "MODEL.CPCL.TRAIN_SET", "either",
        "MODEL.CPCL.ICPM.POSITIVES", "image",
        "MODEL.CPCL.DIAGNOSTICS.ENABLED", "True",  # the one module that reads ids runs too
        "TEST.EVAL_PERIOD", str(epochs),
    ]  # fmt: skip


def _hook(trainer) -> CPCLPseudoLabelHook:
    return next(h for h in trainer._hooks if isinstance(h, CPCLPseudoLabelHook))


def test_training_pairs_and_batches_carry_no_identity(synthetic_root):
    cfg = build_cfg(DEMO, ["DATASETS.ROOT", synthetic_root])
    pairs = build_weak_pairs(cfg)
    assert [f.name for f in dataclasses.fields(WeakPair)] == ["image_id", "img_path", "caption"]
    assert not hasattr(pairs[0], "pid")
    train_set = cpcl.CPCLTrainer.build_train_set(cfg)
    assert isinstance(train_set, CPCLTrainSet) and train_set.num_classes == 0
    item = train_set[0]
    assert set(item) == {
        "images",
        "caption_ids",
        "image_labels",
        "text_labels",
        "image_ids",
        "pair_indices",
        "indices",
    }
    assert item["image_labels"] == -1 and item["text_labels"] == -1  # nothing before clustering
    assert cpcl.CPCLTrainer.num_train_classes(cfg) == 0


def test_no_cpcl_module_but_the_diagnostic_mentions_identities():
    pattern = re.compile(r"\bpids?\b|\.pid\b|\"targets\"|train_pid_map|num_train_pids")
    package = Path(cpcl.__file__).parent
    offenders = []
    modules = sorted(package.rglob("*.py"))
    assert package / "modeling" / "meta_arch.py" in modules  # subpackages are searched too
    for path in modules:
        if path.name == "diagnostics.py":
            continue
        if pattern.search(path.read_text()):
            offenders.append(str(path.relative_to(package)))
    assert offenders == []
    assert pattern.search((package / "diagnostics.py").read_text())  # the pattern does match


# ---------------------------------------------------------------------- the disguised copy
def _images_dir(root) -> str:
    """The image folder as the loader spells it (pairs' ``img_path`` = this + os.sep + rel)."""
    return os.path.abspath(os.path.join(os.path.expanduser(str(root)), "CUHK-PEDES", "imgs"))


def _entries(root) -> List[dict]:
    return json.loads((Path(root) / "CUHK-PEDES" / "reid_raw.json").read_text())


def _training_pairs(root) -> List[PairKey]:
    """Every training (image path, caption) in annotation order, read from the json directly."""
    images = _images_dir(root)
    return [
        (images + os.sep + e["file_path"], caption)
        for e in _entries(root)
        if e["split"] == "train"
        for caption in e["captions"]
    ]


def _disguised_copy(root: str, dest: Path, seed: int = 0) -> Dict[str, str]:
    """Copy ``root``'s CUHK-PEDES tree to ``dest`` so that only pixels and captions are left:

    * every training id replaced by a fresh one (a permutation), and every second image of an
      identity given an id of its own (no "same id" structure left);
    * every image (training and evaluation) copied to a random file name in one of a few random
      folders, some nested: no name, prefix or folder follows the identity;
    * the training entries in a random order (the evaluation entries keep their order and ids:
      the evaluation is the same, which the test checks too).

    Returns ``{copy's image path: original image path}`` (as the loader spells them).
    """
    rng = np.random.default_rng(seed)
    src_images, out_images = _images_dir(root), _images_dir(dest)
    entries = _entries(root)

    train_ids = sorted({e["id"] for e in entries if e["split"] == "train"})
    fresh = {old: 10_000 + int(p) for old, p in zip(train_ids, rng.permutation(len(train_ids)))}
    seen: Dict[int, int] = defaultdict(int)
    for e in entries:
        if e["split"] == "train":
            e["id"] = fresh[e["id"]]
            seen[e["id"]] += 1
            if seen[e["id"]] % 2 == 0:
                e["id"] = 20_000 + len(seen) * 10 + seen[e["id"]]

    def token() -> str:
        return "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz0123456789"), 10))

    folders = [token(), token(), f"{token()}/{token()}", f"{token()}/{token()}/{token()}"]
    to_original: Dict[str, str] = {}
    for e in entries:
        rel = f"{folders[int(rng.integers(len(folders)))]}/{token()}.jpg"
        assert out_images + os.sep + rel not in to_original
        to_original[out_images + os.sep + rel] = src_images + os.sep + e["file_path"]
        os.makedirs(os.path.dirname(out_images + os.sep + rel), exist_ok=True)
        shutil.copyfile(src_images + os.sep + e["file_path"], out_images + os.sep + rel)
        e["file_path"] = rel

    shuffled = [entries[k] for k in rng.permutation(len(entries))]
    slots = [k for k, e in enumerate(shuffled) if e["split"] != "train"]
    for k, e in zip(slots, [e for e in entries if e["split"] != "train"]):
        shuffled[k] = e  # evaluation entries back in their order, at random places
    (dest / "CUHK-PEDES" / "reid_raw.json").write_text(json.dumps(shuffled))
    return to_original


def _in_reference_order(
    pairs: Sequence[WeakPair], reference: Sequence[PairKey], to_reference: Dict[str, str]
) -> List[WeakPair]:
    """``pairs`` reordered so that pair k shows ``reference[k]`` (its path mapped by
    ``to_reference``), with image ids renumbered by first appearance (same grouping)."""
    slots: Dict[PairKey, deque] = defaultdict(deque)
    for k, p in enumerate(pairs):
        slots[(to_reference[p.img_path], p.caption)].append(k)
    order = []
    for key in reference:
        if not slots[key]:
            raise AssertionError(f"no training pair shows {key} (or too few of them)")
        order.append(slots[key].popleft())
    assert len(order) == len(pairs), "training pairs that are not in the annotation"
    ids: Dict[int, int] = {}
    return [
        WeakPair(ids.setdefault(pairs[k].image_id, len(ids)), pairs[k].img_path, pairs[k].caption)
        for k in order
    ]


def _reference_order_trainer(reference: Sequence[PairKey], to_reference: Dict[str, str]):
    """CPCLTrainer whose training pairs come in ``reference`` order (see the module docstring)."""

    class ReferenceOrderTrainer(CPCLTrainer):
        @classmethod
        def build_train_set(cls, cfg) -> CPCLTrainSet:
            base = super().build_train_set(cfg)
            pairs = _in_reference_order(base.pairs, reference, to_reference)
            return CPCLTrainSet(
                pairs, base.transform, base.tokenizer, mlm=base.mlm, mlm_prob=base.mlm_prob
            )

    return ReferenceOrderTrainer


def _train(trainer_cls, opts: List[str]):
    cfg = build_cfg(DEMO, opts)
    cfg.freeze()
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    seed_everything(cfg.SEED)  # as tools/train_net.py: the random init depends on it
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


def _records(path: Path) -> List[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_disguised_training_data_give_bit_identical_training(synthetic_root, tmp_path):
    disguised = tmp_path / "disguised"
    to_original = _disguised_copy(synthetic_root, disguised)
    reference = _training_pairs(synthetic_root)

    # the disguise: the original names carry identities (CUHK-PEDES's p<id>_s<n>.jpg), the
    # copy's carry nothing, and its training ids and order are new
    original, copy = _entries(synthetic_root), _entries(disguised)
    names = [e["file_path"] for e in original if e["split"] == "train"]
    assert sum(re.fullmatch(r"train_query/p\d+_s\d+\.jpg", n) is not None for n in names) >= 6
    prefixes = {os.path.basename(n).split("_")[0] for n in names}
    assert len(prefixes) < len(names)  # the name prefix groups images of one identity
    original_parts = {part for e in original for part in re.split(r"[/_.]", e["file_path"])}
    copy_parts = {part for e in copy for part in re.split(r"[/_.]", e["file_path"])}
    assert original_parts & copy_parts == {"jpg"}
    train_ids = {e["id"] for e in original if e["split"] == "train"}
    assert not train_ids & {e["id"] for e in copy if e["split"] == "train"}
    copy_order = [to_original[_images_dir(disguised) + os.sep + e["file_path"]] for e in copy]
    original_order = [_images_dir(synthetic_root) + os.sep + e["file_path"] for e in original]
    assert copy_order != original_order and sorted(copy_order) == sorted(original_order)

    same = {path: path for path, _ in reference}
    a = _train(
        _reference_order_trainer(reference, same), _opts(synthetic_root, str(tmp_path / "a"))
    )
    b = _train(
        _reference_order_trainer(reference, to_original), _opts(str(disguised), str(tmp_path / "b"))
    )
    ha, hb = _hook(a), _hook(b)

    # the data path (annotation parsing, build_weak_pairs) made the same pairs with the same
    # image grouping: only the paths differ, and they show the same images
    pa, pb = ha.base.pairs, hb.base.pairs
    assert len(pa) == len(reference) == len(pb)
    ga, gb = [(p.image_id, p.caption) for p in pa], [(p.image_id, p.caption) for p in pb]
    moved = sum(x != y for x, y in zip(ga, gb))
    assert ga == gb, f"the data path put {moved} of {len(ga)} pairs in other images"
    assert [to_original[p.img_path] for p in pb] == [p.img_path for p in pa]
    assert len({p.image_id for p in pa}) == len({path for path, _ in reference})  # one per image

    # the pseudo labels of every pair, the weights and the memories (model buffers)
    for name in ("image_labels", "text_labels"):
        la, lb = getattr(ha, name), getattr(hb, name)
        assert np.array_equal(la, lb), (
            f"{name} differ on {int((la != lb).sum())} of {len(la)} pairs"
        )
    assert a.model.pmm.image.num_clusters > 0 and a.model.pmm.text.num_clusters > 0
    wa, wb = a.model.state_dict(), b.model.state_dict()
    assert wa.keys() == wb.keys() and "pmm.image.features" in wa
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []
    # every logged loss of every iteration
    assert a.max_iter > 0
    for key in ("loss_pcm", "loss_icpm", "total_loss"):
        la, lb = a.storage.history(key).values(), b.storage.history(key).values()
        assert len(la) == a.max_iter and la == lb, key

    # the clusterings: same counts, and the diagnostic (the one module reading ids) ran in both
    ra, rb = (
        _records(tmp_path / "a" / "cpcl_pseudo_labels.jsonl"),
        _records(tmp_path / "b" / "cpcl_pseudo_labels.jsonl"),
    )
    counts = [k for k in ra[0] if k.endswith(("_clusters", "_outliers", "_after_oplm"))]
    assert len(counts) == 6 and [r["epoch"] for r in ra] == [0, 1]
    assert [[r[k] for k in counts] for r in ra] == [[r[k] for k in counts] for r in rb]
    assert all("image_ari" in r and "text_nmi" in r for r in ra + rb)
    # retrieval is evaluated on the same test split: same model, same metrics
    assert a._last_eval_results == b._last_eval_results and "R1" in a._last_eval_results
