#!/usr/bin/env python3
"""RegDB protocol: one model per trial (1..10), reported as the mean ± std over trials.

Trial t trains with ``DATASETS.VI.REGDB_TRIAL t`` and ``OUTPUT_DIR <output-root>/trial<t>``
(``tools/train_net.py --resume``, so an interrupted trial continues; trials whose
``results.json`` exists are skipped -- delete a trial's folder to train it again). The summary reads every trial's
``results.json`` (the last-epoch metrics of train_net), prints mean ± sample standard deviation
(n - 1 in the denominator; 0 for a single trial) of each metric present in all of them, and
writes ``<output-root>/summary.json``.

Examples:
    python tools/regdb_trials.py --config-file configs/CSDN/regdb.yml \\
        --output-root output/csdn/regdb DATASETS.ROOT /data MODEL.CLIP.WEIGHTS /weights/RN50.pt
    python tools/regdb_trials.py --output-root output/csdn/regdb --summarize-only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from collections import OrderedDict
from typing import Dict, List, Mapping, Sequence, Tuple

TRAIN_NET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_net.py")
#: Trial-independent bookkeeping entries of results.json left out of the summary.
SKIPPED_KEYS = ("metric",)


def parse_trials(spec: str) -> List[int]:
    """``"1-10"``, ``"1,3,5"`` or ``"2"`` -> sorted trials, each in 1..10."""
    trials = set()
    for part in spec.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"--trials: cannot read '{spec}' (e.g. 1-10 or 1,3,5)")
        trials.update(range(int(lo), int(hi or lo) + 1))
    if not trials or min(trials) < 1 or max(trials) > 10:
        raise ValueError(f"--trials: RegDB trials are 1..10, got '{spec}'")
    return sorted(trials)


def trial_dir(output_root: str, trial: int) -> str:
    """OUTPUT_DIR of one trial."""
    return os.path.join(output_root, f"trial{trial}")


def read_trial_results(output_root: str, trials: Sequence[int]) -> Dict[int, Dict[str, float]]:
    """``{trial: flat metrics}`` from ``<output_root>/trial<t>/results.json`` (a results file
    holding several test datasets contributes its first one).

    Raises:
        FileNotFoundError: naming every missing results.json.
    """
    missing = [trial_dir(output_root, t) for t in trials]
    missing = [os.path.join(d, "results.json") for d in missing]
    missing = [p for p in missing if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError("missing RegDB trial results: " + ", ".join(missing))
    out = {}
    for t in trials:
        with open(os.path.join(trial_dir(output_root, t), "results.json")) as f:
            res = json.load(f)
        if res and not any(isinstance(v, (int, float)) for v in res.values()):
            res = next(iter(res.values()))
        out[t] = {k: float(v) for k, v in res.items() if isinstance(v, (int, float))}
    return out


def summarize(results: Sequence[Mapping[str, float]]) -> OrderedDict[str, Tuple[float, float]]:
    """``{metric: (mean, sample std)}`` over trials for the metrics present in every trial, in
    the first trial's key order (``metric``, a copy of R1, is left out)."""
    if not results:
        raise ValueError("summarize needs the results of at least one trial")
    keys = [k for k in results[0] if k not in SKIPPED_KEYS and all(k in r for r in results)]
    out: OrderedDict[str, Tuple[float, float]] = OrderedDict()
    n = len(results)
    for k in keys:
        values = [float(r[k]) for r in results]
        mean = sum(values) / n
        var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
        out[k] = (mean, math.sqrt(var))
    return out


def format_summary(summary: Mapping[str, Tuple[float, float]], trials: Sequence[int]) -> str:
    """One line per metric: ``R1  85.03 ± 1.20``."""
    head = f"RegDB, mean ± std over {len(trials)} trial(s) {list(trials)}:"
    width = max(len(k) for k in summary)
    rows = [f"  {k:<{width}}  {m:6.2f} ± {s:5.2f}" for k, (m, s) in summary.items()]
    return "\n".join([head] + rows)


def run_trial(config: str, trial: int, output_root: str, opts: Sequence[str], num_gpus: int):
    """Train and evaluate one trial with tools/train_net.py (returns its exit status)."""
    cmd = [sys.executable, TRAIN_NET, "--config-file", config, "--resume"]
    cmd += ["--num-gpus", str(num_gpus), *opts]
    cmd += ["DATASETS.VI.REGDB_TRIAL", str(trial), "OUTPUT_DIR", trial_dir(output_root, trial)]
    print("running:", " ".join(cmd), flush=True)
    return subprocess.call(cmd)


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", default="", help="RegDB config (e.g. configs/CSDN/regdb.yml)")
    p.add_argument("--output-root", required=True, help="trial t uses <output-root>/trial<t>")
    p.add_argument("--trials", default="1-10", help="trials to run / summarise (default 1-10)")
    p.add_argument("--summarize-only", action="store_true", help="only read existing results")
    p.add_argument("--num-gpus", type=int, default=1, help="passed to train_net.py")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def main(argv: List[str] | None = None) -> int:
    """Run the missing trials (unless --summarize-only), then print and save the summary."""
    args = parse_args(argv)
    try:
        trials = parse_trials(args.trials)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.summarize_only:
        if not args.config_file:
            print(
                "error: --config-file is needed to train (or pass --summarize-only)",
                file=sys.stderr,
            )
            return 2
        for t in trials:
            done = os.path.isfile(os.path.join(trial_dir(args.output_root, t), "results.json"))
            if done:
                print(f"trial {t}: results exist, skipped (delete its folder to train it again)")
                continue
            status = run_trial(args.config_file, t, args.output_root, args.opts, args.num_gpus)
            if status != 0:
                print(f"error: trial {t} failed (exit status {status})", file=sys.stderr)
                return status
    try:
        results = read_trial_results(args.output_root, trials)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = summarize([results[t] for t in trials])
    print(format_summary(summary, trials))
    path = os.path.join(args.output_root, "summary.json")
    with open(path, "w") as f:
        json.dump(
            {
                "trials": trials,
                "mean": {k: m for k, (m, _) in summary.items()},
                "std": {k: s for k, (_, s) in summary.items()},
            },
            f,
            indent=2,
        )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
