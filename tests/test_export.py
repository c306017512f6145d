"""Export of the encoders to ONNX and TorchScript (``fastreid_ext.export``, ``tools/export.py``):
the exported graphs compute the inference API's features -- at batch sizes other than the traced
one, after reloading the files, from image files preprocessed as documented -- for a ViT
text-image model at 384x128 and a ModifiedResNet CSDN model at 288x144; the record and the tool's
exit status say whether the check passed."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fastreid_ext.data.vi.base import INFRARED
from fastreid_ext.engine import build_cfg
from fastreid_ext.engine.checkpoint import ExtCheckpointer, build_model_info
from fastreid_ext.export import (
    RECORD_NAME,
    ExportError,
    export_encoders,
    load_torchscript,
    onnx_session,
    pick_trace_batch,
    random_token_ids,
)
from fastreid_ext.export import api as export_api
from fastreid_ext.inference import Predictor
from fastreid_ext.registry import TRAINER_REGISTRY, lookup
from fastreid_ext.text.tokenizer import EOT_ID, SOT_ID, ClipTokenizer
from fastreid_ext.tools import export as export_tool

from .conftest import REPO, run_isolated

ATOL = 1e-4
MODALITIES = ("visible", "infrared")
CONFIGS = REPO / "configs"
VIT = (CONFIGS / "Baseline" / "demo.yml", ["INPUT.SIZE_TRAIN", "[384,128]"], (384, 128))
CSDN_RN = (CONFIGS / "CSDN" / "demo.yml", ["INPUT.SIZE_TRAIN", "[288,144]"], (288, 144))
CAPTIONS = [
    "a woman in a red coat and black trousers carrying a white bag",
    "the man wears a blue shirt",
    "",
    "a person with long hair, grey shoes and a backpack " * 8,  # longer than 77 tokens
]


def _opts(spec, *extra: str) -> list:
    config, size_opts, (h, w) = spec
    return [*size_opts, "INPUT.SIZE_TEST", f"[{h},{w}]", "MODEL.HEADS.NUM_CLASSES", "4", *extra]


def _trained_like_checkpoint(config: Path, opts: list, folder: Path) -> Path:
    """A seeded random model of ``config`` saved as the trainer saves it; a CSDN infrared stem
    is moved away from the visible one (they start equal), so the two paths differ."""
    cfg = build_cfg(str(config), opts + ["OUTPUT_DIR", str(folder)])
    torch.manual_seed(0)
    model = lookup(TRAINER_REGISTRY, cfg.TRAINER.NAME, "TRAINER.NAME").build_model(cfg)
    if hasattr(model, "image_encoder"):
        with torch.no_grad():
            for p in model.image_encoder.stems[INFRARED].parameters():
                p.add_(0.1 * torch.randn_like(p))
    saver = ExtCheckpointer(model, str(folder), save_to_disk=True, model_info=build_model_info(cfg))
    saver.save("model_final")
    return folder / "model_final.pth"


def _exported(spec, folder: Path) -> SimpleNamespace:
    config, opts = spec[0], _opts(spec)
    weights = _trained_like_checkpoint(config, opts, folder)
    predictor = Predictor.from_config(str(config), str(weights), opts, device="cpu")
    report = export_encoders(predictor, str(folder / "export"), progress=False)
    return SimpleNamespace(
        config=config, opts=opts, weights=weights, predictor=predictor, report=report
    )


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> SimpleNamespace:
    """The Baseline demo model (tiny-vit) at 384x128, both encoders in both formats."""
    return _exported(VIT, tmp_path_factory.mktemp("export_vit"))


@pytest.fixture(scope="module")
def csdn(tmp_path_factory) -> SimpleNamespace:
    """The CSDN demo model (tiny-rn, test-time flip) at 288x144, both modalities, both formats."""
    return _exported(CSDN_RN, tmp_path_factory.mktemp("export_csdn"))


def _runners(report, encoder: str) -> dict:
    """``{format: callable}`` running the files of ``encoder`` as a user loads them."""
    files = report.files[encoder]
    session = onnx_session(files["onnx"])
    scripted = load_torchscript(files["torchscript"])
    name = session.get_inputs()[0].name

    def run_scripted(x):
        with torch.no_grad():
            return scripted(x)

    return {
        "onnx": lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0]),
        "torchscript": run_scripted,
    }


def _assert_close(out: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    assert out.shape == ref.shape, what
    diff = float((out - ref).abs().max())
    assert diff <= ATOL, f"{what}: max abs diff {diff:.3g} > {ATOL}"


# --------------------------------------------------------------------------- equal features
def test_vit_encoders_equal_the_predictor_features(vit):
    assert vit.report.record["trace_batch"] == 2
    gen = torch.Generator().manual_seed(5)
    for fmt, run in _runners(vit.report, "image").items():
        for batch in (1, 4):  # neither is the traced batch
            x = torch.rand((batch, 3, 384, 128), generator=gen) * 255
            ref = vit.predictor.encode_images(x, progress=False)
            out = run(x)
            _assert_close(out, ref, f"image {fmt} batch {batch}")
            assert torch.allclose(out.norm(dim=1), torch.ones(batch), atol=1e-5)
    # captions through the documented tokenizer, EOT at different positions (one truncated)
    ids = ClipTokenizer(vit.predictor.cfg.MODEL.CLIP.CONTEXT_LENGTH)(CAPTIONS)
    assert ids.dtype == torch.int64 and ids.shape == (4, 77)
    ref = vit.predictor.encode_texts(CAPTIONS, progress=False)
    for fmt, run in _runners(vit.report, "text").items():
        _assert_close(run(ids), ref, f"text {fmt} batch 4")
        _assert_close(run(ids[:1]), ref[:1], f"text {fmt} batch 1")
    # different captions and images give different features (the check is not vacuous)
    assert float((ref[0] - ref[1]).abs().max()) > 100 * ATOL


def test_csdn_encoders_follow_their_modality(csdn):
    gen = torch.Generator().manual_seed(6)
    x = torch.rand((3, 3, 288, 144), generator=gen) * 255
    refs = {m: csdn.predictor.encode_images(x, modality=m, progress=False) for m in MODALITIES}
    assert refs["visible"].shape == (3, 2 * (512 + 64))  # (BN(GeM) + f_p) x test-time flip
    assert float((refs["visible"] - refs["infrared"]).abs().max()) > 100 * ATOL
    for modality in MODALITIES:
        for fmt, run in _runners(csdn.report, modality).items():
            for rows in (slice(0, 1), slice(0, 3)):
                out = run(x[rows])
                _assert_close(out, refs[modality][rows], f"{modality} {fmt} {rows}")


def test_documented_preprocessing_reproduces_the_predictor_on_image_files(vit, tmp_path):
    """The README's recipe (PIL bicubic resize to INPUT.SIZE_TEST, float32 RGB in [0, 255],
    channels first) fed to the ONNX file gives the features of ``encode_images(paths)``."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(150, 61), (97, 40), (400, 150)]):
        path = tmp_path / f"person_{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    record = json.loads((Path(vit.report.record_path)).read_text())
    h, w = record["preprocessing"]["image"]["size"]
    assert (h, w) == (384, 128)
    pixels = np.stack(
        [
            np.asarray(
                Image.open(p).convert("RGB").resize((w, h), Image.BICUBIC), dtype=np.float32
            ).transpose(2, 0, 1)
            for p in paths
        ]
    )
    session = onnx_session(vit.report.files["image"]["onnx"])
    ref = vit.predictor.encode_images(paths, progress=False, num_workers=0)
    _assert_close(torch.from_numpy(session.run(None, {"images": pixels})[0]), ref, "files")
    wrong = session.run(None, {"images": pixels / 255.0})[0]  # a [0, 1] input is not accepted
    assert float(np.abs(wrong - ref.numpy()).max()) > 100 * ATOL


# --------------------------------------------------------------------------- the record
def test_record_describes_files_inputs_and_checks(vit):
    folder = Path(vit.report.record_path).parent
    record = json.loads((folder / RECORD_NAME).read_text())
    assert record["passed"] is True and vit.report.passed
    assert record["fingerprint"] == vit.predictor.fingerprint
    assert record["method"] == "ClipTextImageBaseline" and record["task"] == "text-image"
    assert record["batch_sizes"] == [1, 3] and record["trace_batch"] not in (1, 3)
    assert record["atol"] == ATOL and record["opset"] == 17 and record["exporter"] == "torchscript"
    image, text = record["encoders"]["image"], record["encoders"]["text"]
    assert image["input"] == {"name": "images", "shape": ["batch", 3, 384, 128], "dtype": "float32"}
    assert text["input"] == {"name": "token_ids", "shape": ["batch", 77], "dtype": "int64"}
    assert image["output"]["shape"] == ["batch", 64] == text["output"]["shape"]
    for entry, stem in ((image, "image_encoder"), (text, "text_encoder")):
        assert entry["files"] == {"onnx": f"{stem}.onnx", "torchscript": f"{stem}.torchscript.pt"}
        assert all((folder / name).is_file() for name in entry["files"].values())
    checks = {(c["encoder"], c["format"], c["batch"]) for c in record["checks"]}
    assert checks == {
        (e, f, b) for e in ("image", "text") for f in ("onnx", "torchscript") for b in (1, 3)
    }
    assert all(c["ok"] and 0 <= c["max_abs_diff"] <= ATOL for c in record["checks"])
    pre = record["preprocessing"]
    assert pre["text"]["context_length"] == 77 and pre["text"]["eot_id"] == EOT_ID
    assert pre["image"]["pixel_mean"] == list(vit.predictor.cfg.MODEL.PIXEL_MEAN)
    assert "bicubic" in pre["image"]["test_transform"][0]
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporaries


def test_random_token_ids_are_shaped_like_the_tokenizer():
    ids = random_token_ids(64, 77, torch.Generator().manual_seed(0))
    assert ids.shape == (64, 77) and ids.dtype == torch.int64
    eot = ids.argmax(dim=1)
    assert (ids[:, 0] == SOT_ID).all() and (ids[torch.arange(64), eot] == EOT_ID).all()
    assert ((ids == EOT_ID).sum(dim=1) == 1).all()
    after = torch.arange(77).unsqueeze(0) > eot.unsqueeze(1)
    assert (ids[after] == 0).all() and (ids[~after] > 0).all()
    assert len(set(eot.tolist())) > 10  # the EOT gather is checked at many positions
    assert pick_trace_batch([1, 3]) == 2 and pick_trace_batch([2, 3, 1]) == 4


# --------------------------------------------------------------------------- errors, tool
def test_bad_encoders_choice_names_the_valid_ones(csdn, vit, tmp_path, capsys):
    out = tmp_path / "none"
    with pytest.raises(ValueError, match=r"'text' is not an encoder of CSDN .*visible, infrared"):
        export_encoders(csdn.predictor, str(out), encoders=["text"], progress=False)
    with pytest.raises(ValueError, match=r"'visible' is not an encoder of .*image, text"):
        export_encoders(vit.predictor, str(out), encoders=["image", "visible"], progress=False)
    argv = ["--config-file", str(csdn.config), "--weights", str(csdn.weights), "--output"]
    code = export_tool.main([*argv, str(out), "--encoders", "image", "--", *csdn.opts])
    assert code == 2
    assert "'image' is not an encoder of CSDN" in capsys.readouterr().err
    code = export_tool.main([*argv, str(out), "--encoders", "imagee", "--", *csdn.opts])
    assert code == 2
    assert "unknown ['imagee']: choose from image, text (text-image)" in capsys.readouterr().err
    # config overrides swallowed by the list option: the message says how to separate them
    code = export_tool.main([*argv, str(out), "--encoders", "visible", *csdn.opts])
    assert code == 2
    assert "need a '--' before them" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        export_tool.main([*argv, str(out), "--batch-sizes", "1", *csdn.opts])
    assert "not an int: 'INPUT.SIZE_TRAIN'" in capsys.readouterr().err
    assert not out.exists()


def test_tool_exit_status_and_record(vit, tmp_path, monkeypatch, capsys):
    argv = ["--config-file", str(vit.config), "--weights", str(vit.weights), "--encoders", "image"]
    argv += ["--format", "torchscript", "--batch-sizes", "1", "2"]
    good = tmp_path / "good"
    assert export_tool.main([*argv, "--output", str(good), *vit.opts]) == 0
    record = json.loads((good / RECORD_NAME).read_text())
    assert record["passed"] and record["trace_batch"] == 3
    assert (
        list(record["encoders"]) == ["image"] and "checks:    2/2 passed" in capsys.readouterr().out
    )

    # a file that disagrees with PyTorch: the reference is moved by 1e-3 for one batch size
    original = export_api.reference_features

    def shifted(predictor, spec, inputs):
        ref = original(predictor, spec, inputs)
        return ref + 1e-3 if inputs.shape[0] == 2 else ref

    monkeypatch.setattr(export_api, "reference_features", shifted)
    bad = tmp_path / "bad"
    assert export_tool.main([*argv, "--output", str(bad), *vit.opts]) == 1
    err = capsys.readouterr().err
    assert "image encoder, torchscript, batch 2: max abs diff 0.001" in err
    record = json.loads((bad / RECORD_NAME).read_text())
    assert record["passed"] is False
    assert [c["ok"] for c in record["checks"]] == [True, False]


def test_exporter_failure_leaves_no_record(vit, tmp_path):
    """An exporter error names the encoder and opset, and the folder keeps no record of an
    earlier export (its files may have been replaced)."""
    out = tmp_path / "export"
    report = export_encoders(
        vit.predictor, str(out), formats=["torchscript"], encoders=["image"], progress=False
    )
    assert report.passed and (out / RECORD_NAME).is_file()
    with pytest.raises(
        ExportError, match="(?s)image encoder failed .*opset 13.*added in version 14"
    ):
        export_encoders(
            vit.predictor,
            str(out),
            formats=["onnx"],
            encoders=["image"],
            opset=13,
            progress=False,
        )
    assert not (out / RECORD_NAME).exists()
    with pytest.raises(ValueError, match="atol: must be >= 0"):
        export_encoders(vit.predictor, str(out), atol=float("nan"), progress=False)
    with pytest.raises(ValueError, match=r"batch_sizes: repeated size in \[1, 1\]"):
        export_encoders(vit.predictor, str(out), batch_sizes=[1, 1], progress=False)


def test_tool_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_tool.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--config-file",
        "--weights",
        "--output",
        "--format",
        "--encoders",
        "--opset",
        "--batch-sizes",
        "--atol",
        "--exporter",
        "visible infrared",
        "export.json",
    ):
        assert flag in text, flag


# --------------------------------------------------------------------------- slow: subprocess
@pytest.mark.slow
def test_tool_subprocess_resnet_text_image_model(tmp_path):
    """``python tools/export.py`` on a ModifiedResNet text-image model (attention-pool image
    tower) at 288x144: exit status 0, every check in the record within 1e-4."""
    spec = (
        CONFIGS / "Baseline" / "demo.yml",
        ["INPUT.SIZE_TRAIN", "[288,144]", "MODEL.CLIP.NAME", "tiny-rn"],
        (288, 144),
    )
    opts = _opts(spec)
    weights = _trained_like_checkpoint(spec[0], opts, tmp_path)
    out = tmp_path / "export"
    cmd = [
        sys.executable,
        str(REPO / "tools" / "export.py"),
        "--config-file",
        str(spec[0]),
        "--weights",
        str(weights),
        "--output",
        str(out),
        "--batch-sizes",
        "1",
        "5",
        "--",
        *opts,
    ]
    run = run_isolated(cmd, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["passed"] and len(record["checks"]) == 8
    assert record["encoders"]["image"]["input"]["shape"] == ["batch", 3, 288, 144]
    assert all(c["max_abs_diff"] <= ATOL for c in record["checks"])


@pytest.mark.slow
def test_dynamo_exporter(vit, csdn, tmp_path):
    """The torch.export-based exporter: the ViT text-image encoders pass; CSDN's modality row
    selection cannot be exported by it, and the error says which exporter does."""
    report = export_encoders(
        vit.predictor,
        str(tmp_path / "vit"),
        formats=["onnx"],
        opset=18,
        exporter="dynamo",
        progress=False,
    )
    assert report.passed and len(report.checks) == 4
    with pytest.raises(RuntimeError, match="(?s)exporter dynamo.*try exporter 'torchscript'"):
        export_encoders(
            csdn.predictor,
            str(tmp_path / "csdn"),
            formats=["onnx"],
            encoders=["visible"],
            opset=18,
            exporter="dynamo",
            progress=False,
        )
