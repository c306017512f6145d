"""One-command GPU check (``tools/gpu_check.py``): every method at real size, the trainer's step
against a plain loop, the evaluation and clustering floors, fp16 and bf16 AMP; JSON + markdown.

GPU mode (default ``--device cuda``): Baseline+MLM, Propot (11,003 identities) and CPCL with CLIP
ViT-B/16 at 384x128, batch 64; CSDN phase 3 with RN50 at 288x144 (``methods.METHODS``), random
CLIP weights of the real architecture (``MODEL.CLIP.RANDOM_INIT``), synthetic batches in memory.
Per method and AMP dtype (bf16; fp16 with the trainer's GradScaler): trainer-step and plain-loop
step time, their throughput ratio (target >= 0.95), peak CUDA memory, and the loss finite and
falling over the run (mean of the last 5 steps < mean of the first 5). Then text-to-image metrics
at ICFG-PEDES size (19,848 x 19,848) and CPCL's pseudo labels of 68,126 features (CUHK-PEDES
training captions) on the GPU against their matrix-product floor. A time budget (``--budget-s``,
480 s by default) skips what would not fit and says so in the report.

``--device cpu --tiny``: the same code with tiny-vit / tiny-rn at 64x32, few steps, small N;
CPU autocast (bf16, fp16 with a CPU GradScaler) runs the AMP paths. A slow-tier test runs it.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch

from ..utils.atomic_io import atomic_json_dump, atomic_write_text
from ..utils.progress import progress
from .floors import T2I_SIZES, pseudo_labels_vs_floor, t2i_vs_floor
from .methods import METHODS, build_method, make_batches
from .steps import compare_loops

__all__ = ["CheckSettings", "settings_for", "run_gpu_check", "markdown_report", "main"]

CUHK_TRAIN_CAPTIONS = 68126
logger = logging.getLogger(__name__)


@dataclass
class CheckSettings:
    """Sizes of one check run (``settings_for`` gives the GPU and the tiny ones)."""

    device: str
    tiny: bool
    steps: int  # steps per block; each of the two loops runs steps * rounds
    rounds: int
    amps: List[str]
    fp16_methods: tuple  # the methods run in fp16 (tiny: one, CPU fp16 kernels are slow)
    t2i_sizes: tuple
    t2i_name: str
    t2i_repeat: int
    cluster_num: int
    cluster_ids: int
    budget_s: float
    lr: Optional[float]  # None: the config's SOLVER.BASE_LR


def settings_for(device: str, tiny: bool, budget_s: float) -> CheckSettings:
    if tiny:
        return CheckSettings(
            device, True, 3, 2, ["bf16", "fp16"], ("CPCL",), (600, 300, 60, 2.8, 0.5, 1.6, 0.15),
            "tiny (ICFG layout)", 2, 1500, 60, budget_s, 1e-3,
        )  # fmt: skip
    return CheckSettings(
        device, False, 25, 2, ["bf16", "fp16"], tuple(METHODS), T2I_SIZES["icfg"], "ICFG-PEDES", 3,
        CUHK_TRAIN_CAPTIONS, 11003, budget_s, 1e-4,
    )  # fmt: skip


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _method_row(name: str, amp: str, s: CheckSettings) -> Dict[str, Any]:
    device = torch.device(s.device)
    _free(device)
    extra = ["SOLVER.WARMUP_EPOCHS", "0.0"]  # the loss must move within the few steps
    if s.lr is not None:
        extra += ["SOLVER.BASE_LR", str(s.lr)]
    built = build_method(name, s.device, s.tiny, extra)
    batches = make_batches(built, 2, s.device)
    row = compare_loops(built, batches, amp, s.steps, s.rounds)
    spec = METHODS[name]
    row.update(
        method=name,
        arch=built.cfg.MODEL.CLIP.NAME,
        size=list(built.size),
        batch=built.batch,
        num_ids=built.num_ids,
        params_m=sum(p.numel() for p in built.model.parameters()) / 1e6,
        config=spec.config,
    )
    del built, batches
    _free(device)
    return row


def _run_job(
    report: Dict[str, Any], kind: str, name: str, amp: str, s: CheckSettings,
    device: torch.device,
) -> None:  # fmt: skip
    if kind == "method":
        report["methods"].append(_method_row(name, amp, s))
    elif kind == "t2i":
        row = t2i_vs_floor(s.t2i_sizes, device, s.t2i_repeat)
        report["floors"].append({"what": f"T2I metrics, {name}", **row})
    else:
        row = pseudo_labels_vs_floor(s.cluster_num, s.cluster_ids, device)
        report["floors"].append({"what": f"CPCL pseudo labels, N={name}", **row})


def run_gpu_check(s: CheckSettings) -> Dict[str, Any]:
    """Run every part that fits the budget; the report as a JSON-able dict."""
    device = torch.device(s.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (use --device cpu --tiny)")
    start = time.perf_counter()
    report: Dict[str, Any] = {
        "mode": "tiny" if s.tiny else "real size",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        "load_average_start": list(os.getloadavg()),
        "budget_s": s.budget_s,
        "steps_per_loop": s.steps * s.rounds,
        "methods": [],
        "floors": [],
        "skipped": [],
        "errors": [],
    }
    jobs = [
        ("method", name, amp)
        for amp in s.amps
        for name in METHODS
        if amp != "fp16" or name in s.fp16_methods
    ]
    jobs += [("t2i", s.t2i_name, ""), ("pseudo_labels", str(s.cluster_num), "")]
    longest = 0.0
    for kind, name, amp in progress(jobs, desc="gpu_check"):
        elapsed = time.perf_counter() - start
        if elapsed + longest > s.budget_s:
            report["skipped"].append(f"{kind} {name} {amp}".strip() + " (time budget)")
            continue
        t0 = time.perf_counter()
        try:
            _run_job(report, kind, name, amp, s, device)
        except Exception as exc:  # one failing part must not lose the others' numbers
            logger.exception("gpu_check: %s %s %s failed", kind, name, amp)
            report["errors"].append(f"{kind} {name} {amp}: {type(exc).__name__}: {exc}")
            _free(device)
        longest = max(longest, time.perf_counter() - t0)
    report["elapsed_s"] = time.perf_counter() - start
    report["load_average_end"] = list(os.getloadavg())
    return report


def markdown_report(report: Dict[str, Any]) -> str:
    """The report's two tables (and what was skipped) as markdown."""
    lines = [
        f"GPU check ({report['mode']}) on {report['device']}, torch {report['torch']}, "
        f"{report['elapsed_s']:.0f} s, load average {report['load_average_start'][0]:.1f}",
        "",
        "| method | arch | input | batch | AMP | trainer step (ms) | plain step (ms) "
        "| throughput ratio | peak mem (MiB) | loss first 5 -> last 5 | finite & falling |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["methods"]:
        lines.append(
            f"| {r['method']} | {r['arch']} | {r['size'][0]}x{r['size'][1]} | {r['batch']} "
            f"| {r['amp']} | {1000 * r['trainer_step_s']:.1f} | {1000 * r['plain_step_s']:.1f} "
            f"| {r['throughput_ratio']:.3f} | {r['peak_memory_mib']:.0f} "
            f"| {r['loss_first5']:.4g} -> {r['loss_last5']:.4g} "
            f"| {'yes' if r['loss_finite'] and r['loss_falling'] else 'NO'} |"
        )
    lines += ["", "| what | size | matmul floor (s) | time (s) | ratio |", "|---|---|---|---|---|"]
    for f in report["floors"]:
        size = f"{f['queries']}x{f['gallery']}" if "queries" in f else f"{f['num']}^2"
        time_s = f.get("metrics_s", f.get("pseudo_labels_s"))
        lines.append(
            f"| {f['what']} | {size} | {f['matmul_s']:.4f} | {time_s:.4f} | {f['ratio']:.2f} |"
        )
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(report["skipped"])]
    if report["errors"]:
        lines += ["", "FAILED: " + "; ".join(report["errors"])]
    return "\n".join(lines) + "\n"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--tiny", action="store_true", help="tiny models and sizes (CI on CPU)")
    p.add_argument("--output", default="output/gpu_check", help="folder for the JSON and table")
    p.add_argument("--budget-s", type=float, default=480.0, help="time budget in seconds")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    if args.device == "cpu" and not args.tiny:
        raise SystemExit("--device cpu needs --tiny (the real sizes are for a GPU)")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    report = run_gpu_check(settings_for(args.device, args.tiny, args.budget_s))
    os.makedirs(args.output, exist_ok=True)
    atomic_json_dump(report, os.path.join(args.output, "gpu_check.json"), indent=1)
    table = markdown_report(report)
    atomic_write_text(os.path.join(args.output, "gpu_check.md"), table)
    print(table)
    print(f"wrote {args.output}/gpu_check.json and gpu_check.md")
    if report["errors"]:
        raise SystemExit(f"gpu_check: {len(report['errors'])} part(s) failed: {report['errors']}")
    return report
