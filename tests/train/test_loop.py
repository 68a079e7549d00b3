"""The pretraining loop on a tiny Fashion-MNIST written in the real IDX format."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from conftest import TINY_RUN
from methods.cases import option_overrides

from dimcl import cli
from dimcl.checkpoint import load_backbone_weights, load_checkpoint
from dimcl.config import ConfigError
from dimcl.experiment import RUN_ONLY_KEYS
from dimcl.recipes import load_config, resolve_recipe
from dimcl.run_dir import BACKBONE_PREFIX, METHOD_PREFIX, read_metrics, weights_under
from dimcl.train import loop
from dimcl.train.loop import pretrain
from dimcl.train.step_scalars import StepScalars
from dimcl.trained import load_trained_backbone


def tiny_config(root, *extra):
    return load_config(resolve_recipe("fashion_mnist/byol"), [*TINY_RUN, f"data.root={root}", *extra])


def test_a_run_writes_its_directory(tiny_fashion_mnist, tmp_path):
    result = pretrain(tiny_config(tiny_fashion_mnist), tmp_path / "run")
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    records = read_metrics(run)
    assert [r["epoch"] for r in records] == [1, 2] == [r["epoch"] for r in result.records]
    for key in ("loss", "loss_ssl", "loss_dimcl", "lr", "knn_top1", "knn_top5", "images_per_s", "probe_top1"):
        assert all(key in r for r in records), key
    assert all(0 <= r["knn_top1"] <= 100 for r in records)
    assert all(0 <= r["data_wait_fraction"] <= 1 for r in records)
    # loss is the λ-weighted combination of its terms, averaged the same way
    r = records[-1]
    assert r["loss"] == pytest.approx(0.9 * r["loss_ssl"] + 0.1 * r["loss_dimcl"], rel=1e-5)
    state = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert state["epoch"] == 2 and state["global_step"] == 12  # 96 images / batch 16, drop_last
    tensors, meta = load_backbone_weights(run / "backbone.safetensors")
    assert meta["backbone"] == "small_cnn" and meta["in_channels"] == 1
    trained = result.model.method.backbone.state_dict()
    assert all(torch.equal(tensors[k], trained[k]) for k in trained)
    # the checkpoint's layout is run_dir's: the method under METHOD_PREFIX, the online probe under "probe."
    assert all(k.startswith((METHOD_PREFIX, "probe.")) for k in state["model"])
    assert weights_under(state["model"], BACKBONE_PREFIX).keys() == trained.keys()
    backbone, cfg = load_trained_backbone(run)
    assert cfg.method.name == "byol"
    assert (tmp_path / "run" / "logs").is_dir()  # Fabric's CSV logger


def test_weight_zero_logs_no_dimcl_term(tiny_fashion_mnist, tmp_path):
    pretrain(tiny_config(tiny_fashion_mnist, "dimcl.weight=0", "trainer.max_epochs=1"), tmp_path)
    (record,) = read_metrics(tmp_path)
    assert "loss_dimcl" not in record and record["loss"] == record["loss_ssl"]


def test_same_seed_same_result(tiny_fashion_mnist, tmp_path):
    a = pretrain(tiny_config(tiny_fashion_mnist, "trainer.max_epochs=1", "eval.every=0"), tmp_path / "a")
    b = pretrain(tiny_config(tiny_fashion_mnist, "trainer.max_epochs=1", "eval.every=0"), tmp_path / "b")
    c = pretrain(tiny_config(tiny_fashion_mnist, "trainer.max_epochs=1", "eval.every=0", "seed=1"), tmp_path / "c")
    assert a.records[0]["loss"] == b.records[0]["loss"]
    assert a.records[0]["loss"] != c.records[0]["loss"]
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_scalars_are_read_from_the_device_every_log_every_n_steps(tiny_fashion_mnist, tmp_path, monkeypatch):
    """One device-to-host copy per trainer.log_every_n_steps steps (and at the epoch's end), and the
    epoch's mean losses exactly as when every step is read."""
    every_step = pretrain(tiny_config(tiny_fashion_mnist, "trainer.max_epochs=1", "eval.every=0",
                                      "trainer.log_every_n_steps=1"), tmp_path / "a")
    read, sizes = StepScalars.read, []

    def counted(self):
        sizes.append(len(self))
        return read(self)

    monkeypatch.setattr(StepScalars, "read", counted)
    every_4 = pretrain(tiny_config(tiny_fashion_mnist, "trainer.max_epochs=1", "eval.every=0",
                                   "trainer.log_every_n_steps=4"), tmp_path / "b")
    assert [n for n in sizes if n] == [4, 2]  # 6 steps: read at step 4 and at the epoch's last batch
    for key in ("loss", "loss_ssl", "loss_dimcl", "loss_probe", "probe_top1"):
        assert every_4.records[0][key] == every_step.records[0][key], key


def test_every_method_trains_through_the_command(tiny_fashion_mnist, tmp_path, method_name):
    """One epoch of every method, DimCL on, through `dimcl pretrain` (the method's small options from its row)."""
    overrides = [o for o in TINY_RUN if not o.startswith("method.")] + option_overrides(method_name)
    overrides += ["trainer.max_epochs=1", "eval.every=0", "optim.name=sgd", "optim.lr=0.05"]
    assert cli.main(["pretrain", "-o", str(tmp_path), f"method.name={method_name}", "backbone.name=small_cnn",
                     "data.name=fashion_mnist", f"data.root={tiny_fashion_mnist}", *overrides]) == 0
    (record,) = read_metrics(tmp_path)
    assert all(math.isfinite(record[key]) for key in ("loss", "loss_ssl", "loss_dimcl")), record


def test_accumulation_and_adamw_and_bf16(tiny_fashion_mnist, tmp_path):
    cfg = tiny_config(tiny_fashion_mnist, "optim.name=adamw", "optim.lr=0.001", "optim.accumulate_grad_batches=2",
                      "trainer.precision=bf16-mixed", "trainer.max_epochs=1")
    (record,) = pretrain(cfg, tmp_path).records
    assert record["step"] == 3  # 6 batches, one optimizer step per 2
    assert torch.isfinite(torch.tensor(record["loss"]))


def test_refuses_to_overwrite_a_run_and_resume_checks_the_config(tiny_fashion_mnist, tmp_path):
    pretrain(tiny_config(tiny_fashion_mnist, "trainer.max_epochs=1", "eval.every=0"), tmp_path)
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="already holds a run"):
        pretrain(tiny_config(tiny_fashion_mnist, "trainer.max_epochs=1", "eval.every=0"), tmp_path)
    with pytest.raises(ConfigError, match=r"dimcl.weight: 0.1 in the checkpoint, 0.2 now"):
        pretrain(tiny_config(tiny_fashion_mnist, "trainer.max_epochs=1", "eval.every=0", "dimcl.weight=0.2"),
                 tmp_path, resume=True)
    assert (tmp_path / "metrics.jsonl").read_text() == before
    # Training longer is allowed (the schedule is stretched), and so is switching a key of RUN_ONLY_KEYS
    # (a speed setting, the accelerator's name): the same keys a sweep accepts for a finished cell.
    assert {"trainer.channels_last", "trainer.accelerator", "data.root"} <= RUN_ONLY_KEYS
    result = pretrain(tiny_config(tiny_fashion_mnist, "trainer.max_epochs=2", "eval.every=0",
                                  "trainer.channels_last=true", "trainer.accelerator=cpu"), tmp_path, resume=True)
    assert [r["epoch"] for r in result.records] == [2]
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]
    assert json.loads(before)["epoch"] == 1


def test_resume_continues_exactly(tiny_fashion_mnist, tmp_path):
    """Stopping after epoch 1 of 2 and resuming gives the uninterrupted run's metrics and weights."""
    full = pretrain(tiny_config(tiny_fashion_mnist), tmp_path / "full")
    resumed = _resume_from_epoch_one(tiny_fashion_mnist, full, tmp_path)
    assert resumed.records[0]["loss"] == full.records[1]["loss"]
    assert resumed.records[0]["knn_top1"] == full.records[1]["knn_top1"]
    for p, q in zip(resumed.model.parameters(), full.model.parameters(), strict=True):
        assert torch.equal(p, q)


def dino_config(root, *extra):
    """DINO at the tests' widths, its teacher temperature warming up over both epochs and its last layer
    frozen during the first: what follows the epoch must follow it on resume too."""
    overrides = [o for o in TINY_RUN if not o.startswith("method.")] + option_overrides("dino")
    return load_config(resolve_recipe("fashion_mnist/dino"), [*overrides, f"data.root={root}",
                                                               "method.warmup_teacher_temperature_epochs=2", *extra])


def test_dino_resumes_exactly_with_its_centre(tiny_fashion_mnist, tmp_path):
    full = pretrain(dino_config(tiny_fashion_mnist, "eval.every=0"), tmp_path / "full")
    resumed = _resume_from_epoch_one(tiny_fashion_mnist, full, tmp_path, dino_config, "eval.every=0")
    assert resumed.records[0]["loss"] == full.records[1]["loss"]
    assert torch.equal(resumed.model.method.center, full.model.method.center)
    assert resumed.model.method.center.abs().sum() > 0  # the centre moved, and came back from the checkpoint
    for p, q in zip(resumed.model.parameters(), full.model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("freeze_last_layer", [1, 0])
def test_frozen_parameters_learn_nothing_and_gradients_are_clipped(tiny_fashion_mnist, tmp_path, monkeypatch,
                                                                    freeze_last_layer):
    """DINO's last layer stays as built during its frozen epoch (and learns once it is not frozen); with
    optim.clip_grad_norm every step's gradients reach the optimizer within that norm, the probe's apart."""
    built, norms = [], []
    build = loop.build_method_from_config

    def recording_build(cfg):
        method = build(cfg)
        built.append({k: v.clone() for k, v in method.prototypes.state_dict().items()})
        return method

    clip = loop.Fabric.clip_gradients

    def recording_clip(self, module, optimizer, **kwargs):
        total = clip(self, module, optimizer, **kwargs)
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        norms.append((kwargs["max_norm"], float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))))
        assert all(p.grad is None for p in module.prototypes.parameters()) == (freeze_last_layer == 1)
        return total

    monkeypatch.setattr(loop, "build_method_from_config", recording_build)
    monkeypatch.setattr(loop.Fabric, "clip_gradients", recording_clip)
    cfg = dino_config(tiny_fashion_mnist, "trainer.max_epochs=1", "eval.every=0", "optim.clip_grad_norm=0.5",
                      f"method.freeze_last_layer={freeze_last_layer}")
    result = pretrain(cfg, tmp_path)
    after = result.model.method.prototypes.state_dict()
    unchanged = all(torch.equal(after[k], v) for k, v in built[0].items())
    assert unchanged == (freeze_last_layer == 1)
    assert len(norms) == 6 and all(max_norm == 0.5 and norm <= 0.5 * (1 + 1e-5) for max_norm, norm in norms)


def _resume_from_epoch_one(root, full, tmp_path, make_config=tiny_config, *extra):
    """A real interruption: train 2 epochs, but make the second one fail, then --resume."""
    import dimcl.train.loop as loop

    run = tmp_path / "interrupted"
    original = loop.set_learning_rate
    calls = {"n": 0}

    def failing_after_first_epoch(optimizer, factor):
        calls["n"] += 1
        if calls["n"] > 6:  # 6 optimizer steps make an epoch here
            raise KeyboardInterrupt
        original(optimizer, factor)

    loop.set_learning_rate = failing_after_first_epoch
    try:
        with pytest.raises(KeyboardInterrupt):
            pretrain(make_config(root, *extra), run)
    finally:
        loop.set_learning_rate = original
    assert [r["epoch"] for r in read_metrics(run)] == [1]
    resumed = pretrain(make_config(root, *extra), run, resume=True)
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]
    assert read_metrics(run)[0]["loss"] == full.records[0]["loss"]
    return resumed


def test_channels_last_gives_the_same_run(tiny_fashion_mnist, tmp_path):
    plain = pretrain(tiny_config(tiny_fashion_mnist, "trainer.max_epochs=1"), tmp_path / "plain")
    fast = pretrain(tiny_config(tiny_fashion_mnist, "trainer.max_epochs=1", "trainer.channels_last=true"),
                    tmp_path / "channels_last")
    conv = next(m for m in fast.model.method.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    # Other convolution kernels sum <= 3*3*128 products per output in another order: a forward's loss within
    # ~depth * K * 6e-8 ~ 7e-4 at worst (docs/testing.md), and six steps do not amplify it past that.
    for key in ("loss", "loss_ssl", "loss_dimcl"):
        assert fast.records[0][key] == pytest.approx(plain.records[0][key], rel=1e-3), key


def test_compile_is_opt_in_and_keeps_checkpoint_names(tiny_fashion_mnist, tmp_path, monkeypatch):
    # TorchDynamo traces our networks for real; the "aot_eager" backend skips Inductor's C++ code
    # generation, which takes minutes on a 2-core CPU and is PyTorch's own business.
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_module(self, backend="aot_eager", **kw))
    cfg = tiny_config(tiny_fashion_mnist, "trainer.max_epochs=1")
    plain = pretrain(cfg, tmp_path / "plain")
    compiled = pretrain(dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, compile=True)),
                        tmp_path / "compiled")
    assert compiled.model.method.backbone._compiled_call_impl is not None
    assert plain.model.method.backbone._compiled_call_impl is None
    assert compiled.model.state_dict().keys() == plain.model.state_dict().keys()
    # Decomposed ops reorder sums as channels_last does: the same bound (docs/testing.md)
    assert compiled.records[0]["loss"] == pytest.approx(plain.records[0]["loss"], rel=1e-3)


@pytest.mark.skipif(not hasattr(torch.compiler, "set_stance"), reason="torch.compiler.set_stance needs torch >= 2.6")
def test_evaluation_does_not_compile_new_graphs(tiny_fashion_mnist, tmp_path, monkeypatch):
    """kNN and the diagnostics run the compiled networks eagerly: torch.compile traces graphs while
    training, none while evaluating (whose batch sizes and eval mode would each need new ones)."""
    traced, evaluating = [], {"now": False}

    def recording(gm, example_inputs):
        traced.append(evaluating["now"])
        return gm.forward

    def watched(run, epoch):
        evaluating["now"] = True
        try:
            return evaluate(run, epoch)
        finally:
            evaluating["now"] = False

    compile_module, evaluate = torch.nn.Module.compile, loop._evaluate_epoch
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_module(self, backend=recording, **kw))
    monkeypatch.setattr(loop, "_evaluate_epoch", watched)
    torch._dynamo.reset()
    record = pretrain(tiny_config(tiny_fashion_mnist, "trainer.max_epochs=1", "trainer.compile=true"), tmp_path)
    torch._dynamo.reset()
    assert "knn_top1" in record.records[0] and "backbone_effective_rank" in record.records[0]
    assert traced and not any(traced), traced


def test_diagnostics_every_n_epochs_and_after_the_last(tiny_fashion_mnist, tmp_path):
    result = pretrain(tiny_config(tiny_fashion_mnist, "trainer.max_epochs=3", "eval.every=0",
                                  "eval.diagnose_every=2"), tmp_path)
    assert ["backbone_effective_rank" in r for r in result.records] == [False, True, True]
