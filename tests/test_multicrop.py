"""Multi-crop: two global views plus ``augment.num_local_crops`` small local ones.

The config keys and their errors; the views of both view paths (loader and device) for N = 0 and N = 2,
the global views unchanged by the local ones.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_RUN

from dimcl.build import build_device_views, build_pretrain_dataset, view_configs
from dimcl.config import AugmentConfig, ConfigError
from dimcl.data import byol_view_configs, dataset_info
from dimcl.data.view_config import local_crop_side
from dimcl.methods import DimCLConfig
from dimcl.recipes import load_config, resolve_recipe

FASHION = dataset_info("fashion_mnist")
CIFAR = dataset_info("cifar10")


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
