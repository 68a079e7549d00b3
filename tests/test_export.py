"""Getting the backbone out: dimcl.load_backbone and `dimcl export`, round-tripped into torchvision."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from conftest import TINY_RUN
from safetensors.torch import save_file
from torch import nn

import dimcl
from dimcl.checkpoint import CheckpointError, load_backbone_weights
from dimcl.cli import main
from dimcl.data import dataset_info
from dimcl.export import EXPORT_FORMATS, export, load_backbone
from dimcl.recipes import load_config, resolve_recipe
from dimcl.train.loop import pretrain

#: one epoch of two steps on 16 px crops: ResNet-18 is slow on a CPU, and the weights need only be trained ones
FAST = ["trainer.max_epochs=1", "data.subset=32", "augment.crop_size=16", "eval.every=0", "eval.diagnose=false",
        "eval.online_probe=false"]


@pytest.fixture(scope="module")
def resnet_run(tiny_fashion_mnist, tmp_path_factory):
    """A one-epoch ResNet-18 run on small grayscale images: the CIFAR stem, one input channel."""
    run = tmp_path_factory.mktemp("resnet") / "run"
    cfg = load_config(resolve_recipe("fashion_mnist/byol"),
                      [*TINY_RUN, f"data.root={tiny_fashion_mnist}", "backbone.name=resnet18", *FAST])
    pretrain(cfg, run)
    return run


def _images(meta: dict, n: int = 4) -> torch.Tensor:
    """Normalised inputs as the metadata describes them."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, meta["in_channels"], meta["image_size"], meta["image_size"], generator=g)
    mean, std = torch.tensor(meta["mean"]).view(1, -1, 1, 1), torch.tensor(meta["std"]).view(1, -1, 1, 1)
    return (x - mean) / std


def test_load_backbone_gives_a_ready_module_and_its_metadata(resnet_run):
    backbone, meta = dimcl.load_backbone(resnet_run)
    assert not backbone.training and all(p.device.type == "cpu" for p in backbone.parameters())
    info = dataset_info("fashion_mnist")
    assert meta["backbone"] == "resnet18" and meta["stem"] == "cifar"
    assert (meta["in_channels"], meta["image_size"], meta["num_features"]) == (1, 16, 512)
    assert meta["mean"] == list(info.mean) and meta["std"] == list(info.std)
    assert meta["method"] == "byol" and meta["dimcl_version"] == dimcl.__version__
    with torch.no_grad():
        assert backbone(_images(meta)).shape == (4, 512)
    # the run's exported file carries the same metadata as the one rebuilt from its config
    _, stored = load_backbone_weights(resnet_run / "backbone.safetensors")
    assert stored == meta


def test_resnet18_with_the_cifar_stem_loads_into_a_fresh_torchvision_model(resnet_run, tmp_path, capsys):
    out = tmp_path / "resnet18.pth"
    assert main(["export", "--ckpt", str(resnet_run), "--format", "torchvision", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[: printed.rindex("}") + 1])["stem"] == "cifar"

    model = torchvision.models.resnet18(weights=None)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)  # the CIFAR stem
    model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    model.load_state_dict(torch.load(out, weights_only=True))  # strict: every key matches
    backbone, meta = load_backbone(resnet_run)
    x = _images(meta)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), backbone(x))


def test_every_path_to_the_backbone_gives_the_same_features(resnet_run, tmp_path):
    elsewhere = tmp_path / "shared" / "resnet18.safetensors"  # outside the run: read from its metadata alone
    assert main(["export", "--ckpt", str(resnet_run), "--format", "safetensors", "--out", str(elsewhere)]) == 0
    tv_safetensors = tmp_path / "tv.safetensors"
    export(resnet_run, "torchvision", tv_safetensors)
    reference, meta = load_backbone(resnet_run)
    x = _images(meta)
    with torch.no_grad():
        expected = reference(x)
        for path in (resnet_run / "checkpoints" / "last.ckpt", resnet_run / "backbone.safetensors", elsewhere):
            backbone, other_meta = load_backbone(path)
            assert torch.equal(backbone(x), expected), path
            assert other_meta == meta, path
    tensors, _ = load_backbone_weights(tv_safetensors)
    assert tensors.keys() == reference.state_dict().keys()


def test_files_exported_before_the_normalisation_keys_still_load(resnet_run, tmp_path):
    tensors, meta = load_backbone_weights(resnet_run / "backbone.safetensors")
    old = {k: v for k, v in meta.items() if k not in ("stem", "mean", "std", "dimcl_version")}
    path = tmp_path / "old.safetensors"
    save_file(tensors, str(path), metadata={"dimcl": json.dumps(old)})
    _, loaded = load_backbone(path)
    assert loaded["stem"] == "cifar" and loaded["mean"] == meta["mean"]


def test_export_refuses_a_format_the_backbone_does_not_fit(resnet_run, tmp_path, capsys):
    out = tmp_path / "x.pth"
    assert main(["export", "--ckpt", str(resnet_run), "--format", "timm", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'resnet18' is not a timm model" in err and "--format torchvision" in err and "Traceback" not in err
    assert main(["export", "--ckpt", str(resnet_run), "--format", "safetensors", "--out", str(out)]) == 2
    assert "writes a .safetensors file" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", str(resnet_run), "--format", "onnx", "--out", str(out)])
    # the parser's choices are the formats export() knows
    assert "{torchvision,timm,safetensors}" in capsys.readouterr().err and len(EXPORT_FORMATS) == 3


def test_a_foreign_safetensors_file_is_a_clear_error(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="without dimcl's metadata"):
        load_backbone(path)
