"""CLIP backbone: forwards equal open_clip's, token outputs, grids, prompt path, fast-reid build."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from open_clip.model import CLIP
from open_clip.transformer import QuickGELU

from fastreid_ext.modeling.clip import (
    ClipArchitectureError,
    ClipEncoders,
    ClipWeightsError,
    build_clip_backbone,
    create_clip,
    list_architectures,
    load_architecture,
)

CAPTIONS = [
    "A woman wearing a red jacket and black pants.",
    "a man with a blue backpack",
    "the pedestrian walks",
]


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    return open_clip.tokenize(CAPTIONS)  # [3, 77], EOT = row argmax


def _reference(enc: ClipEncoders, name: str) -> CLIP:
    """An independent open_clip CLIP of the same architecture holding the same weights."""
    ref = CLIP(**load_architecture(name), quick_gelu=True)
    ref.load_state_dict(enc.model.state_dict(), strict=True)
    return ref.eval()


def test_list_and_load_architectures(tmp_path):
    assert {"ViT-B-16", "RN50", "tiny-vit", "tiny-rn"} <= set(list_architectures())
    cfg = load_architecture("tiny-vit")
    cfg["vision_cfg"]["width"] = 32
    path = tmp_path / "my-arch.json"
    path.write_text(json.dumps(cfg))
    enc = create_clip(str(path), (64, 32), random_init=True)
    assert enc.vision_width == 32 and enc.arch_name == "my-arch"
    with pytest.raises(ClipArchitectureError, match="tiny-vit"):
        load_architecture("ViT-X-99")  # message lists the bundled names


@pytest.mark.parametrize("name", ["ViT-B-16", "RN50"])
def test_bundled_configs_equal_open_clip(name):
    ours = load_architecture(name)
    theirs = open_clip.get_model_config(name)
    assert ours["embed_dim"] == theirs["embed_dim"]
    for sec in ("vision_cfg", "text_cfg"):
        for key, value in theirs[sec].items():
            if value is not None:
                assert ours[sec][key] == value, (sec, key)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_forward_equals_open_clip(name, ids):
    torch.manual_seed(0)
    enc = create_clip(name, (224, 224), random_init=True).eval()
    ref = _reference(enc, name)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(
            enc.encode_image(images), ref.encode_image(images), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(enc.encode_text(ids), ref.encode_text(ids), atol=1e-5, rtol=0)
        feats = enc.encode_image_tokens(images)
        torch.testing.assert_close(feats.global_feat, ref.encode_image(images), atol=1e-5, rtol=0)
        if enc.is_vit:
            assert feats.feature_map is None and feats.intermediate is None
            assert feats.tokens.shape == (2, 1 + 14 * 14, enc.embed_dim)
            torch.testing.assert_close(feats.tokens[:, 0], feats.global_feat)
            ref.visual.output_tokens = True
            _, patch_tokens = ref.visual(images)  # after ln_post, not projected
            torch.testing.assert_close(
                feats.tokens[:, 1:], patch_tokens @ ref.visual.proj, atol=1e-5, rtol=0
            )
        else:
            assert feats.tokens is None
            x3, x4 = ref.visual.forward_intermediates(images, indices=[3, 4])["image_intermediates"]
            torch.testing.assert_close(feats.intermediate, x3)
            torch.testing.assert_close(feats.feature_map, x4)
            assert feats.feature_map.shape == (2, 16 * 32, 7, 7)


def test_quick_gelu_switch():
    quick = create_clip("tiny-vit", (32, 32), random_init=True).model
    assert isinstance(quick.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert isinstance(quick.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    plain = create_clip("tiny-vit", (32, 32), random_init=True, quick_gelu=False).model
    assert isinstance(plain.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    assert isinstance(plain.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)


@pytest.fixture(scope="module")
def tiny_vit() -> ClipEncoders:
    torch.manual_seed(1)
    return create_clip("tiny-vit", (64, 32), random_init=True).eval()


def test_text_embeddings_path_equals_encode_text(tiny_vit, ids):
    enc = tiny_vit
    with torch.no_grad():
        expected = enc.encode_text(ids)
        out = enc.encode_text_embeddings(enc.token_embedding(ids), ids.argmax(-1))
        torch.testing.assert_close(out.global_feat, expected, atol=1e-6, rtol=0)
        assert out.tokens.shape == (3, 77, enc.embed_dim)
        eot = ids.argmax(-1)
        torch.testing.assert_close(out.tokens[torch.arange(3), eot], expected)
        toks = enc.encode_text_tokens(ids)
        torch.testing.assert_close(toks.global_feat, expected)
        torch.testing.assert_close(toks.tokens, out.tokens)


def test_text_is_causal_and_accepts_shorter_length(tiny_vit, ids):
    enc = tiny_vit
    eot = ids.argmax(-1)
    assert int(eot.max()) < 16
    altered = ids.clone()
    altered[:, 16:] = 320  # ids after EOT (all < EOT id): invisible to the EOT token if causal
    with torch.no_grad():
        full = enc.encode_text_tokens(ids)
        alt = enc.encode_text_tokens(altered)
        torch.testing.assert_close(alt.global_feat, full.global_feat, atol=1e-6, rtol=0)
        assert not torch.allclose(alt.tokens[:, 20], full.tokens[:, 20])
        short = enc.encode_text_tokens(ids[:, :16])
        assert short.tokens.shape == (3, 16, enc.embed_dim)
        torch.testing.assert_close(short.global_feat, full.global_feat, atol=1e-6, rtol=0)
        torch.testing.assert_close(short.tokens, full.tokens[:, :16], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="context length 77"):
        enc.encode_text(torch.zeros(1, 78, dtype=torch.long))


def test_causal_mask_is_non_persistent_buffer_following_dtype(ids):
    enc = create_clip("tiny-vit", (32, 32), random_init=True, context_length=32)
    assert "causal_mask" in dict(enc.named_buffers())
    assert not any("causal_mask" in k for k in enc.state_dict())
    assert enc.causal_mask.shape == (32, 32) and enc.model.positional_embedding.shape[0] == 32
    assert enc.causal_mask[0, 1] == float("-inf") and enc.causal_mask[1, 0] == 0
    enc.double()
    assert enc.causal_mask.dtype == torch.float64 and enc.dtype == torch.float64
    assert enc.encode_text(ids[:, :32]).dtype == torch.float64


@pytest.mark.parametrize(
    "size,stride", [((384, 128), 0), ((256, 128), 0), ((288, 144), 0), ((384, 128), 12)]
)
def test_vit_grid_and_token_count(size, stride):
    enc = create_clip("tiny-vit", size, random_init=True, vit_stride=stride)
    s = stride or 16
    grid = ((size[0] - 16) // s + 1, (size[1] - 16) // s + 1)
    assert enc.grid_size == grid and enc.image_size == size
    assert enc.model.visual.positional_embedding.shape == (1 + grid[0] * grid[1], 64)
    assert enc.model.visual.conv1.stride == (s, s)
    feats = enc.encode_image_tokens(torch.randn(1, 3, *size))
    assert feats.tokens.shape == (1, 1 + grid[0] * grid[1], enc.embed_dim)
    with pytest.raises(ValueError, match=str(size)):
        enc.encode_image(torch.randn(1, 3, 224, 224))


@pytest.mark.parametrize(
    "size,last_stride_1,grid",
    [((256, 128), False, (8, 4)), ((288, 144), False, (9, 4)), ((256, 128), True, (16, 8))],
)
def test_resnet_nonsquare_grids(size, last_stride_1, grid):
    enc = create_clip("tiny-rn", size, random_init=True, rn_last_stride_1=last_stride_1)
    assert enc.grid_size == grid and not enc.is_vit
    assert enc.model.visual.attnpool.positional_embedding.shape == (1 + grid[0] * grid[1], 512)
    feats = enc.encode_image_tokens(torch.randn(2, 3, *size))
    assert feats.feature_map.shape == (2, 512, *grid)
    assert feats.intermediate.shape == (2, 256, size[0] // 16, size[1] // 16)
    assert feats.global_feat.shape == (2, 64) and enc.vision_width == 512


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("tiny-vit", {"rn_last_stride_1": True}, "RN_LAST_STRIDE_1"),
        ("tiny-rn", {"vit_stride": 12}, "VIT_STRIDE"),
        ("tiny-vit", {"vit_stride": 17}, "VIT_STRIDE=17"),
        ("tiny-vit", {"image_size": (250, 128)}, "multiple of the patch size"),
    ],
)
def test_invalid_build_options(name, kwargs, match):
    kwargs = {"image_size": (256, 128), **kwargs}
    with pytest.raises(ClipArchitectureError, match=match):
        create_clip(name, random_init=True, **kwargs)


def test_unsupported_architecture_feature(tmp_path):
    cfg = load_architecture("tiny-vit")
    cfg["vision_cfg"]["attentional_pool"] = True
    path = tmp_path / "coca.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(ClipArchitectureError, match="attentional_pool") as err:
        create_clip(str(path), (64, 32), random_init=True)
    assert str(path) in str(err.value)


def _cfg(**clip):
    from fastreid.config import get_cfg

    from fastreid_ext.config import add_fastreid_ext_config

    cfg = get_cfg()
    add_fastreid_ext_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_clip_backbone"
    cfg.INPUT.SIZE_TRAIN = [256, 128]
    for key, value in clip.items():
        setattr(cfg.MODEL.CLIP, key, value)
    return cfg


def test_build_from_fastreid_config():
    from fastreid.modeling.backbones.build import BACKBONE_REGISTRY, build_backbone

    assert BACKBONE_REGISTRY.get("build_clip_backbone") is build_clip_backbone
    cfg = _cfg(NAME="tiny-rn", RANDOM_INIT=True, RN_LAST_STRIDE_1=True, CONTEXT_LENGTH=64)
    enc = build_backbone(cfg)
    assert isinstance(enc, ClipEncoders)
    assert enc.image_size == (256, 128) and enc.grid_size == (16, 8)
    assert enc.context_length == 64 and enc.embed_dim == 64
    cfg = _cfg(NAME="tiny-vit", RANDOM_INIT=True, VIT_STRIDE=12, QUICK_GELU=False)
    enc = build_backbone(cfg)
    assert enc.grid_size == (21, 10)
    assert isinstance(enc.model.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    with pytest.raises(ClipWeightsError, match="RANDOM_INIT"):
        build_backbone(_cfg(NAME="tiny-vit"))


def test_vit_b_16_reid_size():
    enc = create_clip("ViT-B-16", (256, 128), random_init=True).eval()
    assert (enc.embed_dim, enc.vision_width, enc.text_width) == (512, 768, 512)
    assert enc.model.visual.positional_embedding.shape == (129, 768)
    with torch.no_grad():
        feats = enc.encode_image_tokens(torch.randn(1, 3, 256, 128))
    assert feats.tokens.shape == (1, 129, 512)
    torch.testing.assert_close(feats.tokens[:, 0], feats.global_feat)


def test_rn50_reid_size():
    enc = create_clip("RN50", (256, 128), random_init=True, rn_last_stride_1=True).eval()
    assert enc.model.visual.attnpool.positional_embedding.shape == (129, 2048)
    with torch.no_grad():
        feats = enc.encode_image_tokens(torch.randn(1, 3, 256, 128))
    assert feats.feature_map.shape == (1, 2048, 16, 8)
    assert feats.intermediate.shape == (1, 1024, 16, 8)
    assert feats.global_feat.shape == (1, 1024)
