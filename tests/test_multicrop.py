"""Multi-crop: two global views plus ``augment.num_local_crops`` small local ones.

The config keys and their errors; the views of both view paths (loader and device) for N = 0 and N = 2,
the global views unchanged by the local ones; every multi-crop method's step with local views; two-view
training (N = 0) computing exactly what it computed before multi-crop existed (losses and gradients,
``torch.equal``); DimCL's ``local_pairs``; and real runs through ``pretrain``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY_RUN, TinyBackbone
from methods.cases import case, option_overrides

from dimcl.build import build_device_views, build_pretrain_dataset, view_configs
from dimcl.config import AugmentConfig, ConfigError
from dimcl.data import byol_view_configs, dataset_info
from dimcl.data.view_config import local_crop_side
from dimcl.losses import multi_view_nt_xent_loss, nt_xent_loss
from dimcl.methods import METHODS, DimCLConfig, build_method
from dimcl.recipes import load_config, resolve_recipe
from dimcl.train.loop import pretrain

FASHION = dataset_info("fashion_mnist")
CIFAR = dataset_info("cifar10")


def make(name, weight=0.1, local_pairs=False, seed=0):
    torch.manual_seed(seed)
    dimcl = DimCLConfig(weight=weight, temperature=0.1, local_pairs=local_pairs)
    return build_method(name, TinyBackbone(), dimcl, gather_distributed=False, **case(name).options)


def crops(num_local=0, n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 8, 8, generator=g)
    views = [x + 0.1 * torch.randn(x.shape, generator=g) for _ in range(2)]
    return views + [torch.randn(n, 3, 4, 4, generator=g) for _ in range(num_local)]


# ------------------------------------------------------------------------------------------------ config


def test_config_defaults_are_two_view_training():
    a = AugmentConfig()
    assert a.num_local_crops == 0 and a.local_crop_size is None and a.local_crop_scale == [0.05, 0.14]
    assert DimCLConfig().local_pairs is False


@pytest.mark.parametrize(
    "override,key",
    [
        ("augment.num_local_crops=-1", "augment.num_local_crops"),
        ("augment.local_crop_size=0", "augment.local_crop_size"),
        ("augment.local_crop_scale=[0.2,0.1]", "augment.local_crop_scale"),
        ("augment.local_crop_scale=[0.1]", "augment.local_crop_scale"),
    ],
)
def test_bad_multi_crop_values_are_config_errors(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(resolve_recipe("cifar10/byol"), [override])


def test_the_config_takes_local_crops_exactly_for_multi_crop_methods(method_name):
    def config(num_local):
        return load_config(None, [f"method.name={method_name}", f"augment.num_local_crops={num_local}"])

    config(0)
    if METHODS[method_name].multi_crop:
        assert config(2).augment.num_local_crops == 2
    else:
        with pytest.raises(ConfigError, match=f"augment.num_local_crops.*'{method_name}' has no multi-crop form"):
            config(2)


# ------------------------------------------------------------------------------------------------- views


def test_local_side_follows_solo_learns_imagenet_proportion():
    assert local_crop_side(224) == 96 and local_crop_side(32) == 14 and local_crop_side(28) == 12
    assert local_crop_side(32, 16) == 16


def test_view_configs_add_local_copies_of_the_second_view():
    two = view_configs(AugmentConfig(crop_scale=[0.3, 1.0]), CIFAR)
    assert len(two) == 2
    assert [v.crop_scale for v in two] == [(0.3, 1.0)] * 2
    four = view_configs(AugmentConfig(crop_scale=[0.3, 1.0], num_local_crops=2, local_crop_size=16), CIFAR)
    assert four[:2] == two
    for local in four[2:]:
        assert (local.crop_size, local.crop_scale) == (16, (0.05, 0.14))
        assert vars(local) == {**vars(two[1]), "crop_size": 16, "crop_scale": (0.05, 0.14)}
    # N = 0 is the plain BYOL pair, whatever the local keys say
    assert view_configs(AugmentConfig(local_crop_size=5), FASHION) == byol_view_configs(FASHION)


def _cfg(root, num_local, *extra):
    return load_config(resolve_recipe("fashion_mnist/byol"),
                       [*TINY_RUN, f"data.root={root}", f"augment.num_local_crops={num_local}", *extra])


@pytest.mark.parametrize("num_local", [0, 2])
def test_loader_views_have_the_global_and_local_shapes(tiny_fashion_mnist, num_local):
    dataset = build_pretrain_dataset(_cfg(tiny_fashion_mnist, num_local))
    torch.manual_seed(3)
    views, _ = dataset[0]
    assert [tuple(v.shape) for v in views] == [(1, 28, 28)] * 2 + [(1, 12, 12)] * num_local
    if num_local:  # the global views draw their random numbers first: the same as in two-view training
        two_view = build_pretrain_dataset(_cfg(tiny_fashion_mnist, 0))
        torch.manual_seed(3)
        globals_only, _ = two_view[0]
        assert all(torch.equal(a, b) for a, b in zip(views[:2], globals_only, strict=True))


@pytest.mark.parametrize("num_local", [0, 2])
def test_device_views_have_the_global_and_local_shapes(tiny_fashion_mnist, num_local):
    device_views = build_device_views(_cfg(tiny_fashion_mnist, num_local, "data.augment_on=device"))
    images = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    torch.manual_seed(4)
    views = device_views(images)
    assert [tuple(v.shape) for v in views] == [(5, 1, 28, 28)] * 2 + [(5, 1, 12, 12)] * num_local
    torch.manual_seed(4)
    globals_only = build_device_views(_cfg(tiny_fashion_mnist, 0, "data.augment_on=device"))(images)
    assert all(torch.equal(a, b) for a, b in zip(views[:2], globals_only, strict=True))


# ----------------------------------------------------------------------------------------------- methods


def test_multi_crop_step_is_finite_and_reaches_the_backbone(multi_crop_method):
    method = make(multi_crop_method, weight=0.1, local_pairs=True)
    out = method(crops(num_local=2))
    assert torch.isfinite(out["loss"]) and out["z1"].shape == out["z2"].shape and out["z1"].shape[0] == 8
    out["loss"].backward()
    first_conv = method.backbone.net[0].weight.grad
    assert first_conv is not None and torch.isfinite(first_conv).all() and first_conv.abs().sum() > 0


def test_two_view_only_methods_refuse_local_views(two_view_method):
    with pytest.raises(ValueError, match="exactly two augmented views, got 4"):
        make(two_view_method)(crops(num_local=2))


def _two_view_loss(method, x1, x2):
    """The two-view loss as it was computed before multi-crop existed: the online projections, the method's
    objective restated from them (its row's reference, tests/methods/cases.py), DimCL on them."""
    f1 = method.backbone(x1)
    z1, z2 = method.projector(f1), method.projector(method.backbone(x2))
    loss = case(method.name).reference(method, [x1, x2], z1, z2)
    return (1 - method.dimcl.weight) * loss + method.dimcl.weight * method.dimcl_loss(z1, z2)


@pytest.mark.parametrize("local_pairs", [False, True])
def test_two_views_compute_exactly_what_they_did_before_multi_crop(method_name, local_pairs):
    method = make(method_name, weight=0.1, local_pairs=local_pairs)
    reference = copy.deepcopy(method)
    x1, x2 = crops()
    loss = method([x1, x2])["loss"]
    expected = _two_view_loss(reference, x1, x2)
    assert torch.equal(loss, expected)
    loss.backward()
    expected.backward()
    for (key, p), q in zip(method.named_parameters(), reference.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None) and (p.grad is None or torch.equal(p.grad, q.grad)), key


def test_dimcl_local_pairs_change_the_loss_only_with_local_views(multi_crop_method):
    for num_local, changes in ((0, False), (2, True)):
        outs = [make(multi_crop_method, local_pairs=pairs)(crops(num_local)) for pairs in (False, True)]
        assert torch.equal(outs[0]["loss_ssl"], outs[1]["loss_ssl"])
        assert torch.equal(outs[0]["loss_dimcl"], outs[1]["loss_dimcl"]) is not changes


def test_multi_view_nt_xent_with_two_views_is_nt_xent():
    z1, z2, z3 = torch.randn(3, 10, 6).unbind(0)
    torch.testing.assert_close(multi_view_nt_xent_loss(z1, z2, temperature=0.3), nt_xent_loss(z1, z2, 0.3))
    # three views: each anchor has two positives, and the loss stays finite and positive
    assert multi_view_nt_xent_loss(z1, z2, z3, temperature=0.3) > 0


# ------------------------------------------------------------------------------------------------- a run


@pytest.mark.parametrize("method,augment_on", [("byol", "loader"), ("simclr", "loader"), ("byol", "device")])
def test_a_real_multi_crop_run(tiny_fashion_mnist, tmp_path, method, augment_on):
    overrides = [o for o in TINY_RUN if not o.startswith("method.")] + option_overrides(method)
    cfg = load_config(resolve_recipe(f"fashion_mnist/{method}"), [
        *overrides, f"data.root={tiny_fashion_mnist}", "augment.num_local_crops=2", "dimcl.local_pairs=true",
        "trainer.max_epochs=1", f"data.augment_on={augment_on}",
    ])
    (record,) = pretrain(cfg, tmp_path / "run").records
    assert torch.isfinite(torch.tensor(record["loss"])) and "loss_dimcl" in record and "knn_top1" in record


MULTI_CROP_RECIPES = ["cifar10/byol_multicrop", "cifar10/simclr_multicrop",
                      "imagenet100/byol_multicrop", "imagenet100/simclr_multicrop"]


@pytest.mark.parametrize("recipe", MULTI_CROP_RECIPES)
def test_multi_crop_recipes_load_with_solo_learns_scales(recipe):
    cfg = load_config(resolve_recipe(recipe))
    assert cfg.method.name == recipe.split("/")[1].removesuffix("_multicrop")
    a = cfg.augment
    assert a.crop_scale == [0.14, 1.0] and a.local_crop_scale == [0.05, 0.14]
    expected = (6, 96) if recipe.startswith("imagenet100") else (4, 16)
    assert (a.num_local_crops, a.local_crop_size) == expected
