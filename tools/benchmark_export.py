#!/usr/bin/env python3
"""CPU latency of the exported encoders: PyTorch (the inference API) vs onnxruntime vs TorchScript.

Models (random weights, saved as a trained checkpoint, exported with
``fastreid_ext.export.export_encoders`` and verified as ``tools/export.py`` does):

* default, tiny: the Baseline demo (tiny-vit) at 384x128 (image + text encoders) and the CSDN
  demo (tiny-rn, test-time flip) at 288x144 (visible encoder);
* ``--real``: ViT-B/16 (``configs/Baseline/cuhk.yml``) at 384x128 and CSDN's RN50
  (``configs/CSDN/sysu.yml``) at 288x144, the paper sizes.

For each encoder and ``--batch-sizes`` the script prints the median latency of ``--repeats``
runs (after one warm-up) of: "pytorch", the Predictor's path (``encode_images`` /
``encode_batch``: eager model, float32, no autograd); "onnxruntime", the ONNX file on the
``CPUExecutionProvider``; "torchscript", the frozen TorchScript file; and the largest absolute
difference of the two exports to PyTorch. ``--threads`` sets torch's and onnxruntime's threads.

Examples:
    OMP_NUM_THREADS=1 python tools/benchmark_export.py
    python tools/benchmark_export.py --real --threads 2 --batch-sizes 1 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Sequence

import torch

from fastreid_ext.engine import build_cfg
from fastreid_ext.engine.checkpoint import ExtCheckpointer, build_model_info
from fastreid_ext.export import export_encoders, load_torchscript, onnx_session
from fastreid_ext.export.formats import run_onnx, run_torchscript
from fastreid_ext.export.verify import random_inputs, reference_features
from fastreid_ext.export.wrappers import encoder_spec
from fastreid_ext.inference import Predictor
from fastreid_ext.registry import TRAINER_REGISTRY, lookup

REPO = Path(__file__).resolve().parents[1]
# (label, config, overrides, encoders)
TINY = [
    (
        "Baseline tiny-vit 384x128",
        "configs/Baseline/demo.yml",
        ["INPUT.SIZE_TRAIN", "[384,128]", "INPUT.SIZE_TEST", "[384,128]"],
        ["image", "text"],
    ),
    (
        "CSDN tiny-rn 288x144",
        "configs/CSDN/demo.yml",
        ["INPUT.SIZE_TRAIN", "[288,144]", "INPUT.SIZE_TEST", "[288,144]"],
        ["visible"],
    ),
]
REAL_OPTS = ["MODEL.CLIP.WEIGHTS", "", "MODEL.CLIP.RANDOM_INIT", "True", "MODEL.DEVICE", "cpu"]
REAL = [
    ("Baseline ViT-B/16 384x128", "configs/Baseline/cuhk.yml", REAL_OPTS, ["image", "text"]),
    ("CSDN RN50 288x144", "configs/CSDN/sysu.yml", REAL_OPTS, ["visible"]),
]


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--real", action="store_true", help="the paper-size ViT-B/16 and RN50 models")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (allocations, onnxruntime's first-run set-up, TorchScript profiling)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _predictor(config: str, opts: Sequence[str], folder: Path) -> Predictor:
    opts = [*opts, "MODEL.HEADS.NUM_CLASSES", "16"]
    cfg = build_cfg(str(REPO / config), [*opts, "OUTPUT_DIR", str(folder)])
    torch.manual_seed(0)
    model = lookup(TRAINER_REGISTRY, cfg.TRAINER.NAME, "TRAINER.NAME").build_model(cfg)
    saver = ExtCheckpointer(model, str(folder), save_to_disk=True, model_info=build_model_info(cfg))
    saver.save("model_final")
    return Predictor.from_config(str(REPO / config), str(folder / "model_final.pth"), opts, "cpu")


def bench_model(label, config, opts, encoders, args, folder: Path) -> None:
    predictor = _predictor(config, opts, folder)
    start = time.perf_counter()
    report = export_encoders(predictor, str(folder / "export"), encoders=encoders, progress=False)
    print(
        f"\n{label}: exported and verified in {time.perf_counter() - start:.1f} s "
        f"({'passed' if report.passed else 'FAILED'})"
    )
    print(
        "| encoder | batch | pytorch ms | onnxruntime ms | torchscript ms | ort speed-up "
        "| max diff ort / ts |"
    )
    print("|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(args.seed)
    for name in encoders:
        spec = encoder_spec(predictor, name)
        session = onnx_session(report.files[name]["onnx"], threads=args.threads)
        scripted = load_torchscript(report.files[name]["torchscript"])
        for batch in args.batch_sizes:
            x = random_inputs(spec, batch, gen)
            print(_cell(predictor, spec, session, scripted, x, args.repeats))


def _cell(predictor, spec, session, scripted, x: torch.Tensor, repeats: int) -> str:
    """One table row: latencies of the three runtimes and the exports' differences."""
    ref = reference_features(predictor, spec, x)
    d_ort = float((run_onnx(session, spec, x) - ref).abs().max())
    d_ts = float((run_torchscript(scripted, x) - ref).abs().max())
    t_pt = _median_ms(lambda: reference_features(predictor, spec, x), repeats)
    t_ort = _median_ms(lambda: run_onnx(session, spec, x), repeats)
    t_ts = _median_ms(lambda: run_torchscript(scripted, x), repeats)
    return (
        f"| {spec.name} | {x.shape[0]} | {t_pt:.1f} | {t_ort:.1f} | {t_ts:.1f} | "
        f"{t_pt / t_ort:.2f}x | {d_ort:.1e} / {d_ts:.1e} |"
    )


def main(argv: List[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    import fastreid_ext  # noqa: F401  (registration)

    with tempfile.TemporaryDirectory(prefix="benchmark_export_") as tmp:
        for i, (label, config, opts, encoders) in enumerate(REAL if args.real else TINY):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            bench_model(label, config, opts, encoders, args, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
