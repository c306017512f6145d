"""Every documented ``MODEL.PROPOT`` key reaches the place that uses it (the model's keys here;
L_p2i and the aggregation: tests/test_propot_config_keys_loss.py; eq. (1)'s ``INIT.*``:
tests/test_propot_config_keys_init.py).

One case per key (the leaves of ``add_propot_config``, which are the rows of the README's "Config
keys" table): the key is set to a non-default value on the tiny demo model, built in-process from
``configs/Propot/demo.yml``, and the value is observed where it is used -- inside the built modules
(heads, widths, depths, contexts), in what a module is called with (forward hooks on every
prototype module), in what L_p2i is called with (a spy on the loss function), or in what the
initial-prototype hook stores (with a stub feature extractor of known features).

Each case can fail: it also runs its check on the same config without the key and expects an
``AssertionError``, so a key that is ignored fails. Every number-valued key has, in every case, a
base value that differs from the value any other case sets, so a key read from another key's place
(two keys with the same default, e.g. ``DPP.CONTEXT_INIT_STD`` and ``P2I.TAU``) gives another
number; each check compares the observed number exactly, so off by one shows too.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Sequence, Tuple
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from fastreid.modeling.meta_arch import build_model
from torch import nn

import propot.modeling.meta_arch as meta_arch_module
from fastreid_ext.engine import build_cfg
from fastreid_ext.text import ClipTokenizer
from propot.modeling import PropotAttentionBlock

from .config_docs import leaf_keys
from .conftest import REPO
from .test_propot_modules import propot_cfg

DEMO = str(REPO / "configs" / "Propot" / "demo.yml")
README = REPO / "projects" / "Propot" / "README.md"
P = "MODEL.PROPOT."
NUM_IDS, DIM = 6, 64  # training identities; the tiny-vit width
PIDS = [0, 1, 2, 3, 4, 0]  # identity 5 is not in the batch (BATCH_IDENTITIES_ONLY tells)

# Every case runs on these values; each number differs from the value any case sets.
BASE = {
    "BLOCK.NUM_HEADS": 2,
    "BLOCK.FFN_RATIO": 4,
    "BLOCK.DROPOUT": 0.0,
    "INIT.IMS_PER_BATCH": 0,
    "DPP.NUM_CONTEXTS": 5,
    "DPP.CONTEXT_INIT_STD": 0.02,
    "DPP.NUM_BLOCKS": 1,
    "IPP.NUM_BLOCKS": 3,
    "AGGREGATION.APA.TAU": 1.0,
    "AGGREGATION.MLP.HIDDEN_DIM": 40,
    "P2I.WEIGHT": 0.2,
    "P2I.TAU": 0.07,
}
TINY = ["MODEL.HEADS.NUM_CLASSES", str(NUM_IDS), "TEST.IMS_PER_BATCH", "128"]


def _opts(extra: Sequence[str] = ()) -> List[str]:
    base = [x for k, v in BASE.items() for x in (P + k, str(v))]
    return [*TINY, *base, *extra]


class Call(NamedTuple):
    args: Tuple[Any, ...]
    output: Any


@dataclass
class Run:
    """One training forward of the tiny model: the losses, every call of every prototype
    module (by name under ``model.prototypes``; "" is the module itself) and the bound
    arguments and result of every L_p2i call."""

    model: nn.Module
    losses: Dict[str, torch.Tensor]
    module_calls: Dict[str, List[Call]] = field(default_factory=dict)
    p2i_calls: List[Dict[str, Any]] = field(default_factory=list)

    def calls(self, name: str) -> List[Call]:
        return self.module_calls.get(name, [])

    def one(self, name: str) -> Call:
        calls = self.calls(name)
        assert len(calls) == 1, (name, len(calls))
        return calls[0]

    def features(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """V_B, T_B [B, d]: what the prototypes were given."""
        args = self.one("").args
        return args[1], args[2]

    def initial(self, modality: int) -> torch.Tensor:
        """pt [M, d] of the batch's identities (all N when not batch-only)."""
        ids = self.one("").args[0]
        protos = self.model.prototypes
        pt = protos.initial_v if modality == 0 else protos.initial_t
        return pt if ids is None else pt[ids]

    def aggregation(self, modality: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pt [M, d], candidates [n, M, d], output [M, d]) of one modality's aggregation."""
        calls = [c for c in self.calls("aggregation") if c.args[2] == modality]
        assert len(calls) == 1, len(calls)
        return calls[0].args[0], calls[0].args[1], calls[0].output


def _batch() -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    colours = ("red", "blue", "green", "black", "white", "grey")
    return {
        "images": torch.rand(len(PIDS), 3, 64, 32, generator=g) * 255,
        "caption_ids": ClipTokenizer()([f"a person in a {c} coat" for c in colours]),
        "targets": torch.tensor(PIDS),
    }


def run_model(extra: Sequence[str] = ()) -> Run:
    """Build the tiny Propot model from the demo config with ``extra`` overrides and run one
    training forward with small initial prototypes (APA's softmax is not saturated)."""
    cfg = build_cfg(DEMO, _opts(extra))
    torch.manual_seed(0)
    model = build_model(cfg).train()
    run = Run(model, {})
    handles = []
    protos = getattr(model, "prototypes", None)
    if protos is not None:
        g = torch.Generator().manual_seed(1)
        protos.set_initial(
            0.1 * torch.randn(NUM_IDS, DIM, generator=g),
            0.1 * torch.randn(NUM_IDS, DIM, generator=g),
        )
        for name, module in protos.named_modules():
            run.module_calls[name] = []

            def record(mod, args, kwargs, output, name=name):
                run.module_calls[name].append(Call(tuple(args) + tuple(kwargs.values()), output))

            handles.append(module.register_forward_hook(record, with_kwargs=True))
    real = meta_arch_module.prototype_to_instance_loss
    signature = inspect.signature(real)

    def spy(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        out = real(*args, **kwargs)
        run.p2i_calls.append(dict(bound.arguments, result=out))
        return out

    try:
        with mock.patch.object(meta_arch_module, "prototype_to_instance_loss", spy):
            run.losses = model(_batch())
    finally:
        for h in handles:
            h.remove()
    return run


def _blocks(run: Run, prefix: str) -> Dict[str, PropotAttentionBlock]:
    """The SAE/CAD blocks under ``model.prototypes.<prefix>``, by name."""
    named = run.model.prototypes.named_modules()
    return {n: m for n, m in named if n.startswith(prefix) and isinstance(m, PropotAttentionBlock)}


def _close(a, b, atol=1e-5) -> bool:
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=atol)


def assert_case(value: Any, needs: Sequence[str], key: str, check: Callable[[Run], None]) -> None:
    """``check`` passes with ``key = value`` (and the keys it ``needs``) and fails without it."""
    check(run_model([*needs, P + key, str(value)]))
    with pytest.raises(AssertionError):  # the check tells the key's value from its absence
        check(_base_run(needs))


_BASE_RUNS: Dict[Tuple[str, ...], Run] = {}


def _base_run(needs: Sequence[str]) -> Run:
    """The run without the key under test (shared by the cases with the same needs)."""
    if tuple(needs) not in _BASE_RUNS:
        _BASE_RUNS[tuple(needs)] = run_model(needs)
    return _BASE_RUNS[tuple(needs)]


# ------------------------------------------------------------ switches, blocks, DPP and IPP
def check_enabled(r: Run) -> None:
    assert "prototypes" not in dict(r.model.named_children())
    assert set(r.losses) == {"loss_sdm", "loss_id"} and not r.p2i_calls


def check_batch_identities_only(r: Run) -> None:
    assert r.one("").args[0] is None  # all N prototypes are computed
    assert len(r.p2i_calls) == 2
    for call in r.p2i_calls:
        assert torch.equal(call["proto_ids"], torch.arange(NUM_IDS))
        assert call["prototypes"].shape == (NUM_IDS, DIM)


def check_num_heads(r: Run) -> None:
    attns = [m for m in r.model.prototypes.modules() if isinstance(m, nn.MultiheadAttention)]
    assert len(attns) >= 2 and all(a.num_heads == 16 and a.head_dim == 4 for a in attns)


def check_ffn_ratio(r: Run) -> None:
    blocks = _blocks(r, "").values()
    assert blocks and all(b.mlp[0].out_features == 384 == b.mlp[2].in_features for b in blocks)


def check_norm_first(r: Run) -> None:
    blocks = _blocks(r, "")
    assert blocks and not any(b.norm_first for b in blocks.values())
    assert all(b.ln_1_kv is None for b in blocks.values())  # post-LN: no memory LayerNorm


def check_dropout(r: Run) -> None:
    drops = [m for m in r.model.prototypes.modules() if isinstance(m, nn.Dropout)]
    attns = [m for m in r.model.prototypes.modules() if isinstance(m, nn.MultiheadAttention)]
    assert drops and attns
    assert all(d.p == 0.25 for d in drops) and all(a.dropout == 0.25 for a in attns)


def check_dpp_enabled(r: Run) -> None:
    assert r.model.prototypes.dpp is None and not r.calls("dpp")
    assert "prototypes.dpp.contexts" not in dict(r.model.named_parameters())
    v, t = r.features()
    cad = r.model.prototypes.ipp.decoders["shared"]
    with torch.no_grad():  # p_en, p_eo only (eqs. 3-4), no p_a
        want = {
            0: [cad(r.initial(0)[None], v[None])[0], cad(r.initial(0)[None], t[None])[0]],
            1: [cad(r.initial(1)[None], t[None])[0], cad(r.initial(1)[None], v[None])[0]],
        }
    for modality in (0, 1):
        assert _close(r.aggregation(modality)[1], torch.stack(want[modality]))


def check_num_contexts(r: Run) -> None:
    dpp = r.model.prototypes.dpp
    assert tuple(dpp.contexts.shape) == (2, NUM_IDS, 7, DIM)
    seq = r.one("dpp.encoders.0").args[0]  # [2 M, K + 1, d]: K contexts, then pt
    assert seq.shape[1] == 8
    ids = r.one("").args[0]
    assert torch.equal(seq[:, :7], dpp.contexts[:, ids].flatten(0, 1))


def check_context_init_std(r: Run) -> None:
    ctx = r.model.prototypes.dpp.contexts.detach()
    assert 0.45 < float(ctx.std()) < 0.55 and abs(float(ctx.mean())) < 0.05


def check_dpp_num_blocks(r: Run) -> None:
    blocks = _blocks(r, "dpp.")
    assert len(blocks) == 6 and all(len(r.calls(n)) == 1 for n in blocks)


def check_dpp_sharing(r: Run) -> None:
    encoders = r.model.prototypes.dpp.encoders
    assert len(encoders) == 2
    for modality in (0, 1):  # encoder 0 encodes the visual sequences, 1 the textual
        seq = r.one(f"dpp.encoders.{modality}").args[0]
        assert torch.equal(seq[:, -1], r.initial(modality))


def _check_ipp_calls(r: Run, calls: Dict[str, Tuple[int, int]]) -> None:
    """``calls``: name -> (query modality, memory modality); the candidates of each modality are
    p_a and then the enabled CAD outputs, each recomputed from pt and V_B / T_B."""
    v, t = r.features()
    feats = {0: v, 1: t}
    cad = r.model.prototypes.ipp.decoders["shared"]
    assert sorted(r.one("ipp").output) == sorted(calls)
    with torch.no_grad():
        for name, (q, m) in calls.items():
            want = cad(r.initial(q)[None], feats[m][None])[0]
            assert _close(r.one("ipp").output[name], want), name
    for modality in (0, 1):
        cands = r.aggregation(modality)[1]
        own = [r.one("ipp").output[n] for n, (q, _) in calls.items() if q == modality]
        assert _close(cands, torch.stack([r.one("dpp").output[modality], *own]))


def check_intra_off(r: Run) -> None:
    """Eq. (4) only: p_eo^v = CAD(pt^v, T_B), p_eo^t = CAD(pt^t, V_B)."""
    _check_ipp_calls(r, {"inter_v": (0, 1), "inter_t": (1, 0)})


def check_inter_off(r: Run) -> None:
    """Eq. (3) only: p_en^v = CAD(pt^v, V_B), p_en^t = CAD(pt^t, T_B)."""
    _check_ipp_calls(r, {"intra_v": (0, 0), "intra_t": (1, 1)})


def check_ipp_num_blocks(r: Run) -> None:
    blocks = _blocks(r, "ipp.")
    assert list(blocks) == ["ipp.decoders.shared.blocks.0"]  # tied: one block ...
    assert len(r.calls("ipp.decoders.shared.blocks.0")) == 7  # ... applied N_e times


def check_tie_blocks(r: Run) -> None:
    blocks = _blocks(r, "ipp.")
    assert len(blocks) == 3 and all(len(r.calls(n)) == 1 for n in blocks)


def check_query(r: Run) -> None:
    q_v, q_t = r.one("ipp").args[:2]
    a_v, a_t = r.one("dpp").output
    assert torch.equal(q_v, a_v) and torch.equal(q_t, a_t)


def check_ipp_sharing(r: Run) -> None:
    v, t = r.features()
    decoders = r.model.prototypes.ipp.decoders
    assert sorted(decoders) == ["inter_t", "inter_v", "intra_t", "intra_v"]
    # eqs. (3)-(4): (query, keys/values) of each call
    want = {
        "intra_v": (r.initial(0), v),
        "intra_t": (r.initial(1), t),
        "inter_v": (r.initial(0), t),
        "inter_t": (r.initial(1), v),
    }
    for name, (q, m) in want.items():
        args = r.one(f"ipp.decoders.{name}").args
        assert torch.equal(args[0][0], q) and torch.equal(args[1][0], m), name


def check_detach(r: Run) -> None:
    v, t = r.features()
    feats_v, feats_t = r.one("ipp").args[2:4]
    assert v.requires_grad and t.requires_grad
    assert not feats_v.requires_grad and not feats_t.requires_grad
    assert torch.equal(feats_v, v) and torch.equal(feats_t, t)


def check_normalize(r: Run) -> None:
    v, t = r.features()
    feats_v, feats_t = r.one("ipp").args[2:4]
    assert feats_v.requires_grad and feats_t.requires_grad
    assert _close(feats_v, F.normalize(v, dim=-1)) and _close(feats_t, F.normalize(t, dim=-1))


MODEL_CASES: Dict[str, Tuple[Any, Callable[[Run], None]]] = {
    # key: (value, check)
    "ENABLED": (False, check_enabled),
    "BATCH_IDENTITIES_ONLY": (False, check_batch_identities_only),
    "BLOCK.NUM_HEADS": (16, check_num_heads),
    "BLOCK.FFN_RATIO": (6, check_ffn_ratio),
    "BLOCK.NORM_FIRST": (False, check_norm_first),
    "BLOCK.DROPOUT": (0.25, check_dropout),
    "DPP.ENABLED": (False, check_dpp_enabled),
    "DPP.NUM_CONTEXTS": (7, check_num_contexts),
    "DPP.CONTEXT_INIT_STD": (0.5, check_context_init_std),
    "DPP.NUM_BLOCKS": (6, check_dpp_num_blocks),
    "DPP.SHARING": ("per_modality", check_dpp_sharing),
    "IPP.INTRA.ENABLED": (False, check_intra_off),
    "IPP.INTER.ENABLED": (False, check_inter_off),
    "IPP.NUM_BLOCKS": (7, check_ipp_num_blocks),
    "IPP.TIE_BLOCKS": (False, check_tie_blocks),
    "IPP.QUERY": ("adapted", check_query),
    "IPP.SHARING": ("per_call", check_ipp_sharing),
    "IPP.DETACH_INSTANCES": (True, check_detach),
    "IPP.NORMALIZE_INSTANCES": (True, check_normalize),
}


@pytest.mark.parametrize("key", sorted(MODEL_CASES))
def test_model_key_reaches_its_module(key):
    value, check = MODEL_CASES[key]
    assert_case(value, [], key, check)


# ------------------------------------------------------------------------------- coverage
def _all_cases() -> Dict[str, Any]:
    """key -> the value its case sets, over the three files."""
    from .test_propot_config_keys_init import INIT_CASES
    from .test_propot_config_keys_loss import LOSS_CASES

    values = {k: v[0] for k, v in MODEL_CASES.items()}
    values.update({k: v[0] for k, v in LOSS_CASES.items()})
    values.update({k: v[0](REPO) for k, v in INIT_CASES.items()})
    assert len(values) == len(MODEL_CASES) + len(LOSS_CASES) + len(INIT_CASES)  # no key twice
    return values


def test_every_documented_key_has_a_case():
    keys = set(leaf_keys(propot_cfg().MODEL.PROPOT))
    table = README.read_text().split("## Config keys", 1)[1].split("\n## ", 1)[0]
    assert {k for k in keys if f"| `{k}` |" in table} == keys
    assert set(_all_cases()) == keys


def test_case_values_tell_keys_apart():
    """Each case's value differs from its key's default, and a number differs from the base value
    of every other number-valued key (and from TEST.IMS_PER_BATCH, INIT.IMS_PER_BATCH's
    fallback): a key read from another key's place gives another number."""
    defaults = propot_cfg().MODEL.PROPOT
    others = {**BASE, "TEST.IMS_PER_BATCH": 128}
    for key, value in _all_cases().items():
        node = defaults
        for part in key.split("."):
            node = node[part]
        assert value != node, key
        if type(value) in (int, float):
            assert value not in {v for k, v in others.items() if k != key}, key
