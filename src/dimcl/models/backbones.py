"""Backbones: image ``(B, C, H, W)`` -> features ``(B, F)``, with ``F = backbone.num_features``.

``BACKBONES`` maps a name to a builder; :func:`build_backbone` checks the arguments and calls it.

- ``resnet18`` / ``resnet50``: torchvision ResNets (random init) without the classifier. For small
  images (``image_size <= 64`` unless ``cifar_stem`` says otherwise) the 7x7 stride-2 stem conv and
  the max-pool are replaced by one 3x3 stride-1 conv, as solo-learn does for CIFAR: the ImageNet
  stem would shrink a 32 px image to 8 px before the first residual block.
- ``vit_tiny`` / ``vit_small``: torchvision ``VisionTransformer`` returning the class token; patch
  size 4 for small images (64 tokens at 32 px), 16 otherwise. Other input sides (multi-crop's local
  views) get interpolated position embeddings, as in DINO's ViT.
- ``small_cnn``: :class:`SmallCNN`, a small ResNet-style net that makes CPU training practical.
- ``timm/<model>``: any timm model (the optional ``dimcl[timm]`` extra), created with ``num_classes=0``
  (the pooled features), ``in_chans`` of the dataset and random weights; nothing is downloaded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from dimcl.errors import BadInputError
from dimcl.names import did_you_mean

__all__ = ["BACKBONES", "TIMM_PREFIX", "SmallCNN", "build_backbone", "check_backbone_name", "stem_of"]


# ----------------------------------------------------------------------------------------------
# Helpers


def _kaiming_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> nn.Conv2d:
    """A bias-free conv initialised the way torchvision initialises its ResNet convs."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _reject_option(backbone: str, option: str, value: object) -> None:
    """Options a backbone does not use are errors, not silently ignored settings."""
    if value is not None:
        raise BadInputError(
            f"Backbone {backbone!r} has no {option} option (got {option}={value!r}); "
            "cifar_stem applies to resnet18/resnet50 and patch_size to vit_tiny/vit_small. "
            "Leave it unset (None) for this backbone."
        )


# ----------------------------------------------------------------------------------------------
# ResNet


def _resnet(
    depth: int,
    *,
    in_channels: int = 3,
    image_size: int = 32,
    cifar_stem: bool | None = None,
    patch_size: int | None = None,
) -> nn.Module:
    _reject_option(f"resnet{depth}", "patch_size", patch_size)
    model = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}[depth](weights=None)
    if cifar_stem is None:
        cifar_stem = image_size <= 64
    if cifar_stem:
        model.conv1 = _kaiming_conv(in_channels, 64, kernel_size=3, stride=1, padding=1)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = _kaiming_conv(in_channels, 64, kernel_size=7, stride=2, padding=3)
    model.num_features = model.fc.in_features  # 512 for ResNet-18, 2048 for ResNet-50
    model.fc = nn.Identity()
    model.cifar_stem = cifar_stem  # resolved, for the exported metadata (see stem_of)
    return model


def stem_of(backbone: nn.Module) -> str | None:
    """The stem of a ResNet backbone.

    Args:
        backbone: a backbone of :func:`build_backbone`.

    Returns:
        ``'cifar'`` (3x3 stride-1 conv, no max-pool) or ``'imagenet'`` (7x7 stride 2 + max-pool) for the
        ResNets; None for backbones without that choice.
    """
    cifar_stem = getattr(backbone, "cifar_stem", None)
    return None if cifar_stem is None else ("cifar" if cifar_stem else "imagenet")


# ----------------------------------------------------------------------------------------------
# Vision Transformer

# (hidden_dim, depth, num_heads, mlp_dim), as in DeiT.
_VIT_SIZES = {"tiny": (192, 12, 3, 768), "small": (384, 12, 6, 1536)}


def _vit(
    size: str,
    *,
    in_channels: int = 3,
    image_size: int = 32,
    cifar_stem: bool | None = None,
    patch_size: int | None = None,
) -> nn.Module:
    _reject_option(f"vit_{size}", "cifar_stem", cifar_stem)
    if patch_size is None:
        patch_size = 4 if image_size <= 64 else 16
    if image_size % patch_size != 0:
        raise BadInputError(
            f"vit_{size}: image_size={image_size} is not a multiple of patch_size={patch_size}; "
            "choose a patch_size that divides the image size (e.g. 4 for 28 or 32 px, 16 for 224 px)."
        )
    hidden_dim, depth, num_heads, mlp_dim = _VIT_SIZES[size]
    model = _VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        num_layers=depth,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
    )
    if in_channels != 3:
        model.conv_proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=patch_size, stride=patch_size)
        # Same init as torchvision gives its patch embedding (LeCun-normal, zero bias).
        fan_in = in_channels * patch_size * patch_size
        nn.init.trunc_normal_(model.conv_proj.weight, std=math.sqrt(1.0 / fan_in))
        nn.init.zeros_(model.conv_proj.bias)
    model.heads = nn.Identity()  # the encoder's output at the class token is the feature
    model.num_features = hidden_dim
    return model


class _VisionTransformer(torchvision.models.VisionTransformer):
    """torchvision's ViT that also takes other input sides than its ``image_size`` (multi-crop's local views,
    as DINO's ViT does): the patch grid's position embeddings are interpolated (bicubic) to the input's grid.
    At ``image_size`` it computes torchvision's forward exactly; the parameters and their names are torchvision's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"the ViT's input side ({h}x{w}) must be a multiple of its patch size {self.patch_size}")
        patches = self.conv_proj(x).flatten(2).transpose(1, 2)  # (n, grid, hidden)
        tokens = torch.cat([self.class_token.expand(n, -1, -1), patches], dim=1)
        encoder = self.encoder
        tokens = tokens + self._position_embedding(h // self.patch_size, w // self.patch_size)
        return self.heads(encoder.ln(encoder.layers(encoder.dropout(tokens)))[:, 0])

    def _position_embedding(self, rows: int, columns: int) -> torch.Tensor:
        embedding = self.encoder.pos_embedding  # (1, 1 + side², hidden): the class token's, then the grid's
        side = self.image_size // self.patch_size
        if (rows, columns) == (side, side):
            return embedding
        grid = embedding[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(rows, columns), mode="bicubic", align_corners=False)
        return torch.cat([embedding[:, :1], grid.permute(0, 2, 3, 1).reshape(1, rows * columns, -1)], dim=1)


# ----------------------------------------------------------------------------------------------
# Small CPU-friendly net


class _BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv-BN layers, ReLU after the sum, projection shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _kaiming_conv(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _kaiming_conv(out_channels, out_channels, 3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        # Zero-init the last BN's scale so each block starts as the identity (Goyal et al., 2017).
        nn.init.zeros_(self.bn2.weight)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            # Average-pool before the 1x1 conv (ResNet-D, He et al., 2019): a strided 1x1 conv would
            # read one pixel in four, and with the residual branch zeroed at init the whole net
            # would start out as a sparse subsampling of the stem's output.
            self.shortcut = nn.Sequential(
                nn.AvgPool2d(stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity(),
                _kaiming_conv(in_channels, out_channels, 1, stride=1, padding=0),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallCNN(nn.Module):
    """A small ResNet for 28-32 px images on CPU: ``(B, C, H, W) -> (B, widths[-1])``.

    A 3x3 stem conv at full resolution (``widths[0]`` channels), then one residual basic block
    per remaining width, each halving the resolution: with the default widths
    ``28 px x 32 ch -> 14 x 32 -> 7 x 64 -> 4 x 128 -> 2 x 256``, global average pool, 256
    features, 1.2 M parameters. Halving early keeps the expensive full-resolution work to one
    conv with few input channels; the width doubles as the maps shrink, as in ResNet.

    Its speed on a CPU, against the 3-stage variant and without the channels-last conversion below:
    benchmarks/speed/README.md ("small_cnn step", ``python benchmarks/speed/small_cnn_step.py``).

    Args:
        in_channels: C, the input's channels (3 for RGB; the Fashion-MNIST recipes repeat the gray channel).
        widths: the stem's width, then one residual block per further width.
    """

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (32, 32, 64, 128, 256)) -> None:
        super().__init__()
        stem_width, *stage_widths = widths
        self.stem = nn.Sequential(
            _kaiming_conv(in_channels, stem_width, 3, stride=1, padding=1),
            nn.BatchNorm2d(stem_width),
            nn.ReLU(inplace=True),
        )
        blocks = []
        channels = stem_width
        for width in stage_widths:
            blocks.append(_BasicBlock(channels, width, stride=2))
            channels = width
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = channels

    def forward(self, x: Tensor) -> Tensor:
        """Features ``(B, num_features)`` of images ``(B, C, H, W)``."""
        x = self.stem(x)
        if x.device.type == "cpu":
            # oneDNN's convolutions are faster on channels-last maps (benchmarks/speed/README.md). Converting the
            # activations here, not the weights, keeps the state dict contiguous for safetensors.
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.flatten(self.pool(self.stages(x)), 1)


def _small_cnn(
    *, in_channels: int = 3, image_size: int = 32, cifar_stem: bool | None = None, patch_size: int | None = None
) -> nn.Module:
    # Fully convolutional with a global pool, so any image size works; image_size is unused.
    _reject_option("small_cnn", "cifar_stem", cifar_stem)
    _reject_option("small_cnn", "patch_size", patch_size)
    return SmallCNN(in_channels=in_channels)


# ----------------------------------------------------------------------------------------------
# timm (optional)

#: ``backbone.name=timm/<model>`` builds ``<model>`` from timm
TIMM_PREFIX = "timm/"
"""A ``backbone.name`` with this prefix is a timm model: ``timm/resnet18``, ``timm/vit_tiny_patch16_224``."""


def _import_timm():  # noqa: ANN202 (the module)
    try:
        import timm
    except ImportError:
        raise BadInputError(
            "timm backbones (backbone.name=timm/<model>) need the timm package, which is not installed: "
            "pip install 'dimcl[timm]'. Or pick a built-in backbone: " + ", ".join(BACKBONES) + "."
        ) from None
    return timm


def _check_timm_model(model_name: str) -> None:
    timm = _import_timm()
    if not timm.is_model(model_name):
        raise BadInputError(
            f"Unknown timm model {model_name!r} (backbone 'timm/{model_name}'); timm.list_models() names the "
            f"accepted ones, e.g. timm/resnet18, timm/vit_tiny_patch16_224, timm/convnext_atto."
            + did_you_mean(model_name, timm.list_models(), "timm/")
        )


def timm_kwargs(model_name: str, in_channels: int, image_size: int) -> dict[str, object]:
    """The ``timm.create_model`` arguments of a dimcl timm backbone, besides ``pretrained=False``.

    ``num_classes=0`` keeps the pooled features and drops the classifier. Models with a fixed input size
    (ViTs: the position embedding) are told the image size; the others take any size.
    """
    kwargs: dict[str, object] = {"num_classes": 0, "in_chans": in_channels}
    pretrained_cfg = _import_timm().get_pretrained_cfg(model_name)
    if pretrained_cfg is not None and pretrained_cfg.fixed_input_size:
        if tuple(pretrained_cfg.input_size[-2:]) != (image_size, image_size):
            kwargs["img_size"] = image_size
    return kwargs


def _timm(
    model_name: str,
    *,
    in_channels: int = 3,
    image_size: int = 32,
    cifar_stem: bool | None = None,
    patch_size: int | None = None,
) -> nn.Module:
    backbone = f"{TIMM_PREFIX}{model_name}"
    _reject_option(backbone, "cifar_stem", cifar_stem)
    _reject_option(backbone, "patch_size", patch_size)
    _check_timm_model(model_name)
    kwargs = timm_kwargs(model_name, in_channels, image_size)
    model = _import_timm().create_model(model_name, pretrained=False, **kwargs)
    # The feature width from the model itself (timm's num_features is the width before the pre-logits
    # layer of some heads). eval() and no_grad: the probe moves no BatchNorm statistic and draws no
    # random number, so the run's initialisation is the same as without it.
    model.eval()
    try:
        with torch.no_grad():
            features = model(torch.zeros(2, in_channels, image_size, image_size))
    except Exception as err:
        raise BadInputError(
            f"Backbone {backbone!r} cannot take {in_channels}-channel {image_size}x{image_size} images "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); pick a timm model made "
            "for this input size, or change augment.crop_size."
        ) from None
    model.train()
    if features.ndim != 2:
        raise BadInputError(
            f"Backbone {backbone!r} returns features of shape {tuple(features.shape)}, not (batch, features); "
            "pick a timm classification model, whose num_classes=0 form pools its features."
        )
    model.num_features = int(features.shape[1])
    model.timm_model = model_name  # for the exported metadata: rebuild with timm.create_model
    model.timm_kwargs = kwargs
    return model


# ----------------------------------------------------------------------------------------------
# Registry

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": partial(_resnet, 18),
    "resnet50": partial(_resnet, 50),
    "vit_tiny": partial(_vit, "tiny"),
    "vit_small": partial(_vit, "small"),
    "small_cnn": _small_cnn,
}
"""The built-in backbones: ``backbone.name`` -> its builder (``timm/<model>`` names are not in it)."""


def check_backbone_name(name: str) -> None:
    """Refuse a backbone name dimcl cannot build, naming those it can.

    Args:
        name: a key of ``BACKBONES``, or ``timm/<model>`` for a timm model.

    Raises:
        BadInputError: ``name`` is neither (a ``ValueError``; the message names the accepted names).
    """
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        _check_timm_model(name[len(TIMM_PREFIX):])
        return
    if name not in BACKBONES:
        accepted = ", ".join(sorted(BACKBONES))
        raise BadInputError(
            f"Unknown backbone {name!r}; accepted names are: {accepted}, or timm/<model> for any timm model "
            f"(pip install 'dimcl[timm]').{did_you_mean(name, BACKBONES)}"
        )


def build_backbone(
    name: str,
    *,
    in_channels: int = 3,
    image_size: int = 32,
    cifar_stem: bool | None = None,
    patch_size: int | None = None,
) -> nn.Module:
    """Build the backbone called ``name``; it maps ``(B, in_channels, H, W)`` to ``(B, num_features)``.

    Args:
        name: ``backbone.name``: ``resnet18``, ``resnet50``, ``vit_tiny``, ``vit_small``, ``small_cnn``, or
            ``timm/<model>`` for a timm model (randomly initialised, nothing downloaded).
        in_channels: the input's channels.
        image_size: the input's side; picks the defaults for small images below.
        cifar_stem: the ResNets' 3x3 stride-1 stem without max-pool; None means ``image_size <= 64``.
        patch_size: the ViTs' patch size; None means 4 for ``image_size <= 64``, else 16. ViTs only accept
            ``image_size x image_size`` inputs.

    Returns:
        The backbone, an ``nn.Module`` with an int attribute ``num_features`` (its output width).

    Raises:
        BadInputError: an unknown name, or an argument that is not a positive integer or that the
            backbone does not use (a ``ValueError``).
    """
    check_backbone_name(name)
    for arg, value in (("in_channels", in_channels), ("image_size", image_size), ("patch_size", patch_size)):
        if arg == "patch_size" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInputError(
                f"Backbone {name!r}: {arg} must be a positive integer, got {value!r} "
                "(e.g. in_channels=3 for RGB or 1 for grayscale, image_size=32 for CIFAR)."
            )
    builder = partial(_timm, name[len(TIMM_PREFIX):]) if name.startswith(TIMM_PREFIX) else BACKBONES[name]
    return builder(in_channels=in_channels, image_size=image_size, cifar_stem=cifar_stem, patch_size=patch_size)
