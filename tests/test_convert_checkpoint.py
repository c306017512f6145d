"""Converters of the authors' released checkpoints (IRRA best.pth, CSDN model_<epoch>.pth).

Each test builds one of our tiny models with random weights, writes it in the RELEASED layout
with a hand-written mapping from the documented key names, shapes and dtypes (checked against
an enumeration of the documented names), converts it and loads the result into a fresh model
through the ``--eval-only`` code path: strict key match, equal tensors and equal features.
"""

from __future__ import annotations

import json
import shlex
import sys
from typing import Dict, List, Optional

import pytest
import torch

from fastreid_ext.convert import ConversionError, convert_checkpoint, save_converted
from fastreid_ext.data.vi import write_synthetic_sysu
from fastreid_ext.engine import build_cfg
from fastreid_ext.engine.checkpoint import load_for_inference, read_checkpoint
from fastreid_ext.modeling.clip import create_clip
from fastreid_ext.registry import TRAINER_REGISTRY, lookup
from fastreid_ext.text import ClipTokenizer
from fastreid_ext.tools.convert_checkpoint import main as convert_main

from .conftest import REPO, TOOLS, run_isolated

BASELINE_DEMO = str(REPO / "configs" / "Baseline" / "demo.yml")
CSDN_DEMO = str(REPO / "configs" / "CSDN" / "demo.yml")
IRRA_OPTS = ["MODEL.T2I.LOSSES", "['SDM','ID','MLM']", "MODEL.T2I.MLM_DEPTH", "1"]
IRRA_OPTS += ["MODEL.T2I.MLM_HEADS", "1", "MODEL.HEADS.NUM_CLASSES", "7"]
CSDN_OPTS = ["MODEL.HEADS.NUM_CLASSES", "5"]
BLOCK = [f"ln_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")] + [
    "attn.in_proj_weight",
    "attn.in_proj_bias",
    "attn.out_proj.weight",
    "attn.out_proj.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
]
BN = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
LN = ["weight", "bias"]


def _build(config: str, opts: List[str], seed: int = 0, clip: str = "") -> torch.nn.Module:
    """The model ``--eval-only`` builds for ``config`` + ``opts`` (CPU, eval) from the CLIP
    file ``clip``, or random CLIP weights."""
    init = ["MODEL.CLIP.WEIGHTS", clip, "MODEL.CLIP.RANDOM_INIT", str(not clip)]
    cfg = build_cfg(config, [*opts, *init, "MODEL.DEVICE", "cpu"])
    torch.manual_seed(seed)
    return lookup(TRAINER_REGISTRY, cfg.TRAINER.NAME).build_model(cfg).eval()


def perturbed(model: torch.nn.Module, seed: int, skip: str = "") -> torch.nn.Module:
    """``model`` with noise on every float tensor whose key lacks ``skip`` (positive BN
    variances), so that no two tensors are equal by initialisation (LayerNorms, deep-copied
    stems) and a swapped mapping shows."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.is_floating_point() and not (skip and skip in k):
                noise = torch.randn(v.shape, generator=gen)
                v.copy_(noise.abs() + 0.5 if k.endswith("running_var") else v + 0.05 * noise)
    return model


def _blocks(prefix: str, n: int) -> List[str]:
    return [f"{prefix}.resblocks.{i}.{k}" for i in range(n) for k in BLOCK]


# ------------------------------------------------------------------ IRRA released layout
def irra_documented_keys(vision_layers: int, text_layers: int, mlm_depth: int) -> List[str]:
    """Every key of IRRA's ``model`` state dict with sdm+id+mlm (reference layout table)."""
    b = "base_model."
    keys = [b + k for k in ("positional_embedding", "token_embedding.weight", "text_projection")]
    keys += [f"{b}ln_final.{p}" for p in LN] + _blocks(b + "transformer", text_layers)
    v = b + "visual."
    keys += [v + k for k in ("conv1.weight", "class_embedding", "positional_embedding", "proj")]
    keys += [f"{v}{ln}.{p}" for ln in ("ln_pre", "ln_post") for p in LN]
    keys += _blocks(v + "transformer", vision_layers) + ["classifier.weight", "classifier.bias"]
    keys += [f"cross_attn.{k[5:]}" for k in BLOCK if k.startswith("attn.")]
    keys += _blocks("cross_modal_transformer", mlm_depth)
    keys += [f"{ln}.{p}" for ln in ("ln_pre_t", "ln_pre_i", "ln_post") for p in LN]
    return keys + [f"mlm_head.{m}.{p}" for m in ("dense", "ln", "fc") for p in LN]


def to_irra_key(ours: str) -> Optional[str]:
    """Our Baseline key -> IRRA's (None: IRRA does not save it)."""
    if ours == "backbone.model.logit_scale":
        return None
    if ours.startswith("backbone.model."):
        return "base_model." + ours[len("backbone.model.") :]
    if ours.startswith("mlm_head.mlm_head."):
        return "mlm_head." + ours[len("mlm_head.mlm_head.") :]
    if ours.startswith("mlm_head."):
        return ours[len("mlm_head.") :]
    assert ours.startswith("classifier."), ours
    return ours


def irra_is_fp16(key: str) -> bool:
    """IRRA's convert_weights: Conv/Linear weights and biases, MHA in-proj, proj and
    text_projection are fp16; LayerNorms and embeddings stay fp32."""
    if key.endswith(("in_proj_weight", "in_proj_bias", "visual.proj", "text_projection")):
        return True
    module = key.rsplit(".", 2)[-2]
    return module in {"conv1", "out_proj", "c_fc", "c_proj", "classifier", "dense", "fc"}


def irra_release(model: torch.nn.Module, module_prefix: bool) -> Dict:
    """``best.pth`` as IRRA's Checkpointer writes it for ``model``."""
    state = {}
    for k, v in model.state_dict().items():
        name = to_irra_key(k)
        if name is not None:
            value = v.half() if irra_is_fp16(name) else v.clone()
            state[("module." if module_prefix else "") + name] = value
    adam = {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2), "exp_avg_sq": torch.ones(2)}}
    groups = [{"lr": 1e-5, "betas": (0.9, 0.999), "eps": 1e-3, "weight_decay": 4e-5, "params": [0]}]
    sched = {"milestones": (20, 50), "gamma": 0.1, "warmup_epochs": 5, "last_epoch": 37}
    return {
        "model": state,
        "optimizer": {"state": adam, "param_groups": groups},
        "scheduler": sched,
        "num_epoch": 60,
        "iteration": 0,
        "epoch": 37,
    }


def fp16_rounded(model: torch.nn.Module) -> None:
    """Round in place the weights IRRA stores in fp16 (what the release can reproduce)."""
    with torch.no_grad():
        for k, v in model.state_dict().items():
            name = to_irra_key(k)
            if name is not None and irra_is_fp16(name):
                v.copy_(v.half().float())


def clip_file(model: torch.nn.Module, prefix: str, path) -> str:
    """A CLIP state-dict file (OpenAI names) holding ``model``'s CLIP tensors under ``prefix``."""
    state = {
        k[len(prefix) :]: v.clone() for k, v in model.state_dict().items() if k.startswith(prefix)
    }
    torch.save(state, path)
    return str(path)


def _images_and_captions():
    torch.manual_seed(1)
    images = torch.rand(3, 3, 64, 32) * 255
    tok = ClipTokenizer(77)
    texts = ["a man in a red shirt", "a woman with a black bag", "a child wearing blue jeans"]
    return images, torch.stack([tok.encode(t) for t in texts])


@pytest.fixture(scope="module")
def irra_case(tmp_path_factory):
    """(original model rounded through fp16, released file with module., CLIP file, folder)."""
    tmp = tmp_path_factory.mktemp("irra")
    model = perturbed(_build(BASELINE_DEMO, IRRA_OPTS), seed=0)
    release = irra_release(model, module_prefix=True)
    names = [k[len("module.") :] for k in release["model"]]
    assert sorted(names) == sorted(irra_documented_keys(2, 2, 1))
    assert release["model"]["module.base_model.visual.positional_embedding"].shape == (9, 64)
    assert release["model"]["module.mlm_head.fc.weight"].shape == (49408, 64)
    torch.save(release, tmp / "best.pth")
    clip = clip_file(model, "backbone.model.", tmp / "tiny-vit.pt")
    fp16_rounded(model)
    return model, tmp / "best.pth", clip, tmp


def test_irra_converts_to_a_strictly_loading_equal_model(irra_case):
    original, src, clip, tmp = irra_case
    converted = convert_checkpoint("irra", str(src), clip_weights=clip, config_file=BASELINE_DEMO)
    report = converted.report
    assert report.num_classes == 7 and report.source_info["epoch"] == 37
    assert report.overrides[:2] == ["MODEL.T2I.LOSSES", '["SDM", "ID", "MLM"]']
    assert {d["key"] for d in report.dropped} == {
        "optimizer",
        "scheduler",
        "num_epoch",
        "iteration",
        "epoch",
    }
    assert [f["key"] for f in report.filled] == ["backbone.model.logit_scale"]
    fp16 = sum(irra_is_fp16(k) for k in irra_documented_keys(2, 2, 1))
    assert report.cast_to_float32 == fp16 > 0
    dst = tmp / "converted.pth"
    json_path = save_converted(converted, str(dst))
    saved = torch.load(dst, map_location="cpu", weights_only=True)
    assert saved["model_info"]["data_config"]["MODEL.HEADS.NUM_CLASSES"] == 7
    assert all(v.dtype in (torch.float32, torch.int64) for v in saved["model"].values())
    assert json.loads(open(json_path).read())["overrides"] == report.overrides

    fresh = _build(BASELINE_DEMO, report.overrides, seed=5)
    load_for_inference(fresh, str(dst))  # the --eval-only path
    expected = original.state_dict()
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, expected[key]), key
    images, ids = _images_and_captions()
    a = original.inference({"images": images, "caption_ids": ids})
    b = fresh.inference({"images": images, "caption_ids": ids})
    assert torch.equal(a["image_feats"], b["image_feats"])
    assert torch.equal(a["text_feats"], b["text_feats"])
    fresh.load_state_dict(read_checkpoint(str(dst)), strict=True)  # no missing / unexpected key


def test_irra_without_module_prefix_or_heads(irra_case, tmp_path):
    """A plain state dict without the prefix and without the id / mlm heads also converts; the
    overrides then drop ID and MLM and the class count is unknown."""
    original, src, clip, _ = irra_case
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    state = {k[len("module.") :]: v for k, v in ckpt["model"].items()}
    state = {k: v for k, v in state.items() if k.startswith("base_model.")}
    torch.save(state, tmp_path / "encoders.pth")
    converted = convert_checkpoint(
        "irra", str(tmp_path / "encoders.pth"), clip_weights=clip, config_file=BASELINE_DEMO
    )
    assert converted.report.overrides == ["MODEL.T2I.LOSSES", '["SDM"]']
    assert converted.report.num_classes is None
    fresh = _build(BASELINE_DEMO, converted.report.overrides)
    fresh.load_state_dict(converted.state, strict=True)
    images, ids = _images_and_captions()
    a, b = original.inference({"images": images}), fresh.inference({"images": images})
    assert torch.equal(a["image_feats"], b["image_feats"])


# ------------------------------------------------------------------ CSDN released layout
def csdn_documented_keys(layers: List[int], text_layers: int) -> List[str]:
    """Every key of CSDN's state dict (without ``module.``; reference layout table)."""
    keys = []
    for s in ("image_encoder1", "image_encoder2"):
        keys += [f"{s}.{i}.weight" for i in (0, 2, 4)] + [
            f"{s}.{i}.{p}" for i in (1, 3, 5) for p in BN
        ]
    for layer, n in enumerate(layers):
        for b in range(n):
            p = f"image_encoder.{layer}.{b}."
            keys += [f"{p}conv{i}.weight" for i in (1, 2, 3)] + [
                f"{p}bn{i}.{q}" for i in (1, 2, 3) for q in BN
            ]
            if b == 0:
                keys += [p + "downsample.0.weight"] + [f"{p}downsample.1.{q}" for q in BN]
    keys += ["attnpool.positional_embedding"] + [
        f"attnpool.{x}_proj.{p}" for x in "qkvc" for p in LN
    ]
    keys += ["classifier.GEM.p", "classifier.classifier.weight", "classifier2.classifier.weight"]
    keys += [f"{c}.BN.{p}" for c in ("classifier", "classifier2") for p in BN]
    keys += [
        f"prompt_learner{i}.{k}"
        for i in (1, 2)
        for k in ("cls_ctx", "token_prefix", "token_suffix")
    ]
    keys += _blocks("text_encoder.transformer", text_layers)
    keys += ["text_encoder.positional_embedding", "text_encoder.text_projection"]
    keys += [f"text_encoder.ln_final.{p}" for p in LN]
    return keys + [
        f"attention_fusion.embedding_{x}.0.{p}" for x in ("q", "k", "v", "common") for p in LN
    ]


# Our head / fusion modules -> the authors' (network/model.py Classifier, Classifier2,
# AttentionFusion).
CSDN_MODULES = {
    "head_gem.pool": "classifier.GEM",
    "head_gem.bn": "classifier.BN",
    "head_gem.classifier": "classifier.classifier",
    "head_proj.bn": "classifier2.BN",
    "head_proj.classifier": "classifier2.classifier",
    "fusion.query": "attention_fusion.embedding_q",
    "fusion.key": "attention_fusion.embedding_k",
    "fusion.value": "attention_fusion.embedding_v",
    "fusion.common": "attention_fusion.embedding_common.0",
}


def to_csdn_key(ours: str) -> Optional[str]:
    """Our CSDN key -> the authors' (None: they do not save it)."""
    parts = ours.split(".")
    if ours.startswith("image_encoder.stems."):
        return f"image_encoder{int(parts[2]) + 1}." + ".".join(parts[3:])
    if ours.startswith(("image_encoder.trunk.", "image_encoder.attnpool.")):
        rest = ".".join(parts[2:])
        return ("image_encoder." if parts[1] == "trunk" else "attnpool.") + rest
    module = ".".join(parts[:2])
    if module in CSDN_MODULES:
        return CSDN_MODULES[module] + "." + ".".join(parts[2:])
    if parts[0] == "prompt_learners":
        return (
            None if parts[2] == "template_ids" else f"prompt_learner{int(parts[1]) + 1}.{parts[2]}"
        )
    if ours.startswith("text_encoder.model."):
        rest = ours[len("text_encoder.model.") :]
        return None if rest in ("token_embedding.weight", "logit_scale") else "text_encoder." + rest
    assert ours.startswith("text_bank_"), ours
    return None


def csdn_release(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """``model_<epoch>.pth`` as CSDN writes it: nn.DataParallel's flat fp32 state dict whose
    prompt buffers hold the whole 77-token template ([1, 5, W] and [1, 68, W])."""
    state = model.state_dict()
    ids = ClipTokenizer(77).encode("A photo of a X X X X person.")
    template = state["text_encoder.model.token_embedding.weight"][ids]  # [77, W]
    out = {}
    for k, v in state.items():
        name = to_csdn_key(k)
        if name is None:
            continue
        if name.endswith("token_prefix"):
            v = template[None, :5]
        elif name.endswith("token_suffix"):
            v = template[None, 9:]
        out["module." + name] = v.clone()
    return out


def perturbed_csdn(seed: int = 0) -> torch.nn.Module:
    """A tiny CSDN whose two stems differ and whose BN statistics, GeM p and text banks are
    random; the token embedding and prompt buffers stay those of the template."""
    model = perturbed(_build(CSDN_DEMO, CSDN_OPTS, seed), seed, skip="token_")
    with torch.no_grad():
        model.head_gem.pool.p.fill_(2.5)
    return model


@pytest.fixture(scope="module")
def csdn_case(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("csdn")
    model = perturbed_csdn()
    release = csdn_release(model)
    assert sorted(k[len("module.") :] for k in release) == sorted(
        csdn_documented_keys([1, 1, 1, 1], 2)
    )
    assert release["module.prompt_learner1.token_suffix"].shape == (1, 68, 64)
    assert release["module.attnpool.positional_embedding"].shape == (9, 512)  # 1 + 4 x 2 grid
    torch.save(release, tmp / "model_57.pth")
    clip = clip_file(model, "text_encoder.model.", tmp / "tiny-rn.pt")
    return model, tmp / "model_57.pth", clip, tmp


def _csdn_features(model, images):
    vis = model.inference({"images": images, "modality": torch.zeros(3, dtype=torch.long)})
    ir = model.inference({"images": images, "modality": torch.ones(3, dtype=torch.long)})
    return vis["image_feats"], ir["image_feats"]


def test_csdn_converts_to_a_strictly_loading_equal_model(csdn_case):
    original, src, clip, tmp = csdn_case
    converted = convert_checkpoint("csdn", str(src), clip_weights=clip, config_file=CSDN_DEMO)
    report = converted.report
    assert report.num_classes == 5 and report.cast_to_float32 == 0
    assert "MODEL.CSDN.QUIRKS.STEM_SINGLE_RELU" in report.overrides
    assert {r["key"]: r["to"] for r in report.reshaped} == {
        f"prompt_learners.{i}.{n}": [s, 64]
        for i in (0, 1)
        for n, s in (("token_prefix", 5), ("token_suffix", 3))
    }
    filled = {f["key"] for f in report.filled}
    assert filled == {
        "text_encoder.model.token_embedding.weight",
        "text_encoder.model.logit_scale",
        "prompt_learners.0.template_ids",
        "prompt_learners.1.template_ids",
        "text_bank_visible",
        "text_bank_infrared",
    }
    dst = tmp / "converted.pth"
    save_converted(converted, str(dst))
    fresh = _build(CSDN_DEMO, report.overrides, seed=9)
    load_for_inference(fresh, str(dst))
    expected = original.state_dict()
    for key, value in fresh.state_dict().items():
        if key.startswith("text_bank_"):
            assert not value.any(), key  # training-only phase-3 targets: zeros
        else:
            assert torch.equal(value, expected[key]), key
    images, _ = _images_and_captions()
    for a, b in zip(_csdn_features(original, images), _csdn_features(fresh, images)):
        assert torch.equal(a, b)
    labels = torch.tensor([0, 3, 4])
    for learner in (0, 1):
        assert torch.equal(
            original.text_features(labels, learner), fresh.text_features(labels, learner)
        )
    fresh.load_state_dict(read_checkpoint(str(dst)), strict=True)  # no missing / unexpected key


def test_csdn_inference_only_needs_no_clip_file(csdn_case, tmp_path):
    original, src, _, _ = csdn_case
    converted = convert_checkpoint("csdn", str(src), config_file=CSDN_DEMO, inference_only=True)
    assert all(
        k.startswith(("image_encoder.", "head_gem.pool.", "head_gem.bn.")) for k in converted.state
    )
    assert "head_gem.classifier.weight" in converted.report.omitted
    save_converted(converted, str(tmp_path / "eval.pth"))
    fresh = _build(CSDN_DEMO, converted.report.overrides, seed=9)
    load_for_inference(fresh, str(tmp_path / "eval.pth"))
    images, _ = _images_and_captions()
    for a, b in zip(_csdn_features(original, images), _csdn_features(fresh, images)):
        assert torch.equal(a, b)


# ------------------------------------------------------------------ errors and the tool
def _expect(match: str, fmt: str, src, **kwargs) -> str:
    with pytest.raises(ConversionError, match=match) as info:
        convert_checkpoint(fmt, str(src), **kwargs)
    assert str(src) in str(info.value) or "clip-weights" in str(info.value)
    return str(info.value)


def test_errors_name_the_file_and_the_keys(irra_case, csdn_case, tmp_path):
    _, irra_src, vit_clip, _ = irra_case
    original, csdn_src, rn_clip, _ = csdn_case
    # the wrong --from, in both directions
    _expect(r"looks like a irra checkpoint .*--from irra", "csdn", irra_src)
    _expect(r"looks like a csdn checkpoint .*--from csdn", "irra", csdn_src, clip_weights=vit_clip)
    # a truncated download
    data = csdn_src.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    _expect(r"cannot read .*weights_only=True", "csdn", tmp_path / "cut.pth")
    # unknown keys, a mixed module. prefix, not a state dict, already converted
    release = torch.load(csdn_src, map_location="cpu", weights_only=True)
    torch.save({**release, "module.extra_head.weight": torch.zeros(2)}, tmp_path / "extra.pth")
    _expect(
        r"1 key\(s\) are not in the csdn layout.*extra_head\.weight", "csdn", tmp_path / "extra.pth"
    )
    torch.save({**release, "extra.weight": torch.zeros(2)}, tmp_path / "mixed.pth")
    _expect(r"start with 'module\.' but 1 do not \(extra\.weight\)", "csdn", tmp_path / "mixed.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    _expect(r"holds a list", "irra", tmp_path / "list.pth")
    torch.save({"model": original.state_dict()}, tmp_path / "ours.pth")
    _expect(r"already a fastreid-ext checkpoint", "csdn", tmp_path / "ours.pth")
    # shapes that do not fit the target config: another image size
    msg = _expect(
        r"do not fit the model of",
        "csdn",
        csdn_src,
        clip_weights=rn_clip,
        config_file=CSDN_DEMO,
        opts=["INPUT.SIZE_TRAIN", "[96,32]"],
    )
    assert "image_encoder.attnpool.positional_embedding (9, 512) vs (13, 512)" in msg
    # the class count names no shipped config
    _expect(r"cannot tell the target config from 5 classes.*--config-file", "csdn", csdn_src)
    # keys only the CLIP file has
    _expect(
        r"no backbone\.model\.logit_scale.*--clip-weights",
        "irra",
        irra_src,
        config_file=BASELINE_DEMO,
    )
    torch.save({"positional_embedding": torch.zeros(77, 64)}, tmp_path / "partial.pt")
    _expect(
        r"lacks logit_scale",
        "irra",
        irra_src,
        clip_weights=str(tmp_path / "partial.pt"),
        config_file=BASELINE_DEMO,
    )
    # a CLIP file whose token embedding does not give CSDN's prompt buffers
    other = {k: v.clone() for k, v in torch.load(rn_clip, weights_only=True).items()}
    other["token_embedding.weight"] += 0.01
    torch.save(other, tmp_path / "other.pt")
    _expect(
        r"template embeddings differ from the token embedding",
        "csdn",
        csdn_src,
        clip_weights=str(tmp_path / "other.pt"),
        config_file=CSDN_DEMO,
    )


def test_tool_writes_checkpoint_and_report(csdn_case, tmp_path, capsys):
    _, src, clip, _ = csdn_case
    with pytest.raises(SystemExit) as info:
        convert_main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert (
        "--from {csdn,irra}" in out
        and "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762" in out
    )
    dst = tmp_path / "out" / "csdn.pth"
    argv = [
        "--from",
        "csdn",
        str(src),
        str(dst),
        "--clip-weights",
        clip,
        "--config-file",
        CSDN_DEMO,
    ]
    assert convert_main([*argv, "MODEL.CSDN.TEST_FLIP", "False"]) == 0
    out = capsys.readouterr().out
    assert "renamed" in out and "--eval-only" in out and "MODEL.CSDN.TEST_FLIP False" in out
    report = json.loads((tmp_path / "out" / "csdn.json").read_text())
    assert report["overrides"][-2:] == ["MODEL.CSDN.TEST_FLIP", "False"]
    assert report["output"] == str(dst) and len(report["source_sha256"]) == 64
    assert f"MODEL.WEIGHTS {dst}" in report["eval_command"]
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(".")]  # no temporaries
    assert convert_main(["--from", "irra", str(src), str(tmp_path / "x.pth")]) == 2
    assert "--from csdn" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


# ------------------------------------------------------------------ end to end (slow)
def _run(cmd: List[str]) -> None:
    run = run_isolated(cmd, timeout=900)
    assert run.returncode == 0, f"{cmd}\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"


@pytest.fixture(scope="module")
def sysu_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("sysu"))
    write_synthetic_sysu(root, 14, 2, seed=3, image_size=(64, 32), split_counts=(8, 2, 4))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("method", ["irra", "csdn"])
def test_eval_only_on_the_converted_file_equals_the_original(
    method, synthetic_root, sysu_root, tmp_path
):
    """tools/convert_checkpoint.py, then the evaluation command it prints, on synthetic data:
    the same metrics as the original model's own checkpoint."""
    if method == "irra":  # 24 training identities in the synthetic CUHK-PEDES tree
        config, root, arch, opts = (
            BASELINE_DEMO,
            synthetic_root,
            "tiny-vit",
            IRRA_OPTS[:-1] + ["24"],
        )
    else:  # 8 + 2 (train + val ids) in the synthetic SYSU-MM01 tree
        config, root, arch, opts = (
            CSDN_DEMO,
            sysu_root,
            "tiny-rn",
            ["MODEL.HEADS.NUM_CLASSES", "10"],
        )
    clip = str(tmp_path / f"{arch}.pt")
    clip_model = create_clip(arch, (64, 32), random_init=True, rn_last_stride_1=method == "csdn")
    torch.save(clip_model.model.state_dict(), clip)
    model = perturbed(_build(config, opts, clip=clip), seed=4, skip="token_")
    src = tmp_path / "released.pth"
    if method == "irra":
        torch.save(irra_release(model, module_prefix=False), src)
        fp16_rounded(model)
    else:
        torch.save(csdn_release(model), src)
    torch.save({"model": model.state_dict()}, tmp_path / "original.pth")
    dst = tmp_path / "converted.pth"
    tool = [sys.executable, str(TOOLS / "convert_checkpoint.py"), "--from", method, str(src)]
    _run([*tool, str(dst), "--clip-weights", clip, "--config-file", config])
    command = shlex.split(json.loads((tmp_path / "converted.json").read_text())["eval_command"])
    assert command[:2] == ["python", "tools/train_net.py"] and str(dst) in command
    results = []
    for weights in (dst, tmp_path / "original.pth"):
        out = tmp_path / f"eval_{weights.stem}"
        cmd = [sys.executable, *command[1:]]
        cmd[cmd.index(str(dst))] = str(weights)
        extra = ["DATASETS.ROOT", root, "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu"]
        _run(cmd + extra + ["DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", "32"])
        results.append(json.loads((out / "eval_results.json").read_text()))
    assert results[0] == results[1] and results[0]


@pytest.mark.slow
def test_released_layouts_at_full_size_have_the_documented_counts():
    """The hand-written layouts above, applied to our ViT-B/16 Baseline (CUHK-PEDES, 11003
    classes) and RN50 CSDN (SYSU-MM01, 395 classes), give the released files' documented key
    counts, element counts and fp16 split."""
    irra = irra_release(
        _build(BASELINE_DEMO.replace("demo", "cuhk"), ["MODEL.HEADS.NUM_CLASSES", "11003"]), False
    )["model"]
    fp16 = [v.numel() for v in irra.values() if v.dtype == torch.float16]
    assert len(irra) == 367 and sum(v.numel() for v in irra.values()) == 194_535_419
    assert len(fp16) == 237 and sum(fp16) == 168_972_283
    assert irra["base_model.visual.positional_embedding"].shape == (193, 768)
    csdn = csdn_release(
        _build(CSDN_DEMO.replace("demo", "sysu"), ["MODEL.HEADS.NUM_CLASSES", "395"])
    )
    stats = ("running_mean", "running_var", "num_batches_tracked", "token_prefix", "token_suffix")
    params = sum(v.numel() for k, v in csdn.items() if not k.endswith(stats))
    assert len(csdn) == 532 and params == 84_006_337
    assert csdn["module.attnpool.positional_embedding"].shape == (163, 2048)
