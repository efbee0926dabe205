"""Where computations run: "auto" picks CUDA when present."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """ "auto" (or None) means CUDA when present, else CPU; anything else is passed to torch.device."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was asked for but no CUDA device is available")
    return resolved


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are one ("cuda" is the current CUDA device, e.g. "cuda:0")."""

    def indexed(device: torch.device) -> torch.device:
        if device.type == "cuda" and device.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        return device

    return indexed(torch.device(a)) == indexed(torch.device(b))


def device_description(device: torch.device) -> str:
    """E.g. "cpu: AMD EPYC 7B13, 2 threads" or "cuda: NVIDIA H200"."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {_cpu_model()}, {torch.get_num_threads()} threads"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
