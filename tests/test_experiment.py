"""The one experiment identity that resume, sweeps, the demo, the report and the baselines share."""

from __future__ import annotations

from dimcl.config import Config
from dimcl.experiment import RUN_ONLY_KEYS, experiment_differences, experiment_of, flatten_with_defaults


def _dict(**changes) -> dict:
    cfg = Config()
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        setattr(getattr(cfg, section), key, value)
    return cfg.to_dict()


def test_run_only_keys_never_make_another_experiment():
    assert {"data.num_workers", "data.root", "trainer.progress_bar"} <= RUN_ONLY_KEYS
    assert experiment_differences(_dict(), _dict(data__num_workers=7, data__root="/elsewhere")) == []


def test_the_seed_tells_runs_apart_but_not_their_group():
    a, b = Config().to_dict(), Config().to_dict()
    b["seed"] = 3
    assert experiment_differences(a, b) == [("seed", 0, 3)]
    assert experiment_of(flatten_with_defaults(a), across_seeds=True) == experiment_of(
        flatten_with_defaults(b), across_seeds=True)


def test_with_lambda_zero_the_other_dimcl_keys_change_nothing():
    base = _dict(dimcl__weight=0.0)
    assert experiment_differences(base, _dict(dimcl__weight=0.0, dimcl__temperature=0.5)) == []
    assert experiment_differences(_dict(), _dict(dimcl__temperature=0.5)) == [("dimcl.temperature", 0.1, 0.5)]
    assert experiment_differences(base, _dict()) == [("dimcl.weight", 0.0, 0.1)]


def test_the_budget_may_grow_or_change_only_where_asked():
    short, long = _dict(trainer__max_epochs=5), _dict(trainer__max_epochs=8)
    assert experiment_differences(short, long) == [("trainer.max_epochs", 5, 8)]
    assert experiment_differences(short, long, epochs="may_grow") == []
    assert experiment_differences(long, short, epochs="may_grow") == [("trainer.max_epochs", 8, 5)]
    assert experiment_differences(long, short, epochs="any") == []


def test_a_key_an_old_config_lacks_counts_as_its_default():
    old = Config().to_dict()
    del old["data"]["val_size"]
    assert experiment_differences(old, Config().to_dict()) == []


def test_a_method_option_on_one_side_only_is_another_experiment():
    with_option = Config().to_dict()
    with_option["method"]["proj_hidden_dim"] = 8  # to_dict() lays the method's options beside its name
    assert experiment_differences(Config().to_dict(), with_option) == [("method.proj_hidden_dim", None, 8)]
