"""Typed configuration: recipes, overrides, and one-paragraph errors for bad values."""

from __future__ import annotations

import typing

import pytest

from dimcl.config import ConfigError, DimCLConfig, parse_override
from dimcl.experiment import experiment_differences
from dimcl.losses.dimcl import IMPLEMENTATIONS
from dimcl.methods import METHODS
from dimcl.recipes import config_from_dict, list_recipes, load_config, resolve_recipe

#: the datasets with a bundled recipe for every method (imagefolder has none: it needs the user's images)
DATASETS = ("cifar10", "cifar100", "stl10", "imagenet100", "fashion_mnist")


def test_every_dataset_has_a_recipe_for_every_method():
    assert {f"{d}/{m}" for d in DATASETS for m in METHODS} <= set(list_recipes())


@pytest.mark.parametrize("recipe", [f"{d}/{m}" for d in DATASETS for m in METHODS])
def test_every_recipe_loads_and_validates(recipe):
    cfg = load_config(resolve_recipe(recipe))
    assert cfg.method.name == recipe.split("/")[1]
    assert cfg.dimcl.weight == 0.1 and cfg.dimcl.temperature == 0.1
    if not recipe.startswith("fashion_mnist"):
        assert cfg.backbone.name == "resnet18" and cfg.trainer.max_epochs == 200 and cfg.data.batch_size == 256
    # the resolved config survives a round trip through its dict (a run's config.yaml)
    assert config_from_dict(cfg.to_dict()) == cfg


def test_overrides_are_parsed_as_yaml_and_typed():
    cfg = load_config(
        resolve_recipe("cifar10/byol"),
        ["trainer.max_epochs=5", "dimcl.weight=0", "augment.crop_scale=[0.2, 1.0]", "data.root=null",
         "method.proj_hidden_dim=1024", "trainer.precision=bf16-mixed", "optim.lr=2"],
    )
    assert cfg.trainer.max_epochs == 5 and cfg.dimcl.weight == 0.0 and cfg.augment.crop_scale == [0.2, 1.0]
    assert cfg.data.root is None and cfg.method.options["proj_hidden_dim"] == 1024
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 2.0
    assert parse_override("data.root=/a=b") == ("data.root", "/a=b")


def test_precision_given_as_a_number_is_accepted():
    assert load_config(None, ["trainer.precision=32"]).trainer.precision == "32"


@pytest.mark.parametrize(
    "override,match",
    [
        ("trainer.max_epoch=5", r"unknown config key 'trainer.max_epoch'.*Did you mean 'max_epochs'"),
        ("trainr.max_epochs=5", r"'trainr' is not a key of the top level.*Did you mean 'trainer'"),
        ("trainer.max_epochs=five", r"'trainer.max_epochs' got 'five', which is not an integer"),
        ("dimcl.weight=1.5", r"'dimcl.weight' got 1.5; λ must lie in \[0, 1\]"),
        ("dimcl.temperature=0", r"'dimcl.temperature' got 0.0; τ must be > 0"),
        ("data.batch_size=1", r"'data.batch_size' got 1; the batch size per device must be at least 2"),
        ("method.name=byl", r"unknown name 'byl'.*Did you mean 'byol'"),
        ("backbone.name=resnet19", r"unknown name 'resnet19'.*Did you mean 'resnet18'"),
        ("data.name=cifar", r"unknown name 'cifar'"),
        ("method.temperature=0.2", r"'method.temperature' is not an option of method 'byol'"),
        ("method.proj_hidden_dim=-4", r"'method.proj_hidden_dim' got -4; it must be > 0"),
        ("optim.name=adam", r"'optim.name' got 'adam', which is not one of 'lars', 'sgd', 'adamw'.*'adamw'"),
        ("trainer.precision=bf16", r"not one of .*'bf16-mixed'"),
        ("optim.lr=0", r"'optim.lr' got 0.0"),
        ("augment.crop_scale=[0.5, 0.2]", r"'augment.crop_scale' got \[0.5, 0.2\]"),
        ("augment.hue=0.9", r"'augment.hue' got 0.9"),
        ("trainer=3", r"'trainer' is a section and takes a mapping"),
        ("trainer.strategy=ddp_spawn", r"'trainer.strategy' got 'ddp_spawn'; dimcl does not spawn.*strategy=ddp"),
        ("seed", r"not of the form key=value"),
    ],
)
def test_bad_values_are_one_paragraph_errors(override, match):
    with pytest.raises(ConfigError, match=match) as info:
        load_config(resolve_recipe("cifar10/byol"), [override])
    assert "\n" not in str(info.value)


def test_colour_knobs_are_refused_on_grayscale_data():
    with pytest.raises(ConfigError, match=r"augment.saturation.*one channel"):
        load_config(resolve_recipe("fashion_mnist/byol"), ["augment.saturation=0.4"])


def test_unknown_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match=r"cifar10/byl.*Did you mean 'cifar10/byol'"):
        resolve_recipe("cifar10/byl")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_experiment_differences_names_each_changed_key():
    a = load_config(None).to_dict()
    b = load_config(None, ["dimcl.weight=0.3", "method.proj_hidden_dim=8"]).to_dict()
    assert experiment_differences(a, b) == [("dimcl.weight", 0.1, 0.3), ("method.proj_hidden_dim", None, 8)]


def test_dimcl_settings_have_one_home():
    """The config's DimCL section is what a method takes (checked at construction as after loading), a
    method built without it is plain, and the config accepts exactly the loss's implementations."""
    from dimcl.methods import DimCLConfig as MethodsDimCLConfig

    assert MethodsDimCLConfig is DimCLConfig and DimCLConfig().weight == 0.1
    assert typing.get_args(typing.get_type_hints(DimCLConfig)["implementation"]) == IMPLEMENTATIONS
    with pytest.raises(ConfigError, match=r"'dimcl.weight' got 1.5; λ must lie in \[0, 1\]"):
        DimCLConfig(weight=1.5)
    with pytest.raises(ConfigError, match="'dimcl.weight' got 2"):
        load_config(resolve_recipe("fashion_mnist/byol"), ["dimcl.weight=2"])
