"""CPCL's meta-architecture wired to its formulas: on a hand-made batch, ``loss_pcm`` and
``loss_icpm`` of ``CPCLT2I`` equal PCM and ICPM written out here (README "Losses") from the
encoder outputs with the *intended* inputs, never through ``hcm_losses``:

* PCM: cross-entropy of ``normalize(f) @ M^T / tau`` against the pseudo label; intra-modal
  ``v -> M^v`` (image labels) and ``t -> M^t`` (text labels), cross-modal ``t -> M^v`` (image
  labels) and ``v -> M^t`` (text labels); mean of the terms; the memories of *before* the step's
  momentum update.
* ICPM: ``p_ij = softmax_j(cos(v_i, t_j) / tau)``, ``q_ij = y_ij / sum_k y_ik``, ``mean_i KL(p_i ||
  q_i)`` in both directions, ``y_ij = 1`` for ``i == j``, for captions of the same image and for
  equal image pseudo labels (``ICPM.POSITIVES image``; ``-1`` never matches).

Each test also checks that the plausible mis-wirings (memories swapped, the text labels as the
target of ``t -> M^v``, the updated memories, text-label positives) give another value.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from fastreid.config import get_cfg
from fastreid.modeling.meta_arch import build_model

import cpcl  # noqa: F401  (registers CPCLT2I and MODEL.CPCL)
from fastreid_ext.config import add_fastreid_ext_config, apply_config_extensions
from fastreid_ext.text import ClipTokenizer

from .conftest import REPO

DEMO = str(REPO / "configs" / "CPCL" / "demo.yml")
PCM_TAU, PCM_WEIGHT, ICPM_TAU, ICPM_WEIGHT = 0.1, 0.6, 0.3, 0.8
K = 4  # clusters per memory: the same for both, so a swap computes (another) value


def _model(pcm_name="hybrid"):
    cfg = get_cfg()
    add_fastreid_ext_config(cfg)
    apply_config_extensions(cfg)
    cfg.merge_from_file(DEMO)
    cfg.merge_from_list(
        [
            "MODEL.CPCL.PCM.NAME", pcm_name,
            "MODEL.CPCL.PCM.TAU", str(PCM_TAU),
            "MODEL.CPCL.PCM.WEIGHT", str(PCM_WEIGHT),
            "MODEL.CPCL.ICPM.TAU", str(ICPM_TAU),
            "MODEL.CPCL.ICPM.WEIGHT", str(ICPM_WEIGHT),
            "MODEL.CPCL.ICPM.POSITIVES", "image",
            "MODEL.CPCL.PMM.UPDATE.ENABLED", "True",
            "MODEL.T2I.LOSSES", "[]",
        ]
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg).train()
    g = torch.Generator().manual_seed(2)
    d = model.backbone.embed_dim
    model.reset_memories(
        F.normalize(torch.randn(K, d, generator=g), dim=1),
        F.normalize(torch.randn(K, d, generator=g), dim=1),
    )
    return model


def _batch():
    g = torch.Generator().manual_seed(0)
    caps = [
        "a man in a red shirt",
        "a man wearing red",
        "a woman with a blue bag",
        "a person in black shoes",
        "a girl in a white dress",
        "a boy in green shorts",
        "a woman with long hair",
        "a man with a backpack",
    ]
    return {
        "images": torch.rand(8, 3, 64, 32, generator=g) * 255,
        "caption_ids": ClipTokenizer()(caps),
        # pairs 0 and 1 show the same (outlier) image; outliers (-1) in both modalities; labels chosen so
        # that image and text labels disagree on several pairs
        "image_ids": torch.tensor([10, 10, 11, 12, 13, 14, 15, 16]),
        "image_labels": torch.tensor([-1, -1, 1, -1, 3, 2, 0, 1]),
        "text_labels": torch.tensor([2, -1, 0, 1, 1, 3, 2, 0]),
    }


def _ce(x, memory, labels, tau):
    """Mean over labelled samples of -log softmax_k(cos(x, M_k) / tau)[label], written out."""
    terms = []
    for f, y in zip(x, labels.tolist()):
        if y < 0:
            continue
        logits = torch.stack([F.normalize(f, dim=0) @ m for m in memory]) / tau
        terms.append(torch.logsumexp(logits, dim=0) - logits[y])
    return sum(terms) / len(terms)


def _pcm(v, t, yv, yt, mv, mt, name):
    intra = [_ce(v, mv, yv, PCM_TAU), _ce(t, mt, yt, PCM_TAU)]  # v->M^v, t->M^t
    cross = [_ce(t, mv, yv, PCM_TAU), _ce(v, mt, yt, PCM_TAU)]  # t->M^v, v->M^t
    terms = {"intra": intra, "cross": cross, "hybrid": intra + cross}[name]
    return PCM_WEIGHT * sum(terms) / len(terms)


def _positives(image_ids, labels):
    b = len(image_ids)
    return [
        [
            i == j
            or bool(image_ids[i] == image_ids[j])
            or (int(labels[i]) >= 0 and bool(labels[i] == labels[j]))
            for j in range(b)
        ]
        for i in range(b)
    ]


def _icpm(v, t, pos):
    b = v.shape[0]
    total = 0.0
    for a, c in ((v, t), (t, v)):  # image-to-text, text-to-image
        kl = 0.0
        for i in range(b):
            s = torch.stack([F.cosine_similarity(a[i], c[j], dim=0) for j in range(b)]) / ICPM_TAU
            p = torch.softmax(s, dim=0)
            n = sum(pos[i])
            for j in range(b):
                q = (1.0 if pos[i][j] else 0.0) / n
                kl = kl + p[j] * (torch.log(p[j]) - math.log(q + 1e-8))
        total = total + kl / b
    return ICPM_WEIGHT * total


def _run(model, batch):
    mv, mt = model.pmm.image.features.clone(), model.pmm.text.features.clone()
    with torch.no_grad():
        feats = model.extract(batch)
        losses = model.losses(feats, batch)
    v, t = feats["image"].global_feat.float(), feats["text"].global_feat.float()
    return losses, v, t, mv, mt


@pytest.mark.parametrize("name", ["hybrid", "intra", "cross"])
def test_pcm_equals_its_terms_with_the_intended_memories_and_labels(name):
    model = _model(name)
    batch = _batch()
    losses, v, t, mv, mt = _run(model, batch)
    yv, yt = batch["image_labels"], batch["text_labels"]
    assert set(losses) == {"loss_pcm", "loss_icpm"}
    expected = _pcm(v, t, yv, yt, mv, mt, name)
    assert float(losses["loss_pcm"]) == pytest.approx(float(expected), rel=1e-5)
    # the step's momentum update happened after the loss (memories moved)
    new_mv, new_mt = model.pmm.image.features, model.pmm.text.features
    assert not torch.equal(new_mv, mv) and not torch.equal(new_mt, mt)
    wrong = {
        "memories swapped": _pcm(v, t, yv, yt, mt, mv, name),
        "labels swapped": _pcm(v, t, yt, yv, mv, mt, name),
        "memories after the update": _pcm(v, t, yv, yt, new_mv, new_mt, name),
    }
    if name != "intra":
        # t -> M^v against the text labels, v -> M^t against the image labels
        crossed = [_ce(t, mv, yt, PCM_TAU), _ce(v, mt, yv, PCM_TAU)]
        intra = [_ce(v, mv, yv, PCM_TAU), _ce(t, mt, yt, PCM_TAU)] if name == "hybrid" else []
        terms = intra + crossed
        wrong["cross-modal terms with the other modality's labels"] = (
            PCM_WEIGHT * sum(terms) / len(terms)
        )
    for what, value in wrong.items():
        assert abs(float(value - expected)) > 1e-3, what


def test_icpm_equals_the_kl_formula_with_image_label_and_same_image_positives():
    model = _model()
    batch = _batch()
    losses, v, t, _, _ = _run(model, batch)
    pos = _positives(batch["image_ids"], batch["image_labels"])
    # the hand-made positives: same (outlier) image (0, 1), image label 1 (2, 7), never -1 (0, 3)
    assert pos[0][1] and pos[2][7] and not pos[0][3] and not pos[0][2]
    expected = _icpm(v, t, pos)
    assert float(losses["loss_icpm"]) == pytest.approx(float(expected), rel=1e-4)
    wrong = {
        "text-label positives": _icpm(v, t, _positives(batch["image_ids"], batch["text_labels"])),
        "no same-image positives": _icpm(v, t, _positives(torch.arange(8), batch["image_labels"])),
        "outliers as one cluster": _icpm(
            v,
            t,
            [
                [
                    p or (int(batch["image_labels"][i]) == int(batch["image_labels"][j]) == -1)
                    for j, p in enumerate(row)
                ]
                for i, row in enumerate(pos)
            ],
        ),
        "image features on both sides": _icpm(v, v, pos),
    }
    for what, value in wrong.items():
        assert abs(float(value - expected)) > 1e-3, what
