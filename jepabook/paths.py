"""Where the book keeps what it downloads, parses and trains (ignored by git)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The cache folder: $JEPABOOK_DATA, else data/cache in the repository (created on demand)."""
    folder = Path(os.environ.get("JEPABOOK_DATA") or ROOT / "data" / "cache")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
