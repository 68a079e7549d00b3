"""Shared fixtures: small datasets written in the real on-disk formats (no test downloads anything)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from torch import nn

from dimcl.methods import METHODS


def write_fashion_mnist(root: Path, n_train: int = 96, n_test: int = 48, seed: int = 0) -> Path:
    """IDX ``.gz`` files like the Debian package's, with 10 learnable classes (a bar per class + noise)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)

    def images_and_labels(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            row = 2 + 2 * label
            images[i, row : row + 3, 4:24] = 255  # a class-specific horizontal bar
        return images, labels.astype(np.uint8)

    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = images_and_labels(n)
        with gzip.open(root / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        with gzip.open(root / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 0x801, n) + labels.tobytes())
    return root


@pytest.fixture(scope="session")
def tiny_fashion_mnist(tmp_path_factory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("fashion_mnist"))


@pytest.fixture(scope="session")
def tiny_byol_run(tiny_fashion_mnist, tmp_path_factory) -> Path:
    """A finished one-epoch BYOL run on the tiny Fashion-MNIST (checkpoint and exported backbone). Shared:
    copy it before writing into it."""
    from dimcl.recipes import load_config, resolve_recipe
    from dimcl.train.loop import pretrain

    run = tmp_path_factory.mktemp("tiny_byol") / "run"
    pretrain(load_config(resolve_recipe("fashion_mnist/byol"),
                         [*TINY_RUN, f"data.root={tiny_fashion_mnist}", "trainer.max_epochs=1", "eval.every=0"]), run)
    return run


#: overrides that make a pretraining run take seconds on a 2-core CPU
TINY_RUN = [
    "method.proj_hidden_dim=32",
    "method.proj_output_dim=16",
    "method.pred_hidden_dim=32",
    "data.batch_size=16",
    "data.num_workers=0",
    "trainer.max_epochs=2",
    "trainer.progress_bar=false",
    "trainer.tensorboard=false",
    "optim.warmup_epochs=1",
    "eval.knn_k=10",
]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The shared method tests run once per method: a test taking ``method_name`` over every registered
    method, ``multi_crop_method`` over those whose class sets ``multi_crop``, ``two_view_method`` over the
    others. The methods are ``dimcl.methods.METHODS``, or the test module's own ``METHODS_UNDER_TEST``
    (name -> class; tests/methods/test_plug_in.py runs the same test functions on a method it defines).
    Their per-method settings are the rows of tests/methods/cases.py."""
    methods = getattr(metafunc.module, "METHODS_UNDER_TEST", METHODS)
    for argument, chosen in (
        ("method_name", list(methods)),
        ("multi_crop_method", [name for name, cls in methods.items() if cls.multi_crop]),
        ("two_view_method", [name for name, cls in methods.items() if not cls.multi_crop]),
    ):
        if argument in metafunc.fixturenames:
            metafunc.parametrize(argument, chosen)


class TinyBackbone(nn.Module):
    """A 3-channel convolutional backbone with a global pool (any input side, multi-crop's local views too)."""

    num_features = 24

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(32, self.num_features),
        )

    def forward(self, x):
        return self.net(x)
