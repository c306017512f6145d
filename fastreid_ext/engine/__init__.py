"""Engine: launcher (NCCL/gloo/torchrun), config setup with plugins, the shared trainer."""

from .launch import launch
from .main import main
from .plugins import load_plugins
from .setup import argument_parser, build_cfg, seed_everything, setup_cfg
from .trainer import ExtTrainer, build_trainer

__all__ = [
    "launch",
    "main",
    "load_plugins",
    "argument_parser",
    "build_cfg",
    "seed_everything",
    "setup_cfg",
    "ExtTrainer",
    "build_trainer",
]
