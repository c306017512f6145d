"""Benchmarks shared by ``tools/gpu_check.py`` and ``tools/benchmark_trainer_overhead.py``:
every method built from its shipped config with random CLIP weights, synthetic batches in memory,
the trainer's step against a plain PyTorch loop, and the evaluation / clustering floors."""
