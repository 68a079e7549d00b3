"""One experiment identity: which config keys make two runs the same experiment.

Every place that asks "is this the same experiment?" asks here: resuming a run (:mod:`dimcl.train.run_writer`),
reusing a sweep cell (:mod:`dimcl.sweep`), reusing a demo arm (:mod:`dimcl.demo`), grouping runs over
seeds (:mod:`dimcl.report`) and matching floors to runs (:mod:`dimcl.baselines`, whose protocol is the
part of the identity an evaluation depends on).

The rules, in one place:

- keys of :data:`RUN_ONLY_KEYS` never make two runs different experiments (where files are, what is
  shown or logged, how fast it goes);
- with λ = 0 (``dimcl.weight``) the other ``dimcl.*`` keys change nothing (the term is not computed);
- a key a saved config lacks counts as its default (:func:`flatten_with_defaults`);
- ``seed`` is part of a run's identity, not of its group's (``across_seeds``);
- ``trainer.max_epochs`` is part of it, but a run may continue to a longer budget (``epochs``).
"""

from __future__ import annotations

from typing import Any, Literal

from dimcl.config import Config, flatten_config

#: keys that change only where the run reads its files, what it shows or logs, how often it saves, or
#: how fast it goes (up to the order of floating-point operations): runs that differ in them are the same
#: experiment (the report groups them), and a run may be resumed with other values of them
RUN_ONLY_KEYS = frozenset({
    "trainer.progress_bar", "trainer.log_every_n_steps", "trainer.tensorboard", "trainer.checkpoint_every_n_steps",
    "trainer.wandb", "trainer.wandb_project", "trainer.wandb_entity", "trainer.wandb_name",
    "trainer.compile", "trainer.channels_last", "trainer.accelerator", "trainer.strategy", "optim.fused",
    "data.num_workers", "data.on_bad_image", "data.augment_on", "data.root", "data.download",
    "eval.diagnose_every",
})


def flatten_with_defaults(mapping: dict[str, Any]) -> dict[str, Any]:
    """The dotted keys of a saved config, every key it lacks at its default: a config saved before the key
    existed describes the same experiment as one with the key at its default (a new key's default keeps the
    old behaviour)."""
    return {**flatten_config(Config().to_dict()), **flatten_config(mapping)}


def experiment_of(flat: dict[str, Any], across_seeds: bool = False) -> dict[str, Any]:
    """The keys of a flat config (``flatten_with_defaults``) that define its experiment: without
    :data:`RUN_ONLY_KEYS`, without ``seed`` when ``across_seeds``, and with λ = 0 without the other
    ``dimcl.*`` keys."""
    ignored = RUN_ONLY_KEYS | {"seed"} if across_seeds else RUN_ONLY_KEYS
    out = {k: v for k, v in flat.items() if k not in ignored}
    if float(out.get("dimcl.weight", 0.0)) == 0:
        out = {k: v for k, v in out.items() if not k.startswith("dimcl.") or k == "dimcl.weight"}
    return out


def experiment_differences(
    old: dict[str, Any], new: dict[str, Any], epochs: Literal["same", "may_grow", "any"] = "same"
) -> list[tuple[str, Any, Any]]:
    """(key, old, new) for every key that makes ``new`` (a config's ``to_dict()``) another experiment than
    ``old``; empty when they are the same one. ``epochs``: whether ``trainer.max_epochs`` must be equal,
    may grow (a sweep continues a run to a longer budget), or may change (resume checks it itself)."""
    flat_old, flat_new = experiment_of(flatten_with_defaults(old)), experiment_of(flatten_with_defaults(new))
    diffs = []
    for key in sorted(set(flat_old) | set(flat_new)):
        before, after = flat_old.get(key), flat_new.get(key)
        if before == after:
            continue
        if key.startswith("dimcl.") and (key in flat_old) != (key in flat_new):
            continue  # one side plain (λ = 0): its other dimcl.* keys are gone, and λ alone tells them apart
        if key == "trainer.max_epochs" and (
            epochs == "any" or (epochs == "may_grow" and isinstance(before, int) and isinstance(after, int)
                                and after > before)
        ):
            continue
        diffs.append((key, before, after))
    return diffs


#: the config keys that define an evaluation protocol, which the floors and ceiling of ``dimcl baselines``
#: are made for (two records with equal values are the same): the data, the backbone, the budget, the kNN
PROTOCOL_KEYS = (
    ("data", "name"), ("data", "val_size"), ("data", "eval_subset"), ("data", "subset"), ("data", "batch_size"),
    ("backbone", "name"), ("augment", "crop_size"), ("augment", "crop_scale"), ("trainer", "max_epochs"),
    ("eval", "knn_k"), ("eval", "knn_temperature"),
)


#: protocol keys that join it only when set (the classes of an unseen-class protocol), so the records made
#: before they existed, on every class, keep their protocol
PROTOCOL_KEYS_WHEN_SET = (("data", "classes"), ("eval", "classes"))


def protocol_of(cfg: Config) -> dict[str, Any]:
    """The values of :data:`PROTOCOL_KEYS` in ``cfg`` as a flat ``{"data.name": ..., ...}`` mapping, and those of
    :data:`PROTOCOL_KEYS_WHEN_SET` that are set."""
    out = {}
    for section, key in PROTOCOL_KEYS + PROTOCOL_KEYS_WHEN_SET:
        value = getattr(getattr(cfg, section), key)
        if value is None and (section, key) in PROTOCOL_KEYS_WHEN_SET:
            continue
        out[f"{section}.{key}"] = list(value) if isinstance(value, tuple) else value
    return out
