"""timm backbones (``backbone.name=timm/<model>``): built, trained, evaluated and exported end to end.

timm's ``test_*`` models are a few hundred thousand parameters; every model is created with random weights
(``pretrained=False``), so nothing is downloaded.
"""

from __future__ import annotations

import json
import sys

import pytest
import timm
import torch
from conftest import TINY_RUN

from dimcl.cli import main
from dimcl.config import ConfigError
from dimcl.export import load_backbone
from dimcl.models import build_backbone
from dimcl.recipes import load_config


def test_a_timm_backbone_is_timms_model_with_random_weights_and_its_own_feature_width():
    torch.manual_seed(0)
    backbone = build_backbone("timm/test_resnet", in_channels=1, image_size=28)
    torch.manual_seed(0)
    reference = timm.create_model("test_resnet", pretrained=False, num_classes=0, in_chans=1)
    # the width probe draws no random number and moves no statistic: the same init as timm's own
    assert backbone.state_dict().keys() == reference.state_dict().keys()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in backbone.state_dict().items())
    assert backbone.training and backbone.timm_kwargs == {"num_classes": 0, "in_chans": 1}
    assert backbone(torch.randn(3, 1, 28, 28)).shape == (3, backbone.num_features)


def test_a_fixed_input_size_model_is_told_the_image_size():
    backbone = build_backbone("timm/test_vit", in_channels=3, image_size=32)
    assert backbone.timm_kwargs["img_size"] == 32
    assert backbone.eval()(torch.randn(2, 3, 32, 32)).shape == (2, backbone.num_features)


def test_bad_timm_names_and_a_missing_timm_are_one_paragraph_errors(monkeypatch):
    with pytest.raises(ConfigError, match=r"backbone.name' got 'timm/test_resnett'.*Did you mean 'timm/test_resnet'"):
        load_config(None, ["backbone.name=timm/test_resnett"])
    with pytest.raises(ValueError, match="has no cifar_stem option"):
        build_backbone("timm/test_resnet", cifar_stem=True)
    with pytest.raises(ValueError, match="cannot take 1-channel 2x2 images"):
        build_backbone("timm/test_vit", in_channels=1, image_size=2)
    monkeypatch.setitem(sys.modules, "timm", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"need the timm package.*pip install 'dimcl\[timm\]'"):
        load_config(None, ["backbone.name=timm/resnet18"])


def test_a_timm_backbone_pretrains_evaluates_and_exports_into_timm(tiny_fashion_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pretrain", "-c", "fashion_mnist/byol", "-o", str(run), *TINY_RUN, f"data.root={tiny_fashion_mnist}",
                 "backbone.name=timm/test_resnet", "trainer.max_epochs=1", "eval.diagnose=false"]) == 0
    capsys.readouterr()
    assert main(["knn", "--ckpt", str(run)]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["knn_top1"] <= 100

    out = tmp_path / "test_resnet.safetensors"
    assert main(["export", "--ckpt", str(run), "--format", "timm", "--out", str(out)]) == 0
    backbone, meta = load_backbone(run)
    assert meta["timm_model"] == "test_resnet" and meta["num_features"] == backbone.num_features
    model = timm.create_model(meta["timm_model"], pretrained=False, **meta["timm_kwargs"])
    timm.models.load_checkpoint(model, str(out), strict=True)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), backbone(x))
    assert main(["export", "--ckpt", str(run), "--format", "torchvision", "--out", str(tmp_path / "x.pth")]) == 2
    assert "exports with --format timm" in capsys.readouterr().err
