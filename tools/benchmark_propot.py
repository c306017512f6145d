#!/usr/bin/env python
"""Per-iteration training time (and, on CUDA, peak memory) of Propot vs the baseline, measured
in the same process.

Both models come from configs/Propot/cuhk.yml with random weights and the same instance losses;
the baseline is the same config with ``MODEL.PROPOT.ENABLED False`` (Table 4 row 0). A third
variant computes the prototypes of all N identities every step (``BATCH_IDENTITIES_ONLY
False``, the literal reading of eqs. 2-6). Each variant is built, run for ``--warmup`` +
``--iters`` steps (forward, backward, Adam step) on synthetic batches and freed before the next,
so that its peak GPU memory (``torch.cuda.max_memory_allocated`` after a reset) is its own; this
repeats ``--rounds`` times, alternating the variants, and the median time per step is reported.
On CUDA the steps run under the trainer's autocast (``SOLVER.AMP``: bf16).

    # tiny CLIP on CPU (default), CUHK-PEDES-sized prototype set
    python tools/benchmark_propot.py
    # a quick check on CPU
    python tools/benchmark_propot.py --iters 2 --rounds 1 --warmup 1 --num-ids 500
    # the paper's setting: ViT-B/16 at 384x128, batch 64, bf16 autocast, with MLM
    python tools/benchmark_propot.py --device cuda --arch ViT-B-16 --size 384 128 --mlm

Targets: Propot <= 1.35x the baseline's step time; on GPU, peak memory under 24 GB.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from fastreid_ext.engine import build_cfg
from fastreid_ext.engine.step import resolve_amp_dtype
from fastreid_ext.engine.trainer import ExtTrainer
from fastreid_ext.solver import build_optimizer
from fastreid_ext.text import ClipTokenizer, mask_tokens

REPO = Path(__file__).resolve().parents[1]

WORDS = (
    "the woman man wears a red blue black white shirt coat jacket skirt pants shoes bag backpack "
    "with long short hair and is carrying walking holding glasses hat dark light grey"
).split()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--arch", default="", help="CLIP architecture (default: tiny-vit on CPU, ViT-B-16 on CUDA)"
    )
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="input size (default: 64 32 on CPU, 384 128 on CUDA)")  # fmt: skip
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--num-ids", type=int, default=11003, help="training identities N (CUHK: 11003)")
    p.add_argument("--iters", type=int, default=10, help="timed steps per model and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--mlm", action="store_true", help="add the MLM loss to both models")
    p.add_argument("--no-all-ids", action="store_true", help="skip the all-N-prototypes variant")
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.add_argument(
        "--no-fused-adam",
        action="store_true",
        help="use torch's default (foreach) Adam instead of the fused kernel the trainer uses "
        "(SOLVER.FUSED True)",
    )
    return p.parse_args()


def build(args: argparse.Namespace, opts: list) -> tuple:
    cuda = args.device == "cuda"
    arch = args.arch or ("ViT-B-16" if cuda else "tiny-vit")
    size = args.size or ((384, 128) if cuda else (64, 32))
    losses = '["SDM","ID","MLM"]' if args.mlm else '["SDM","ID"]'
    hw = f"[{size[0]},{size[1]}]"
    cfg = build_cfg(
        str(REPO / "configs" / "Propot" / "cuhk.yml"),
        [
            "MODEL.DEVICE", args.device, "MODEL.CLIP.NAME", arch, "MODEL.CLIP.RANDOM_INIT", "True",
            "INPUT.SIZE_TRAIN", hw, "INPUT.SIZE_TEST", hw, "MODEL.HEADS.NUM_CLASSES",
            str(args.num_ids), "MODEL.T2I.LOSSES", losses, "SOLVER.IMS_PER_BATCH", str(args.batch),
            # the trainer's mixed precision (SOLVER.AMP.DTYPE bf16 from the config) on CUDA
            "SOLVER.AMP.ENABLED", str(cuda), "SOLVER.FUSED", str(not args.no_fused_adam), *opts,
        ],
    )  # fmt: skip
    torch.manual_seed(0)
    model = ExtTrainer.build_model(cfg)
    if getattr(model, "propot_enabled", False):
        dim = model.backbone.embed_dim
        # sums of about six unit-scale features, as eq. (1) gives for CUHK-PEDES
        model.prototypes.set_initial(
            torch.randn(args.num_ids, dim, device=model.device) * 6,
            torch.randn(args.num_ids, dim, device=model.device) * 6,
        )
    model.train()
    optimizer = build_optimizer(cfg, model)
    return cfg, model, optimizer, size


def make_batches(args: argparse.Namespace, size, n: int = 4) -> list:
    gen = torch.Generator().manual_seed(1)
    tok = ClipTokenizer()
    batches = []
    for _ in range(n):
        caps = [
            " ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (23,), generator=gen))
            for _ in range(args.batch)
        ]
        ids = tok(caps)
        mlm = [mask_tokens(row, gen) for row in ids]
        batches.append(
            {
                "images": torch.rand(args.batch, 3, *size, generator=gen) * 255,
                "caption_ids": ids,
                # a random-sampler batch of CUHK-PEDES: almost every identity once
                "targets": torch.randint(0, args.num_ids, (args.batch,), generator=gen),
                "mlm_ids": torch.stack([m[0] for m in mlm]),
                "mlm_labels": torch.stack([m[1] for m in mlm]),
            }
        )
    return batches


def step(model, optimizer, batch, amp_dtype) -> None:
    """One training step as ``StepRunner.run_step`` runs it (autocast when ``amp_dtype``)."""
    ctx = torch.autocast("cuda", dtype=amp_dtype) if amp_dtype else nullcontext()
    with ctx:
        losses = model(batch)
    total = sum(v.float() for v in losses.values())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()


def measure(args, opts: list, batches: list, cuda: bool) -> dict:
    """Build one variant, run ``--warmup`` steps then ``--iters`` timed steps, free it.

    Returns the step times (s), the parameter count and, on CUDA, the peak memory allocated
    (GiB) from before the model is built to the last step (weights, Adam state, activations).
    """
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    cfg, model, opt, _ = build(args, opts)
    amp_dtype = resolve_amp_dtype(cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.DTYPE, model.device)
    times = []
    for i in range(args.warmup + args.iters):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(model, opt, batches[i % len(batches)], amp_dtype)
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    result = {
        "times": times,
        "params": sum(p.numel() for p in model.parameters()) / 1e6,
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
    }
    del model, opt
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return result


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    variants = {
        "baseline": ["MODEL.PROPOT.ENABLED", "False"],
        "propot": ["MODEL.PROPOT.BATCH_IDENTITIES_ONLY", "True"],
    }
    if not args.no_all_ids:
        variants["propot (all N prototypes)"] = ["MODEL.PROPOT.BATCH_IDENTITIES_ONLY", "False"]
    size = tuple(args.size or ((384, 128) if cuda else (64, 32)))
    batches = make_batches(args, size)
    if cuda:
        batches = [{k: v.cuda(non_blocking=True) for k, v in b.items()} for b in batches]

    # One variant at a time (built, measured, freed), so that the peak memory of each is its
    # own; the rounds alternate the variants to spread the load of a shared machine over all.
    results = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, opts in variants.items():
            results[name].append(measure(args, opts, batches, cuda))

    times = {name: [t for r in rs for t in r["times"]] for name, rs in results.items()}
    base = statistics.median(times["baseline"])
    dev = torch.cuda.get_device_name() if cuda else f"CPU, {args.threads} thread(s)"
    arch = args.arch or ("ViT-B-16" if cuda else "tiny-vit")
    losses = ["SDM", "ID", "MLM"] if args.mlm else ["SDM", "ID"]
    amp = results["baseline"][0]["amp"]
    amp = f"{amp} autocast" if amp != "fp32" else "fp32"
    print(
        f"device: {dev}; arch {arch} {size[0]}x{size[1]}, batch {args.batch}, "
        f"N = {args.num_ids} identities, losses {losses}, "
        f"{amp}, "
        f"{'foreach' if args.no_fused_adam else 'fused'} Adam; "
        f"{args.rounds} rounds x {args.iters} timed steps (+{args.warmup} warm-up) per variant"
    )
    header = f"{'model':<28}{'ms/step':>10}{'x baseline':>12}{'params (M)':>12}"
    print(header + (f"{'peak GiB':>10}" if cuda else ""))
    for name, rs in results.items():
        med = statistics.median(times[name])
        line = f"{name:<28}{med * 1e3:>10.1f}{med / base:>12.2f}{rs[0]['params']:>12.2f}"
        if cuda:
            line += f"{max(r['peak_gib'] for r in rs):>10.2f}"
        print(line)
    ratio = statistics.median(times["propot"]) / base
    met = "met" if ratio <= 1.35 else "NOT met"
    print(f"Propot / baseline step time: {ratio:.2f} (target <= 1.35: {met})")
    if cuda:
        peak = max(r["peak_gib"] for r in results["propot"])
        met = "met" if peak * 2**30 < 24e9 else "NOT met"
        print(f"Propot peak memory allocated: {peak:.2f} GiB (target < 24 GB: {met})")


if __name__ == "__main__":
    main()
