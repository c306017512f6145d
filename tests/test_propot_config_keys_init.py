"""``MODEL.PROPOT.INIT.*`` reach eq. (1): one case per key through
``PropotInitialPrototypeHook`` on the tiny demo model, with a stub feature extractor of known
features (see tests/test_propot_config_keys.py for the method: each check passes with the key's
value and fails without it)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Sequence, Tuple
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from fastreid.modeling.meta_arch import build_model
from torch import nn

import propot.initial_prototypes as init_module
from fastreid_ext.data.datasets.base import TrainPair
from fastreid_ext.engine import build_cfg
from propot import PropotInitialPrototypeHook

from .test_propot_config_keys import DEMO, DIM, NUM_IDS, P, _close, _opts

# Nine images of six identities; images 0, 2, 5 and 8 have two captions, the others one.
CAPTIONS_PER_IMAGE = [2, 1, 2, 1, 1, 2, 1, 1, 2]
IMAGE_PIDS = [0, 0, 1, 2, 3, 3, 4, 5, 5]


@dataclass
class HookRun:
    """What ``PropotInitialPrototypeHook`` stored, from known features: image features [9, d]
    (one per image), text features [P, d] (one per pair); ``batch_sizes``: the extraction batch of
    every extraction."""

    folder: Any  # pathlib.Path: data under folder/data, OUTPUT_DIR folder/out
    model: nn.Module
    pairs: List[TrainPair]
    image_feats: torch.Tensor
    text_feats: torch.Tensor
    batch_sizes: List[int]
    source: str

    def sums(self, normalize_instances=False, normalize_sums=False, once_per_image=False):
        """Eq. (1) written out: per-identity sums over the pairs (or the images, for pt^v)."""
        pt_v, pt_t = torch.zeros(NUM_IDS, DIM), torch.zeros(NUM_IDS, DIM)
        seen = set()
        for k, p in enumerate(self.pairs):
            img, txt = self.image_feats[p.image_id], self.text_feats[k]
            if normalize_instances:
                img, txt = F.normalize(img, dim=0), F.normalize(txt, dim=0)
            if not (once_per_image and p.image_id in seen):
                pt_v[p.pid] += img
            seen.add(p.image_id)
            pt_t[p.pid] += txt
        if normalize_sums:
            pt_v, pt_t = F.normalize(pt_v, dim=1), F.normalize(pt_t, dim=1)
        return pt_v, pt_t

    def stored(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.model.prototypes.initial_v, self.model.prototypes.initial_t


def run_hook(folder, extra: Sequence[str] = ()) -> HookRun:
    """The hook on a fresh tiny model and nine training images, with a stub extractor that
    returns known features of varied norms (so that every normalisation shows)."""
    root = folder / "data"
    cfg = build_cfg(DEMO, _opts(["DATASETS.ROOT", str(root), "OUTPUT_DIR", str(folder / "out")]))
    cfg.merge_from_list(list(extra))
    pairs = []
    for img, (pid, n) in enumerate(zip(IMAGE_PIDS, CAPTIONS_PER_IMAGE)):
        path = f"{root}/CUHK-PEDES/imgs/{img}.jpg"
        pairs += [TrainPair(pid, img, path, f"person {img}, caption {c}") for c in range(n)]
    g = torch.Generator().manual_seed(2)
    image_feats, text_feats = (
        torch.randn(n, DIM, generator=g) * (0.5 + 3 * torch.rand(n, 1, generator=g))  # norms vary
        for n in (len(IMAGE_PIDS), len(pairs))
    )
    batch_sizes: List[int] = []

    def extract(model, pairs_, cfg_, batch_size=0, size=None):
        batch_sizes.append(batch_size)
        return image_feats[[p.image_id for p in pairs_]].clone(), text_feats.clone()

    torch.manual_seed(0)
    model = build_model(cfg)
    hook = PropotInitialPrototypeHook(cfg, None)
    train_set = SimpleNamespace(pairs=pairs, labels=[p.pid for p in pairs])
    hook.trainer = SimpleNamespace(model=model, train_set=train_set)
    with mock.patch.object(init_module, "extract_pair_features", extract):
        hook.before_train()
    return HookRun(folder, model, pairs, image_feats, text_feats, batch_sizes, hook.source)


def _check_stored(r: HookRun, **how: bool) -> None:
    want_v, want_t = r.sums(**how)
    got_v, got_t = r.stored()
    assert _close(got_v, want_v) and _close(got_t, want_t)


def check_cache_dir(r: HookRun) -> None:
    cache = r.folder / "cache"
    assert r.source == "computed" and len(list(cache.glob("propot_initial_prototypes_*.pt"))) == 1
    assert not list((r.folder / "out").glob("propot_initial_prototypes_*"))
    again = run_hook(r.folder, [P + "INIT.CACHE_DIR", str(cache)])  # a fresh model: read back
    assert again.source == "cache" and again.batch_sizes == []
    assert torch.equal(again.stored()[0], r.stored()[0])


def _check_batches(r: HookRun, expected: List[int]) -> None:
    """The batch size each extraction was called with (one process: the total batch)."""
    assert r.batch_sizes == expected


INIT_CASES: Dict[str, Tuple[Callable[[Any], Any], Callable[..., None]]] = {
    # key: (value, given the run's folder; check)
    "INIT.INSTANCE_NORM": (lambda f: True, lambda r: _check_stored(r, normalize_instances=True)),
    "INIT.PROTOTYPE_NORM": (lambda f: True, lambda r: _check_stored(r, normalize_sums=True)),
    "INIT.IMAGE_SUM_OVER": (lambda f: "image", lambda r: _check_stored(r, once_per_image=True)),
    "INIT.CACHE_DIR": (lambda f: str(f / "cache"), check_cache_dir),
    "INIT.IMS_PER_BATCH": (lambda f: 6, lambda r: _check_batches(r, [6])),
}


@pytest.mark.parametrize("key", sorted(INIT_CASES))
def test_initial_prototype_key_reaches_the_hook(key, tmp_path):
    value, check = INIT_CASES[key]
    base = run_hook(tmp_path / "base")
    _check_stored(base)  # the defaults: raw per-pair sums (eq. 1 as written)
    folder = tmp_path / "case"
    check(run_hook(folder, [P + key, str(value(folder))]))
    with pytest.raises(AssertionError):
        check(base)
