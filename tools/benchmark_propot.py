#!/usr/bin/env python
"""Per-iteration training time of Propot vs the baseline, measured in the same process.

Both models come from configs/Propot/cuhk.yml with random weights and the same instance losses;
the baseline is the same config with ``MODEL.PROPOT.ENABLED False`` (Table 4 row 0). A third
variant computes the prototypes of all N identities every step (``BATCH_IDENTITIES_ONLY
False``, the literal reading of eqs. 2-6). Steps (forward, backward, Adam step) on synthetic
batches alternate between the models, and the median time per step is reported.

    # tiny CLIP on CPU (default), CUHK-PEDES-sized prototype set
    python tools/benchmark_propot.py
    # the paper's setting: ViT-B/16 at 384x128, batch 64, bf16 autocast, with MLM
    python tools/benchmark_propot.py --device cuda --arch ViT-B-16 --size 384 128 --mlm

Target: Propot <= 1.35x the baseline's step time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from fastreid_ext.engine import build_cfg
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
        "--fused-adam",
        action="store_true",
        help="rebuild every optimizer as torch's fused Adam (the trainer uses the default "
        "foreach implementation)",
    )
    return p.parse_args()


def build(args: argparse.Namespace, opts: list) -> tuple:
    cuda = args.device == "cuda"
    arch = args.arch or ("ViT-B-16" if cuda else "tiny-vit")
    size = args.size or ((384, 128) if cuda else (64, 32))
    losses = '["SDM","ID","MLM"]' if args.mlm else '["SDM","ID"]'
    cfg = build_cfg(
        str(REPO / "configs" / "Propot" / "cuhk.yml"),
        [
            "MODEL.DEVICE", args.device, "MODEL.CLIP.NAME", arch, "MODEL.CLIP.RANDOM_INIT", "True",
            "INPUT.SIZE_TRAIN", f"[{size[0]},{size[1]}]", "INPUT.SIZE_TEST", f"[{size[0]},{size[1]}]",
            "MODEL.HEADS.NUM_CLASSES", str(args.num_ids), "MODEL.T2I.LOSSES", losses,
            "SOLVER.IMS_PER_BATCH", str(args.batch), "SOLVER.AMP.ENABLED", str(cuda), *opts,
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
    if args.fused_adam:
        groups = [
            {k: v for k, v in g.items() if k not in ("fused", "foreach")}
            for g in optimizer.param_groups
        ]
        optimizer = type(optimizer)(groups, lr=cfg.SOLVER.BASE_LR, fused=True)
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


def step(model, optimizer, batch, cuda: bool) -> None:
    ctx = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if cuda
        else torch.autocast("cpu", enabled=False)
    )
    with ctx:
        losses = model(batch)
    total = sum(v.float() for v in losses.values())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()


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
    models = {}
    for name, opts in variants.items():
        cfg, model, opt, size = build(args, opts)
        models[name] = (model, opt)
    batches = make_batches(args, size)
    if cuda:
        batches = [{k: v.cuda(non_blocking=True) for k, v in b.items()} for b in batches]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for model, opt in models.values():
        for i in range(args.warmup):
            step(model, opt, batches[i % len(batches)], cuda)
    sync()
    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, (model, opt) in models.items():
            for i in range(args.iters):
                sync()
                t0 = time.perf_counter()
                step(model, opt, batches[i % len(batches)], cuda)
                sync()
                times[name].append(time.perf_counter() - t0)

    base = statistics.median(times["baseline"])
    dev = torch.cuda.get_device_name() if cuda else f"CPU, {args.threads} thread(s)"
    print(
        f"device: {dev}; arch {cfg.MODEL.CLIP.NAME} {size[0]}x{size[1]}, batch {args.batch}, "
        f"N = {args.num_ids} identities, losses {list(cfg.MODEL.T2I.LOSSES)}, "
        f"{'bf16 autocast' if cuda else 'fp32'}, {'fused' if args.fused_adam else 'foreach'} Adam"
    )
    print(f"{'model':<28}{'ms/step':>10}{'x baseline':>12}{'params (M)':>12}")
    for name, (model, _) in models.items():
        med = statistics.median(times[name])
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name:<28}{med * 1e3:>10.1f}{med / base:>12.2f}{params:>12.2f}")
    ratio = statistics.median(times["propot"]) / base
    print(
        f"Propot / baseline step time: {ratio:.2f} (target <= 1.35: {'met' if ratio <= 1.35 else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
