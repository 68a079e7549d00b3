import importlib.util
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from dimcl.models import BACKBONES, SmallCNN, build_backbone


def test_registry_names():
    assert set(BACKBONES) == {"resnet18", "resnet50", "vit_tiny", "vit_small", "small_cnn"}


@pytest.mark.parametrize("name", ["resnet18", "small_cnn"])
@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("image_size", [28, 32])
def test_cheap_backbones_shapes(name, in_channels, image_size):
    torch.manual_seed(0)
    backbone = build_backbone(name, in_channels=in_channels, image_size=image_size)
    assert isinstance(backbone.num_features, int)
    out = backbone(torch.randn(2, in_channels, image_size, image_size))
    assert out.shape == (2, backbone.num_features)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "name, in_channels, image_size, num_features",
    [("resnet50", 1, 32, 2048), ("vit_tiny", 1, 28, 192), ("vit_small", 3, 32, 384)],
)
def test_expensive_backbones_one_case_each(name, in_channels, image_size, num_features):
    backbone = build_backbone(name, in_channels=in_channels, image_size=image_size)
    assert backbone.num_features == num_features
    with torch.no_grad():
        out = backbone(torch.randn(2, in_channels, image_size, image_size))
    assert out.shape == (2, num_features)


def test_num_features():
    assert build_backbone("resnet18").num_features == 512
    assert build_backbone("small_cnn").num_features == 256


def test_vit_configuration():
    vit = build_backbone("vit_tiny", in_channels=1, image_size=28)
    assert vit.patch_size == 4 and vit.image_size == 28
    assert len(vit.encoder.layers) == 12 and vit.hidden_dim == 192
    assert vit.encoder.layers[0].self_attention.num_heads == 3
    assert vit.encoder.layers[0].mlp[0].out_features == 768
    assert vit.conv_proj.in_channels == 1
    assert isinstance(vit.heads, nn.Identity)

    small = build_backbone("vit_small", image_size=224)
    assert small.patch_size == 16 and small.hidden_dim == 384
    assert small.encoder.layers[0].self_attention.num_heads == 6
    assert small.encoder.layers[0].mlp[0].out_features == 1536

    assert build_backbone("vit_tiny", image_size=32, patch_size=8).patch_size == 8
    with pytest.raises(ValueError, match="patch_size"):
        build_backbone("vit_tiny", image_size=30, patch_size=4)


def test_cifar_stem():
    cifar = build_backbone("resnet18", image_size=32)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert cifar.conv1.bias is None
    assert isinstance(cifar.maxpool, nn.Identity)

    imagenet = build_backbone("resnet18", image_size=224)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.stride == (2, 2)
    assert isinstance(imagenet.maxpool, nn.MaxPool2d)

    # The explicit flag overrides the size-based default, both ways.
    assert isinstance(build_backbone("resnet18", image_size=224, cifar_stem=True).maxpool, nn.Identity)
    forced_off = build_backbone("resnet18", in_channels=1, image_size=32, cifar_stem=False)
    assert forced_off.conv1.kernel_size == (7, 7) and forced_off.conv1.in_channels == 1
    assert isinstance(forced_off.maxpool, nn.MaxPool2d)

    # The stem decides the resolution the residual stages see: 32 px stays 32 px with it.
    with torch.no_grad():
        cifar_map = cifar.layer1(cifar.maxpool(cifar.relu(cifar.bn1(cifar.conv1(torch.randn(1, 3, 32, 32))))))
        imagenet_map = imagenet.layer1(
            imagenet.maxpool(imagenet.relu(imagenet.bn1(imagenet.conv1(torch.randn(1, 3, 32, 32)))))
        )
    assert cifar_map.shape[-1] == 32 and imagenet_map.shape[-1] == 8


@pytest.mark.parametrize("name", ["resnet18", "small_cnn", "vit_tiny"])
def test_backward_reaches_the_first_layer(name):
    torch.manual_seed(0)
    backbone = build_backbone(name, in_channels=1, image_size=28)
    images = torch.randn(2, 1, 28, 28, requires_grad=True)
    backbone(images).square().mean().backward()
    first = {"resnet18": lambda b: b.conv1, "small_cnn": lambda b: b.stem[0], "vit_tiny": lambda b: b.conv_proj}
    grad = first[name](backbone).weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_small_cnn_learns_a_toy_task():
    # Horizontal vs vertical stripes at random phase under noise: a few SGD steps must separate them.
    torch.manual_seed(0)
    size = 16
    labels = torch.arange(32) % 2
    stripes = (torch.arange(size) % 4 < 2).float()
    images = 0.5 * torch.randn(32, 1, size, size)
    for i, label in enumerate(labels.tolist()):
        pattern = stripes[:, None].expand(size, size) if label == 0 else stripes[None, :].expand(size, size)
        images[i, 0] += pattern.roll(int(torch.randint(4, ())), dims=label)
    backbone = SmallCNN(in_channels=1)
    model = nn.Sequential(backbone, nn.Linear(backbone.num_features, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        logits = model(images)
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Judged in train mode: 8 steps are too few for the BN running statistics to settle.
    assert (logits.argmax(1) == labels).all()
    assert losses[-1] < 0.1 * losses[0]


def test_small_cnn_state_dict_is_contiguous():
    # safetensors refuses non-contiguous tensors; the channels-last trick must stay inside forward.
    assert all(t.is_contiguous() for t in SmallCNN(in_channels=1).state_dict().values())


def test_unknown_name():
    with pytest.raises(ValueError) as excinfo:
        build_backbone("resnet19")
    message = str(excinfo.value)
    assert "'resnet19'" in message
    assert "Did you mean 'resnet18'" in message
    for name in BACKBONES:
        assert name in message
    with pytest.raises(ValueError, match="small_cnn"):
        build_backbone("smallcnn")
    with pytest.raises(ValueError) as excinfo:
        build_backbone("xyzzy")
    assert "xyzzy" in str(excinfo.value) and "Did you mean" not in str(excinfo.value)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"in_channels": 0}, "in_channels"),
        ({"in_channels": -3}, "in_channels"),
        ({"image_size": 0}, "image_size"),
        ({"in_channels": 1.5}, "in_channels"),
    ],
)
def test_bad_sizes(kwargs, bad):
    with pytest.raises(ValueError, match=bad) as excinfo:
        build_backbone("small_cnn", **kwargs)
    assert repr(next(iter(kwargs.values()))) in str(excinfo.value)


def test_unused_options_are_rejected():
    with pytest.raises(ValueError, match="cifar_stem"):
        build_backbone("vit_tiny", cifar_stem=True)
    with pytest.raises(ValueError, match="patch_size"):
        build_backbone("resnet18", patch_size=4)
    with pytest.raises(ValueError, match="cifar_stem"):
        build_backbone("small_cnn", cifar_stem=False)


def test_small_cnn_step_benchmark_runs(capsys):
    """benchmarks/speed/small_cnn_step.py, whose figure the README quotes, still runs."""
    script = Path(__file__).parents[2] / "benchmarks" / "speed" / "small_cnn_step.py"
    spec = importlib.util.spec_from_file_location("small_cnn_step", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seconds = module.time_small_cnn_step(batch_size=4, steps=1)
    assert seconds > 0
    assert "s/step" in capsys.readouterr().out


def test_vit_takes_other_input_sides_by_interpolating_its_position_embeddings():
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", in_channels=3, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        # at its own size: torchvision's forward, to the bit
        assert torch.equal(vit(x), torchvision.models.VisionTransformer.forward(vit, x))
        local = vit(torch.randn(2, 3, 16, 16))  # a multi-crop local view: a 4x4 grid instead of 8x8
    assert local.shape == (2, 192) and torch.isfinite(local).all()
    # the interpolated grid of the native size is the embedding itself; a 4x4 grid is a smooth downsampling
    grid = vit._position_embedding(4, 4)
    assert grid.shape == (1, 17, 192) and torch.equal(grid[:, 0], vit.encoder.pos_embedding[:, 0])
    with pytest.raises(ValueError, match="multiple of its patch size 4"):
        vit(torch.randn(1, 3, 18, 18))
