"""CPCL training end to end on tiny synthetic data: the epoch's training set follows the pseudo
labels, --resume restores pseudo labels and memories exactly, two gloo ranks keep identical
labels, memories and weights, and bad config values fail at build time naming the key."""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest
import torch
from fastreid.engine.train_loop import HookBase

from cpcl.hooks import CPCLPseudoLabelHook
from cpcl.trainer import CPCLTrainer
from fastreid_ext.config import ConfigValueError
from fastreid_ext.engine import build_cfg, seed_everything
from fastreid_ext.engine.checkpoint import load_for_inference
from fastreid_ext.engine.trainer import build_trainer
from fastreid_ext.registry import HOOK_REGISTRY

from .conftest import REPO, TWO_GLOO_RANKS, run_train_net, tiny_opts

# end-to-end: subprocess training / several processes (the slow tier)
pytestmark = pytest.mark.slow

DEMO = str(REPO / "configs" / "CPCL" / "demo.yml")


@HOOK_REGISTRY.register()
class CPCLTestTrainSetProbe(HookBase):
    """Records the training-set size, iterations and steps of every epoch."""

    def __init__(self, cfg, trainer) -> None:
        self.sizes, self.iters, self.steps = {}, {}, {}

    def before_epoch(self) -> None:
        t = self.trainer
        self.sizes[t.epoch] = len(t.train_set)
        self.iters[t.epoch] = t.iters_per_epoch

    def after_step(self) -> None:
        e = self.trainer.epoch
        self.steps[e] = self.steps.get(e, 0) + 1


def _opts(root: str, out: str, epochs: int, *extra: str):
    return [
        *tiny_opts(root, out, epochs=epochs),
        "MODEL.CPCL.CLUSTER.START_EPOCH",
        "0",
        "TEST.EVAL_PERIOD",
        str(epochs),
        *extra,
    ]


def _trainer(opts, resume: bool = False):
    cfg = build_cfg(DEMO, opts)
    cfg.freeze()
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    seed_everything(cfg.SEED)
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=resume)
    return trainer


def _hook(trainer) -> CPCLPseudoLabelHook:
    return next(h for h in trainer._hooks if isinstance(h, CPCLPseudoLabelHook))


def test_training_set_follows_pseudo_labels_every_epoch(synthetic_root, tmp_path):
    # the probe hook comes after the CPCL hook, so it sees the epoch's new training set
    trainer = _trainer(
        _opts(
            synthetic_root,
            str(tmp_path / "dyn"),
            3,
            "MODEL.CPCL.TRAIN_SET",
            "either",
            "TRAINER.HOOKS",
            "['CPCLPseudoLabelHook', 'CPCLTestTrainSetProbe']",
        )
    )
    total = len(trainer.train_set)
    probe = next(h for h in trainer._hooks if isinstance(h, CPCLTestTrainSetProbe))
    trainer.train()
    hook = _hook(trainer)
    batch = trainer.cfg.SOLVER.IMS_PER_BATCH
    kept = int(((hook.image_labels >= 0) | (hook.text_labels >= 0)).sum())
    assert probe.sizes[2] == (kept if kept >= batch else total)
    for epoch in range(3):
        assert probe.iters[epoch] == probe.sizes[epoch] // batch == probe.steps[epoch]
    assert trainer.iter == trainer.max_iter == sum(probe.steps.values())
    records = [json.loads(x) for x in (tmp_path / "dyn" / "cpcl_pseudo_labels.jsonl").open()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    # the last record describes the clustering the hook installed: memories sized by its cluster
    # counts, its outliers after OPLM those of the final labels (demo.yml: one unit per pair)
    last, model = records[-1], trainer.model
    assert last["image_clusters"] == model.pmm.image.num_clusters > 0
    assert last["text_clusters"] == model.pmm.text.num_clusters > 0
    assert last["image_outliers_after_oplm"] == int((hook.image_labels < 0).sum())
    assert last["text_outliers_after_oplm"] == int((hook.text_labels < 0).sum())
    assert last["text_outliers_after_oplm"] <= last["text_outliers"]


def test_resume_restores_pseudo_labels_and_memories_exactly(synthetic_root, tmp_path):
    # re-cluster every 2 epochs: epoch 1 trains on the labels and memories of epoch 0, which a
    # resumed run can only have from the checkpoint
    extra = ("MODEL.CPCL.CLUSTER.PERIOD", "2")
    full = _trainer(_opts(synthetic_root, str(tmp_path / "full"), 2, *extra))
    full.train()
    out = str(tmp_path / "resumed")
    first = _trainer(_opts(synthetic_root, out, 2, *extra, "TRAINER.STOP_AFTER_EPOCHS", "1"))
    first.train()
    saved = torch.load(os.path.join(out, "model_0000.pth"), weights_only=True)
    state = saved["hook_CPCLPseudoLabelHook"]
    # the labels are the hook's state, the memories the model's (they change size per clustering)
    assert set(state) == {"image_labels", "text_labels", "labels_epoch"}
    memories = {k: saved["model"][f"pmm.{k}.features"] for k in ("image", "text")}
    assert state["labels_epoch"] == 0 and memories["image"].shape[0] > 0

    resumed = _trainer(_opts(synthetic_root, out, 2, *extra), resume=True)
    hook = _hook(resumed)
    assert np.array_equal(hook.image_labels, state["image_labels"].numpy())
    assert np.array_equal(hook.text_labels, state["text_labels"].numpy())
    assert torch.equal(resumed.model.pmm.image.features, memories["image"])
    assert torch.equal(resumed.model.pmm.text.features, memories["text"])
    resumed.train()
    assert hook.labels_epoch == 0  # epoch 1 reused the restored labels
    # weights and memories: the memories were updated through epoch 1, identically
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and {"pmm.image.features", "pmm.text.features"} <= set(a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(b["pmm.image.features"], memories["image"])
    assert full._last_eval_results == resumed._last_eval_results

    # a checkpoint of the earlier layout (memories in the hook's state) resumes exactly as well
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    old = dict(saved, model=dict(saved["model"]))
    old["hook_CPCLPseudoLabelHook"] = dict(state)
    for k in ("image", "text"):
        old["hook_CPCLPseudoLabelHook"][f"{k}_memory"] = old["model"].pop(f"pmm.{k}.features")
    torch.save(old, legacy / "model_0000.pth")
    (legacy / "last_checkpoint").write_text("model_0000.pth")
    from_legacy = _trainer(_opts(synthetic_root, str(legacy), 2, *extra), resume=True)
    assert torch.equal(from_legacy.model.pmm.image.features, memories["image"])
    assert torch.equal(from_legacy.model.pmm.text.features, memories["text"])
    assert np.array_equal(_hook(from_legacy).image_labels, state["image_labels"].numpy())

    # the per-epoch record file keeps one line per clustering across the interrupted run and the
    # resume, and a rerun into the same folder replaces its records instead of appending
    _trainer(_opts(synthetic_root, str(tmp_path / "full"), 1, *extra)).train()
    for folder in ("full", "resumed"):
        lines = (tmp_path / folder / "cpcl_pseudo_labels.jsonl").read_text().splitlines()
        assert [json.loads(x)["epoch"] for x in lines] == [0], folder

    # evaluation of the final checkpoint needs neither memories nor pseudo labels: a fresh model
    # (empty memories) loads it, its memories are training-only
    cfg = resumed.cfg
    model = CPCLTrainer.build_model(cfg)
    assert model.pmm.image.num_clusters == 0
    load_for_inference(model, os.path.join(out, "model_final.pth"))
    assert CPCLTrainer.test(cfg, model) == resumed._last_eval_results


PROBE = textwrap.dedent(
    '''
    """Records every rank's training set per epoch and saves its CPCL state after training."""
    import os

    import numpy as np
    import torch
    from fastreid.engine.train_loop import HookBase
    from fastreid.utils import comm

    from fastreid_ext.engine.distributed import unwrap_model
    from fastreid_ext.registry import HOOK_REGISTRY


    @HOOK_REGISTRY.register()
    class CPCLTestRankProbe(HookBase):
        def __init__(self, cfg, trainer):
            self.out = cfg.OUTPUT_DIR
            self.epochs = {}  # epoch -> [size, iters_per_epoch, steps, pairs kept by the labels]

        def _hook(self):
            return next(h for h in self.trainer._hooks if type(h).__name__ == "CPCLPseudoLabelHook")

        def before_epoch(self):
            t, hook = self.trainer, self._hook()
            kept = int(np.sum((hook.image_labels >= 0) | (hook.text_labels >= 0)))
            self.epochs[t.epoch] = [len(t.train_set), t.iters_per_epoch, 0, kept]

        def after_step(self):
            self.epochs[self.trainer.epoch][2] += 1

        def after_train(self):
            model = unwrap_model(self.trainer.model)
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            torch.save(
                {
                    "hook": self._hook().state_dict(),
                    "model": state,
                    "world": comm.get_world_size(),
                    "epochs": torch.tensor([self.epochs[e] for e in sorted(self.epochs)]),
                    "total_pairs": len(self._hook().base.pairs),
                    "max_iter": self.trainer.max_iter,
                    "iter": self.trainer.iter,
                },
                os.path.join(self.out, f"rank{comm.get_rank()}.pt"),
            )
    '''
)


def test_two_gloo_ranks_keep_identical_labels_memories_and_weights(synthetic_root, tmp_path):
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / "cpcl_rank_probe.py").write_text(PROBE)
    out = tmp_path / "ddp"
    epochs, batch = 2, 16
    run_train_net(
        [
            "--config-file",
            DEMO,
            *TWO_GLOO_RANKS,
            *_opts(synthetic_root, str(out), epochs),
            "MODEL.CPCL.TRAIN_SET",
            "either",  # outliers of both modalities are dropped: the set changes per epoch
            "PLUGINS",
            "['cpcl', 'cpcl_rank_probe']",  # the override replaces Base-CPCL.yml's list
            "TRAINER.HOOKS",
            "['CPCLPseudoLabelHook', 'CPCLTestRankProbe']",
        ],
        env_extra={"PYTHONPATH": str(plugin_dir)},
    )
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == 2
    for key in ("image_labels", "text_labels"):
        assert torch.equal(r0["hook"][key], r1["hook"][key]), key
    # weights and memories (model buffers, updated with both ranks' batches every step)
    assert r0["model"]["pmm.text.features"].shape[0] > 0
    assert r0["model"].keys() == r1["model"].keys()
    assert all(torch.equal(r0["model"][k], r1["model"][k]) for k in r0["model"])
    assert "R1" in json.loads((out / "results.json").read_text())
    # the epoch's training set, its iterations and the steps taken agree across ranks and with
    # the global batch (SOLVER.IMS_PER_BATCH, split over the ranks)
    assert torch.equal(r0["epochs"], r1["epochs"])
    total = r0["total_pairs"]
    for size, iters, steps, kept in r0["epochs"].tolist():
        assert size == (kept if kept >= batch else total)
        assert iters == size // batch == steps
    sizes = r0["epochs"][:, 0].tolist()
    assert min(sizes) < total  # "either" dropped pairs in at least one epoch
    assert r0["iter"] == r0["max_iter"] == int(r0["epochs"][:, 2].sum()) == r1["iter"]


@pytest.mark.parametrize(
    "key,value",
    [("MODEL.CPCL.PCM.NAME", "single"), ("TRAINER.HOOKS", "[]"), ("TRAINER.NAME", "ExtTrainer")],
)
def test_bad_configuration_fails_when_the_trainer_is_built(synthetic_root, tmp_path, key, value):
    """Before any training step (each key's values: tests/test_cpcl_config.py)."""
    with pytest.raises(ConfigValueError, match=key.replace(".", r"\.")):
        _trainer(_opts(synthetic_root, str(tmp_path / "bad"), 1, key, value))
