"""Shared parts of the released-checkpoint converters: layouts as data, key renaming, reading the
source and CLIP files with errors that name the file and the keys, and the conversion report.

A converter turns a state dict saved by an author's code into the state dict of the matching
fastreid_ext model. Its :class:`ReleasedLayout` lists, as data:

* ``prefix_map``: ``(released prefix, our prefix)`` pairs, matched on dot-terminated prefixes in
  order (the first match wins), so ``image_encoder.`` never catches ``image_encoder1.``;
* ``from_clip``: our keys that the released file does not hold, taken from the OpenAI CLIP file
  (``our key -> CLIP key``);
* ``from_target``: our keys that are constants of the config (a tokenized template, buffers whose
  initial value is what evaluation needs), taken from the freshly built target model.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..modeling.clip.weights import read_clip_state_dict
from ..utils.progress import progress

__all__ = [
    "ClipRelease",
    "ConversionError",
    "ConversionReport",
    "OPENAI_CLIP",
    "ReleasedLayout",
    "StateDict",
    "check_tensors",
    "load_source",
    "read_clip_entries",
    "rename_keys",
    "sha256_file",
    "show_keys",
    "strip_module_prefix",
    "to_float32",
]

StateDict = Dict[str, torch.Tensor]


class ConversionError(ValueError):
    """A source that cannot be converted: the message names the file and the key(s)."""


@dataclass(frozen=True)
class ClipRelease:
    """One of OpenAI's CLIP weight files: where it is and its SHA-256 (the URL's second-to-last
    path segment, which OpenAI's downloader checks)."""

    file_name: str
    url: str
    sha256: str


_OPENAI_BASE = "https://openaipublic.azureedge.net/clip/models"
_VIT_SHA = "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f"
_RN50_SHA = "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762"
#: The CLIP files the released IRRA (ViT-B/16) and CSDN (RN50) models start from, by
#: ``MODEL.CLIP.NAME``; the URLs are those of OpenAI's ``clip/clip.py`` (also in open_clip 3.3's
#: ``pretrained.py``).
OPENAI_CLIP: Mapping[str, ClipRelease] = {
    "ViT-B-16": ClipRelease("ViT-B-16.pt", f"{_OPENAI_BASE}/{_VIT_SHA}/ViT-B-16.pt", _VIT_SHA),
    "RN50": ClipRelease("RN50.pt", f"{_OPENAI_BASE}/{_RN50_SHA}/RN50.pt", _RN50_SHA),
}


@dataclass(frozen=True)
class ReleasedLayout:
    """What a converter knows about one released format (see the module docstring).

    ``from_target`` maps our key to the reason it is a config constant. ``signature`` is a key
    prefix only this format has (used to recognise a file given with the wrong ``--from``).
    ``default_configs`` maps the class count of the checkpoint to the shipped config it belongs
    to.
    """

    name: str
    description: str
    signature: str
    prefix_map: Tuple[Tuple[str, str], ...]
    from_clip: Mapping[str, str]
    from_target: Mapping[str, str]
    default_configs: Mapping[int, str]


@dataclass
class ConversionReport:
    """What a conversion did, for the console and ``<DST>.json``.

    ``renamed``: ``{"from", "to", "count"}`` per prefix rule; ``reshaped``: ``{"key", "from",
    "to", "how"}``; ``dropped``: ``{"key", "reason"}`` for source entries not written;
    ``filled``: ``{"key", "source", "reason"}`` for our keys the source lacks; ``omitted``: our
    training-only keys left out by ``inference_only``; ``overrides``: the config ``KEY VALUE``
    list the converted model needs on top of ``config_file``.
    """

    source_format: str
    source: str
    source_sha256: str = ""
    output: str = ""
    config_file: str = ""
    meta_architecture: str = ""
    num_classes: Optional[int] = None
    overrides: List[str] = field(default_factory=list)
    renamed: List[Dict[str, Any]] = field(default_factory=list)
    cast_to_float32: int = 0
    reshaped: List[Dict[str, Any]] = field(default_factory=list)
    dropped: List[Dict[str, str]] = field(default_factory=list)
    filled: List[Dict[str, str]] = field(default_factory=list)
    omitted: List[str] = field(default_factory=list)
    clip_weights: Dict[str, Any] = field(default_factory=dict)
    source_info: Dict[str, Any] = field(default_factory=dict)
    num_tensors: int = 0
    num_elements: int = 0
    eval_command: str = ""
    warnings: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        """Plain JSON-serialisable values."""
        return asdict(self)

    def format_text(self) -> str:
        """A human-readable summary (printed by the tool)."""
        lines = [
            f"Converted {self.source_format} checkpoint {self.source}",
            f"  -> {self.output or '(not written)'}: {self.num_tensors} tensors, "
            f"{self.num_elements:,} elements, float32",
            f"  target: {self.meta_architecture} from {self.config_file}"
            + (f", {self.num_classes} classes" if self.num_classes else ""),
        ]
        for r in self.renamed:
            lines.append(f"  renamed {r['count']:4d} x {r['from']}* -> {r['to']}*")
        if self.cast_to_float32:
            lines.append(f"  cast {self.cast_to_float32} half-precision tensors to float32")
        for r in self.reshaped:
            lines.append(f"  reshaped {r['key']}: {r['from']} -> {r['to']} ({r['how']})")
        for r in self.dropped:
            lines.append(f"  dropped {r['key']}: {r['reason']}")
        for r in self.filled:
            lines.append(f"  filled {r['key']} from {r['source']}: {r['reason']}")
        if self.omitted:
            lines.append(
                f"  omitted {len(self.omitted)} training-only keys (inference only): "
                f"{show_keys(self.omitted, 4)}"
            )
        for w in self.warnings:
            lines.append(f"  WARNING: {w}")
        if self.overrides:
            pairs = zip(self.overrides[0::2], self.overrides[1::2])
            lines.append("  config overrides: " + " ".join(f"{k} {v}" for k, v in pairs))
        if self.eval_command:
            lines.append(f"  evaluate with:\n    {self.eval_command}")
        return "\n".join(lines)


def show_keys(keys: Sequence[str], n: int = 6) -> str:
    """The first ``n`` of ``keys`` joined, with the total when there are more."""
    keys = list(keys)
    more = f" ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def sha256_file(path: str, chunk: int = 1 << 24) -> str:
    """Hex SHA-256 of a file's bytes (with progress reporting for files over 64 MiB)."""
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        blocks = iter(lambda: f.read(chunk), b"")
        desc = f"SHA-256 of {os.path.basename(path)}"
        for block in progress(blocks, desc, -(-size // chunk), enabled=size > 4 * chunk):
            digest.update(block)
    return digest.hexdigest()


def load_source(path: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors naming the file."""
    if not os.path.isfile(path):
        raise ConversionError(f"source checkpoint '{path}' does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated download, not a torch file, pickled objects
        raise ConversionError(
            f"cannot read '{path}' with torch.load(weights_only=True): {exc}. Is the file "
            "complete (compare its size with the download) and a PyTorch checkpoint?"
        ) from exc


def check_tensors(state: Mapping[str, Any], path: str, what: str) -> StateDict:
    """``state`` if every value is a tensor, else an error naming the first offending keys."""
    bad = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad or not state:
        detail = f"non-tensor entries {show_keys(bad)}" if bad else "no entries"
        raise ConversionError(f"'{path}': {what} is not a state dict of tensors ({detail})")
    return dict(state)


def strip_module_prefix(state: StateDict, path: str) -> Tuple[StateDict, bool]:
    """Remove the ``module.`` of (Distributed)DataParallel when every key has it; an error when
    only some keys have it. Returns the state and whether the prefix was there."""
    with_prefix = [k for k in state if k.startswith("module.")]
    if not with_prefix:
        return state, False
    if len(with_prefix) != len(state):
        without = [k for k in state if not k.startswith("module.")]
        raise ConversionError(
            f"'{path}': {len(with_prefix)} keys start with 'module.' but {len(without)} do not "
            f"({show_keys(without)}): a state dict saved from one model has it on all or none"
        )
    return {k[len("module.") :]: v for k, v in state.items()}, True


def rename_keys(
    state: StateDict, layout: ReleasedLayout, path: str
) -> Tuple[StateDict, List[Dict[str, Any]]]:
    """Rename every key by the first matching rule of ``layout.prefix_map``.

    Returns the renamed state and ``{"from", "to", "count"}`` per rule used; a key that no rule
    matches is an error naming it (and the format the file looks like, when it is another one).
    """
    out: StateDict = {}
    counts: Dict[Tuple[str, str], int] = {}
    unknown: List[str] = []
    for key, value in state.items():
        for old, new in layout.prefix_map:
            if key.startswith(old):
                out[new + key[len(old) :]] = value
                counts[(old, new)] = counts.get((old, new), 0) + 1
                break
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(
            f"'{path}': {len(unknown)} key(s) are not in the {layout.name} layout "
            f"({layout.description}): {show_keys(unknown)}"
        )
    rules = [{"from": o, "to": n, "count": c} for (o, n), c in counts.items()]
    return out, rules


def to_float32(state: StateDict) -> Tuple[StateDict, int]:
    """Every floating tensor as contiguous float32 (integer buffers unchanged); returns the state
    and how many tensors had another floating dtype (IRRA's fp16 weights)."""
    out: StateDict = {}
    cast = 0
    for key, value in state.items():
        if value.is_floating_point() and value.dtype != torch.float32:
            cast += 1
            value = value.float()
        out[key] = value.contiguous()
    return out, cast


def read_clip_entries(path: str, keys: Sequence[str]) -> StateDict:
    """The entries ``keys`` (OpenAI names) of a CLIP file (OpenAI TorchScript archive or a plain /
    open_clip state dict) as float32, with errors naming the file and the missing keys."""
    try:
        clip = read_clip_state_dict(path)
    except Exception as exc:  # ClipWeightsError or I/O errors: name the file once
        raise ConversionError(f"--clip-weights '{path}': {exc}") from exc
    missing = [k for k in keys if k not in clip]
    if missing:
        raise ConversionError(
            f"--clip-weights '{path}' lacks {show_keys(missing)}: pass OpenAI's CLIP file "
            "(ViT-B-16.pt for IRRA, RN50.pt for CSDN)"
        )
    return {k: clip[k] for k in keys}


#: A layout-specific step: ``fn(state, target_state, report, path)`` returning the new state.
Adapter = Callable[[StateDict, StateDict, ConversionReport, str], StateDict]
