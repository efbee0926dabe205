"""Several processes scoring one folder together, launched by torchrun.

`torchrun --nproc_per_node=N -m jepabook score ...` starts N copies of the command with WORLD_SIZE,
RANK and LOCAL_RANK in their environment. `launch_from_env` reads them, `init` joins the process group
(gloo on CPU, nccl with one GPU per process, cuda:LOCAL_RANK), `all_gather` lets the ranks agree (on
failures, on what each did), `destroy` leaves the group. Outside torchrun every function acts as the
only rank of a world of one: `rank() == 0`, `world_size() == 1`, `all_gather(x) == [x]`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
ENV_NAMES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
# How long a collective waits for the slowest rank: after scoring, rank 0 waits for every other rank
# to finish its share. Failures a rank can report are agreed on at a collective; a rank that dies
# closes its connections (gloo fails at once) and torchrun stops the others.
TIMEOUT_ENV = "JEPABOOK_DIST_TIMEOUT"
DEFAULT_TIMEOUT = timedelta(hours=1)


@dataclass(frozen=True)
class Launch:
    """One process of a torchrun launch: its global rank, the number of processes, its rank on the node."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def launch_from_env(environ: dict[str, str] | None = None) -> Launch | None:
    """The torchrun launch this process belongs to (from WORLD_SIZE, RANK, LOCAL_RANK), or None.

    Raises:
        ValueError: only some of the variables are set, or they are not consistent integers.
    """
    environ = os.environ if environ is None else environ
    present = [name for name in ENV_NAMES if name in environ]
    if not present:
        return None
    if len(present) < len(ENV_NAMES):
        missing = ", ".join(n for n in ENV_NAMES if n not in present)
        raise ValueError(
            f"environment: {present[0]} is set but not {missing}; launch with torchrun"
        )
    try:
        world, rank, local = (int(environ[name]) for name in ENV_NAMES)
        local_world = int(environ.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        values = ", ".join(f"{n}={environ[n]!r}" for n in ENV_NAMES)
        raise ValueError(f"environment: expected integers, got {values}") from None
    if not (0 <= rank < world and 0 <= local < local_world):
        raise ValueError(f"environment: RANK={rank}, LOCAL_RANK={local} out of range")
    return Launch(rank, world, local, local_world)


def env_rank() -> int:
    """This process's RANK from the environment (0 outside torchrun or when unreadable)."""
    try:
        return int(os.environ.get("RANK", 0))
    except ValueError:
        return 0


def init(launch: Launch, device: torch.device, timeout: timedelta | None = None) -> torch.device:
    """Join the default process group; returns the device this rank computes on.

    Args:
        launch: from `launch_from_env`.
        device: the device asked for ("cpu" or "cuda"); CUDA gives each rank cuda:LOCAL_RANK and nccl,
            CPU gives gloo.
        timeout: how long any collective waits (default: $JEPABOOK_DIST_TIMEOUT seconds, else 1 h).

    Raises:
        ValueError: torch.distributed is missing, or fewer GPUs than processes on this node (the
            same answer on every rank, so every rank stops before the first collective).
        RuntimeError: the process group could not be formed.
    """
    if not dist.is_available():
        raise ValueError("torchrun: this torch build has no torch.distributed")
    if device.type == "cuda":
        device = _rank_gpu(launch)
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        timeout=timeout or _timeout_from_env(),
        device_id=device if device.type == "cuda" else None,
    )
    return device


def _rank_gpu(launch: Launch) -> torch.device:
    """cuda:LOCAL_RANK, made the current CUDA device; ValueError when the node has too few GPUs."""
    count = torch.cuda.device_count()
    if launch.local_world_size > count:
        raise ValueError(
            f"--device: torchrun started {launch.local_world_size} processes on this node but "
            f"there are {count} CUDA devices; use --nproc_per_node={count} or fewer, or --device cpu"
        )
    torch.cuda.set_device(launch.local_rank)
    return torch.device("cuda", launch.local_rank)


def _timeout_from_env() -> timedelta:
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"environment: {TIMEOUT_ENV} must be a positive number of seconds")
    return timedelta(seconds=seconds)


def is_initialized() -> bool:
    """Whether this process is in a process group (a torchrun launch after `init`)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank: from the process group, else from the environment, else 0."""
    return dist.get_rank() if is_initialized() else env_rank()


def world_size() -> int:
    """Number of processes in the group (1 outside a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def barrier() -> None:
    """Wait until every rank has arrived here (nothing to wait for in a world of one)."""
    if is_initialized():
        device_ids = [torch.cuda.current_device()] if dist.get_backend() == "nccl" else None
        dist.barrier(device_ids=device_ids)


def all_gather(obj: T) -> list[T]:
    """Every rank's `obj` (picklable), indexed by rank, on every rank; `[obj]` in a world of one.

    Also a barrier: it returns once every rank has called it.
    """
    if not is_initialized():
        return [obj]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def destroy() -> None:
    """Leave the process group, if in one (safe to call always, e.g. in a `finally`)."""
    if is_initialized():
        dist.destroy_process_group()
