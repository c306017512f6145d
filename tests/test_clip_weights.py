"""CLIP weight files: formats, bilinear position-grid resize (IRRA formula), clear errors."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from fastreid_ext.modeling.clip import (
    ClipWeightsError,
    create_clip,
    read_clip_state_dict,
    resize_grid_pos_embed,
)


class _Holder(nn.Module):
    """Container for scripting a state dict into a TorchScript archive (OpenAI's format)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_openai_archive(state: dict, path) -> dict:
    """Script a module carrying ``state`` under OpenAI's key names, with fp16 matrices and the
    metadata entries OpenAI's archives have. Returns the fp32 values the file holds."""
    root = _Holder()
    stored = {}
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for name in parents:
            if not hasattr(module, name):
                module.add_module(name, _Holder())
            module = getattr(module, name)
        tensor = value.half() if value.dim() >= 2 else value.clone()
        module.register_parameter(leaf, nn.Parameter(tensor, requires_grad=False))
        stored[key] = tensor.float()
    for key, val in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        root.register_buffer(key, torch.tensor(val))
    torch.jit.script(root).save(str(path))
    return stored


@pytest.fixture(scope="module")
def vit_state() -> dict:
    torch.manual_seed(3)
    return create_clip("tiny-vit", (224, 224), random_init=True).model.state_dict()


@pytest.fixture(scope="module")
def rn_state() -> dict:
    torch.manual_seed(4)
    return create_clip("tiny-rn", (224, 224), random_init=True).model.state_dict()


def irra_resize(pos: torch.Tensor, old: int, grid: tuple[int, int]) -> torch.Tensor:
    """The CLIP-ReID / IRRA position-embedding resize, written out independently."""
    img = pos[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    img = F.interpolate(img, size=grid, mode="bilinear", align_corners=False)
    return torch.cat([pos[:1], img.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)])


def assert_state_equal(model_state: dict, expected: dict, skip=()) -> None:
    assert set(model_state) == set(expected)
    for key, value in expected.items():
        if key not in skip:
            assert torch.equal(model_state[key], value), key


def test_resize_hand_computed_case():
    # 2x2 grid holding 2*r + c, upsampled to 4x4: bilinear (align_corners=False) maps output
    # index i to input coordinate (i + 0.5) / 2 - 0.5, clamped to [0, 1] -> 0, .25, .75, 1.
    pos = torch.tensor([[-7.0], [0.0], [1.0], [2.0], [3.0]])
    out = resize_grid_pos_embed(pos, (4, 4))
    coord = torch.tensor([0.0, 0.25, 0.75, 1.0])
    expected = (2 * coord[:, None] + coord[None, :]).reshape(16, 1)
    assert out[0].item() == -7.0
    torch.testing.assert_close(out[1:], expected)
    assert resize_grid_pos_embed(pos, (2, 2)) is pos
    with pytest.raises(ClipWeightsError, match="not a square grid"):
        resize_grid_pos_embed(torch.zeros(6, 1), (4, 4))


@pytest.mark.parametrize(
    "size,stride", [((384, 128), 0), ((256, 128), 0), ((288, 144), 0), ((384, 128), 12)]
)
def test_vit_pos_embed_resized_like_irra(tmp_path, vit_state, size, stride):
    path = tmp_path / "vit.pt"
    torch.save(vit_state, path)
    enc = create_clip("tiny-vit", size, weights=str(path), vit_stride=stride)
    s = stride or 16
    grid = ((size[0] - 16) // s + 1, (size[1] - 16) // s + 1)
    got = enc.model.state_dict()
    expected = irra_resize(vit_state["visual.positional_embedding"], 14, grid)
    assert got["visual.positional_embedding"].shape == (1 + grid[0] * grid[1], 64)
    torch.testing.assert_close(got["visual.positional_embedding"], expected, atol=1e-6, rtol=0)
    assert_state_equal(got, vit_state, skip={"visual.positional_embedding"})


def test_resnet_attnpool_pos_embed_resized(tmp_path, rn_state):
    path = tmp_path / "rn.pt"
    torch.save(rn_state, path)
    enc = create_clip("tiny-rn", (256, 128), weights=str(path), rn_last_stride_1=True)
    key = "visual.attnpool.positional_embedding"
    got = enc.model.state_dict()
    torch.testing.assert_close(got[key], irra_resize(rn_state[key], 7, (16, 8)), atol=1e-6, rtol=0)
    assert_state_equal(got, rn_state, skip={key})
    same = create_clip("tiny-rn", (224, 224), weights=str(path))
    assert_state_equal(same.model.state_dict(), rn_state)


def _write(fmt: str, state: dict, path) -> dict:
    """Write ``state`` in format ``fmt``; return the fp32 values the loader should produce."""
    if fmt == "openai_torchscript":
        return save_openai_archive(state, path)
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        return state
    if fmt == "fp16":
        torch.save({k: v.half() for k, v in state.items()}, path)
        return {k: v.half().float() for k, v in state.items()}
    obj = {"module." + k: v for k, v in state.items()} if "module" in fmt else dict(state)
    if "wrapped" in fmt:
        obj = {"epoch": 3, "state_dict": obj}
    torch.save(obj, path)
    return state


@pytest.mark.parametrize(
    "fmt",
    ["plain", "fp16", "module", "wrapped", "wrapped_module", "openai_torchscript", "safetensors"],
)
def test_checkpoint_formats_load_strictly(tmp_path, vit_state, fmt):
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pt")
    expected = _write(fmt, vit_state, path)
    read = read_clip_state_dict(path)
    assert set(read) == set(vit_state)  # metadata dropped, prefixes stripped
    assert all(v.dtype == torch.float32 for v in read.values())
    enc = create_clip("tiny-vit", (224, 224), weights=str(path))
    assert_state_equal(enc.model.state_dict(), expected)


def test_openai_archive_matches_plain_after_resize(tmp_path, vit_state):
    stored = save_openai_archive(vit_state, tmp_path / "ViT.pt")
    torch.save(stored, tmp_path / "plain.pt")
    a = create_clip("tiny-vit", (256, 128), weights=str(tmp_path / "ViT.pt")).model.state_dict()
    b = create_clip("tiny-vit", (256, 128), weights=str(tmp_path / "plain.pt")).model.state_dict()
    assert_state_equal(a, b)


def test_shorter_context_cuts_text_positions(tmp_path, vit_state):
    path = tmp_path / "vit.pt"
    torch.save(vit_state, path)
    full = create_clip("tiny-vit", (224, 224), weights=str(path)).eval()
    short = create_clip("tiny-vit", (224, 224), weights=str(path), context_length=32).eval()
    assert torch.equal(short.model.positional_embedding, vit_state["positional_embedding"][:32])
    ids = open_clip.tokenize(["a man in a grey coat"])
    with torch.no_grad():
        torch.testing.assert_close(short.encode_text(ids[:, :32]), full.encode_text(ids))


@pytest.mark.parametrize("tag", ["openai", "laion2b_s34b_b88k"])
def test_hub_tags_rejected(tag):
    with pytest.raises(ClipWeightsError, match=tag) as err:
        create_clip("ViT-B-16", (256, 128), weights=tag)
    assert "hub" in str(err.value) and "local" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "ViT-B-16.pt"
    with pytest.raises(ClipWeightsError, match="not found") as err:
        create_clip("tiny-vit", (64, 32), weights=str(path))
    msg = str(err.value)
    assert str(path) in msg and "local checkpoint" in msg and "OpenAI" in msg
    assert "hub downloads are disabled" in msg


def test_weights_required_unless_random_init(tmp_path):
    with pytest.raises(ClipWeightsError, match="RANDOM_INIT") as err:
        create_clip("tiny-vit", (64, 32))
    assert "WEIGHTS" in str(err.value)
    path = tmp_path / "w.pt"
    path.write_bytes(b"")
    with pytest.raises(ClipWeightsError, match="exactly one"):
        create_clip("tiny-vit", (64, 32), weights=str(path), random_init=True)


def test_other_architecture_keys(tmp_path, rn_state):
    path = tmp_path / "rn.pt"
    torch.save(rn_state, path)
    with pytest.raises(ClipWeightsError, match="'tiny-vit'") as err:
        create_clip("tiny-vit", (224, 224), weights=str(path))
    msg = str(err.value)
    assert "visual.class_embedding" in msg and "visual.attnpool" in msg and str(path) in msg


def test_missing_and_unexpected_key_named(tmp_path, vit_state):
    state = {k: v for k, v in vit_state.items() if k != "logit_scale"}
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(ClipWeightsError, match="1 missing key") as err:
        create_clip("tiny-vit", (224, 224), weights=str(path))
    assert "logit_scale" in str(err.value) and "extra.weight" in str(err.value)


def test_shape_mismatch_named(tmp_path, vit_state):
    state = dict(vit_state)
    state["token_embedding.weight"] = state["token_embedding.weight"][:1000]
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(ClipWeightsError, match="shape mismatch") as err:
        create_clip("tiny-vit", (224, 224), weights=str(path))
    assert "token_embedding.weight: checkpoint (1000, 64) vs model (49408, 64)" in str(err.value)


class _Pickled(nn.Module):
    pass


@pytest.mark.parametrize(
    "content,match",
    [
        ([1, 2, 3], "holds a list"),
        ({"visual.proj": "text"}, "'visual.proj' is a str"),
        (_Pickled(), "Cannot read CLIP weights file"),  # refused by weights_only=True
        (b"not a checkpoint", "Cannot read CLIP weights file"),
    ],
)
def test_unreadable_files(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ClipWeightsError, match=match) as err:
        read_clip_state_dict(path)
    assert str(path) in str(err.value)
