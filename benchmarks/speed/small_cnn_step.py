"""Median seconds of one CPU training step of ``small_cnn`` (the Fashion-MNIST recipes' backbone).

    python benchmarks/speed/small_cnn_step.py [--batch 256] [--steps 20]

The step: two random views of ``batch`` 1x28x28 images, forward and backward through the backbone and a
2-layer 512-wide projector, one SGD step. Figures: benchmarks/speed/README.md ("small_cnn step").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from dimcl.models import build_backbone
from dimcl.models.heads import mlp


def time_small_cnn_step(batch_size: int = 256, steps: int = 20) -> float:
    """Print and return the median seconds of the step above, over ``steps`` steps after 3 warm-up steps."""
    torch.manual_seed(0)
    backbone = build_backbone("small_cnn", in_channels=1, image_size=28)
    model = nn.Sequential(backbone, mlp(backbone.num_features, 512, 128, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    views = [torch.randn(batch_size, 1, 28, 28) for _ in range(2)]
    times = []
    for _ in range(steps + 3):  # the first steps pay for oneDNN's kernel selection
        start = time.perf_counter()
        z1, z2 = model(views[0]), model(views[1])
        loss = -nn.functional.cosine_similarity(z1, z2.detach()).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    times = times[3:]
    print(
        f"small_cnn, 2 views x {batch_size} x 1x28x28, {torch.get_num_threads()} threads: "
        f"median {statistics.median(times):.3f} s/step, min {min(times):.3f} s"
    )
    return statistics.median(times)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    time_small_cnn_step(args.batch, args.steps)
