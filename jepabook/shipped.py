"""Weights shipped with the repository: data/encoders/<name>.pt, described by data/encoders/manifest.json.

The manifest gives, for each name: the full recipe, the data, epochs and steps, wall time and device,
the probe numbers, the sha256 of the file and the commit of the training code. Loading checks the
checksum and that the recipe the weights were trained with is the one the code asks for now.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from jepabook.paths import ROOT


class ShippedWeightsError(ValueError):
    """Shipped weights are missing, altered, or were trained with another recipe."""


def encoders_dir() -> Path:
    """Where shipped weights live: $JEPABOOK_ENCODERS, else data/encoders in the repository."""
    return Path(os.environ.get("JEPABOOK_ENCODERS") or ROOT / "data" / "encoders")


def manifest_path() -> Path:
    return encoders_dir() / "manifest.json"


def weights_path(name: str) -> Path:
    return encoders_dir() / f"{name}.pt"


def read_manifest() -> dict:
    """{name: entry} from manifest.json ({} when there is none)."""
    path = manifest_path()
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def write_entry(name: str, entry: dict) -> None:
    """Add or replace one name's entry in manifest.json (names kept sorted)."""
    manifest = read_manifest()
    manifest[name] = entry
    path = manifest_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(manifest.items())), indent=1) + "\n")


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verified_path(name: str, recipe: dict) -> Path:
    """The shipped weights of `name`, after checking their sha256 and recipe against the manifest.

    Raises:
        ShippedWeightsError: no entry (a name not trained yet) or no file, a checksum mismatch, or
            a recipe that changed since the weights were trained; the message says how to
            (re)train.
    """
    retrain = f"retrain it with `make encoders ONLY={name}`"
    entry = read_manifest().get(name)
    path = weights_path(name)
    if entry is None:
        raise ShippedWeightsError(
            f"name: no shipped weights for {name}: not trained yet ({manifest_path()} has no entry "
            f"for it); `make encoders ONLY={name}` trains them, resuming from "
            f"{encoders_dir() / 'resume'} when an interrupted run left a checkpoint there"
        )
    if not path.exists():
        raise ShippedWeightsError(
            f"name: no shipped weights for {name}: {path} is missing although {manifest_path()} "
            f"has an entry for it; restore it from git or {retrain}"
        )
    if sha256(path) != entry["sha256"]:
        raise ShippedWeightsError(
            f"name: {path} does not match the sha256 in {manifest_path()} (altered or truncated); "
            f"restore it from git or {retrain}"
        )
    if entry["recipe"] != recipe:
        changed = sorted(k for k in recipe if entry["recipe"].get(k) != recipe[k])
        raise ShippedWeightsError(
            f"name: the recipe of {name} changed since its weights were trained "
            f"(differs in {changed}); {retrain}"
        )
    return path


def training_commit() -> str:
    """The commit of the training code, with "+dirty" when jepabook/ has uncommitted changes."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--", "jepabook")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
