"""The Gaussian-embedding JEPA training loop, with history, evaluations and resumable checkpoints.

loss = (1 - lam) * prediction + lam * anti_collapse(f(views))

over n_views random views of each sample (2 by default), all encoded in one batch, where prediction is
- with a predictor network: mean_{v != u} ||predictor(f(view_v)) - f(view_u)||^2 / K;
- without one (predictor=None, LeJEPA's form): mean_v ||f(view_v) - mean_u f(view_u)||^2 / K, every
  view predicting the centre of the sample's views;
and anti_collapse SIGReg (sliced Epps-Pulley), VICReg-style moment matching, or nothing (a control).
"""

from __future__ import annotations

import math
import pickle
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from jepabook.devices import device_description, resolve_device
from jepabook.losses import moment_matching, prediction_loss, sigreg

Regulariser = Literal["sigreg", "moments", "none"]
Precision = Literal["float32", "bfloat16"]
CHECKPOINT_FORMAT = "jepabook-checkpoint-1"
RECORD_EVERY = 50  # steps between read-backs of the loss terms: each one waits for the GPU
RESUME_FORMAT = "jepabook-resume-1"


@dataclass
class TrainConfig:
    """Hyper-parameters of `train_jepa` (all plain values, saved with checkpoints)."""

    steps: int = 2000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    lam: float = 0.05
    n_views: int = 2
    regulariser: Regulariser = "sigreg"
    n_slices: int = 256
    eval_every: int = 100
    seed: int = 0
    device: str = "auto"
    progress: bool = True
    precision: Precision = (
        "float32"  # "bfloat16": the encoder runs under CUDA autocast (losses in fp32)
    )

    def __post_init__(self) -> None:
        if self.precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision: expected 'float32' or 'bfloat16', got {self.precision!r}")
        if self.regulariser not in ("sigreg", "moments", "none"):
            raise ValueError(
                f"regulariser: expected 'sigreg', 'moments' or 'none', got {self.regulariser!r}"
            )
        if self.n_views < 2:
            raise ValueError(f"n_views: expected at least 2 views per sample, got {self.n_views}")
        if not 0 <= self.lam <= 1:
            raise ValueError(f"lam: expected a weight in [0, 1], got {self.lam}")
        for name in ("steps", "batch_size", "eval_every", "n_slices", "n_views"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")


@dataclass
class History:
    """Loss terms per step and the Gaussianity of held-out embeddings every `eval_every` steps."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    prediction: list[float] = field(default_factory=list)
    regulariser: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    held_out_sigreg: list[float] = field(default_factory=list)
    evaluations: dict[str, list[float]] = field(default_factory=dict)
    elapsed_s: float = 0.0  # wall time of the training steps, over every resumed part
    device: str = ""  # where the steps ran, e.g. "cuda: NVIDIA H200" (the last part, when resumed)

    def to_frame(self):
        """(per-step frame, per-evaluation frame) as pandas DataFrames."""
        import pandas as pd

        steps = pd.DataFrame(
            {k: getattr(self, k) for k in ("step", "loss", "prediction", "regulariser", "lr")}
        )
        evals = pd.DataFrame(
            {"step": self.eval_step, "held_out_sigreg": self.held_out_sigreg, **self.evaluations}
        )
        return steps, evals


def cosine_schedule(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def gaussianity(encoder: nn.Module, x: torch.Tensor, n_slices: int = 256, seed: int = 0) -> float:
    """SIGReg of the embeddings of held-out x (N, ...) with fixed directions: ~1 when Gaussian."""
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        z = encoder(x)
    encoder.train(was_training)
    generator = torch.Generator(device=z.device).manual_seed(seed)
    return float(sigreg(z, n_slices, generator=generator))


Evaluation = Callable[[nn.Module], dict[str, float]]


def train_jepa(
    encoder: nn.Module,
    predictor: nn.Module | None,
    views: nn.Module,
    data: torch.Tensor,
    config: TrainConfig | None = None,
    *,
    held_out: torch.Tensor | None = None,
    evaluate: Evaluation | None = None,
    resume_path: str | Path | None = None,
    save_every: int = 0,
) -> History:
    """Train encoder and predictor in place; returns the history.

    Args:
        encoder: (B, ...) -> (B, K).
        predictor: (B, K) -> (B, K), or None to predict the mean of each sample's views.
        views: module with forward(x, generator) -> a random perturbed view of x (B, ...).
        data: (N, ...) training samples (moved to the device batch by batch).
        config: hyper-parameters (TrainConfig()).
        held_out: (M, ...) samples whose embedding Gaussianity is tracked every `eval_every` steps.
        evaluate: encoder -> {metric: value}, called (in eval mode) at the same steps; recorded in
            `History.evaluations`.
        resume_path: a resume file: training starts from it when it exists and holds the same
            config, and the state (weights, optimiser, random generator, history) is written to it
            every `save_every` steps (0: only at the end). Delete it once the weights are saved.
    """
    config = config or TrainConfig()
    if data.ndim < 2 or data.shape[0] < 2:
        raise ValueError(f"data: expected a batch (N, ...) with N >= 2, got {tuple(data.shape)}")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    mixed = config.precision == "bfloat16" and device.type == "cuda"
    images = data.ndim == 4 and (
        device.type == "cpu" or mixed
    )  # channels-last convolutions are faster
    modules = [m for m in (encoder, predictor) if m is not None]
    for module in modules:
        module.to(device).train()
        if images:
            module.to(memory_format=torch.channels_last)
    parameters = [p for m in modules for p in m.parameters()]
    optimiser = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: cosine_schedule(s, config.steps, config.warmup)
    )
    history, first = History(), 0
    if resume_path is not None and Path(resume_path).exists():
        history, first = _resume(resume_path, config, modules, optimiser, schedule, generator)
    data = data.to(device)
    held_out = held_out.to(device) if held_out is not None else None
    batch = min(config.batch_size, data.shape[0])
    started = time.perf_counter() - history.elapsed_s
    pending: list[tuple[int, torch.Tensor, float]] = []  # loss terms not yet read back (a GPU sync)
    for step in tqdm(
        range(first, config.steps),
        initial=first,
        total=config.steps,
        disable=not config.progress,
        desc="training",
        leave=False,
    ):
        index = torch.randint(0, data.shape[0], (batch,), generator=generator, device=device)
        x = data[index]
        x_views = torch.cat([views(x, generator) for _ in range(config.n_views)])
        if images:
            x_views = x_views.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mixed):
            z = encoder(x_views)
        z = z.float().view(config.n_views, batch, -1)
        prediction = _multi_view_prediction(predictor, z)
        regulariser = _anti_collapse(z.flatten(0, 1), config, generator)
        loss = (1 - config.lam) * prediction + config.lam * regulariser
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        terms = torch.stack([loss, prediction, regulariser]).detach()
        pending.append((step, terms, schedule.get_last_lr()[0]))
        schedule.step()
        last = step == config.steps - 1
        evaluating = step % config.eval_every == 0 or last
        saving = resume_path is not None and (last or (save_every and (step + 1) % save_every == 0))
        if evaluating or saving or len(pending) >= RECORD_EVERY:
            _record(history, pending)
            history.elapsed_s = time.perf_counter() - started
            history.device = device_description(device)
        if evaluating:
            _evaluate(history, step, encoder, held_out, evaluate, config)
        if saving:
            _save_resume(
                resume_path, step + 1, config, modules, optimiser, schedule, generator, history
            )
    for module in modules:
        module.to(memory_format=torch.contiguous_format).eval()
    return history


def _evaluate(history, step, encoder, held_out, evaluate, config) -> None:
    if held_out is None and evaluate is None:
        return
    history.eval_step.append(step)
    if held_out is not None:
        history.held_out_sigreg.append(gaussianity(encoder, held_out, config.n_slices))
    if evaluate is not None:
        was_training = encoder.training
        encoder.eval()
        for name, value in evaluate(encoder).items():
            history.evaluations.setdefault(name, []).append(float(value))
        encoder.train(was_training)


def _save_resume(path, step, config, modules, optimiser, schedule, generator, history) -> None:
    state = {
        "format": RESUME_FORMAT,
        "step": step,
        "config": asdict(config),
        "modules": [m.state_dict() for m in modules],
        "optimiser": optimiser.state_dict(),
        "schedule": schedule.state_dict(),
        "generator": generator.get_state(),
        "cpu_generator": torch.get_rng_state(),
        "history": asdict(history),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".partial")
    torch.save(state, temporary)
    temporary.replace(path)


def _resume(path, config, modules, optimiser, schedule, generator) -> tuple[History, int]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != RESUME_FORMAT:
        raise ValueError(f"resume_path: {path} is not a jepabook resume file ({RESUME_FORMAT})")
    ignore = {"device", "progress"}
    wanted = {k: v for k, v in asdict(config).items() if k not in ignore}
    defaults = asdict(TrainConfig())  # for fields added after the file was written
    saved = {k: state["config"].get(k, defaults[k]) for k in wanted}
    if saved != wanted:
        changed = sorted(k for k in wanted if saved.get(k) != wanted[k])
        raise ValueError(
            f"resume_path: {path} was written by another training config (differs in {changed});"
            " delete it to train from scratch"
        )
    for module, weights in zip(modules, state["modules"], strict=True):
        module.load_state_dict(weights)
    optimiser.load_state_dict(state["optimiser"])
    schedule.load_state_dict(state["schedule"])
    try:
        generator.set_state(state["generator"])
    except (
        RuntimeError
    ):  # a generator of another device type (a run trained on a GPU, read on a CPU)
        if int(state["step"]) < config.steps:
            raise ValueError(
                f"resume_path: {path} was written on another kind of device, whose random stream "
                f"cannot continue on {generator.device}; resume it there"
            ) from None
    torch.set_rng_state(state["cpu_generator"])
    return History(**state["history"]), int(state["step"])


def _multi_view_prediction(predictor: nn.Module | None, z: torch.Tensor) -> torch.Tensor:
    """Mean of prediction_loss(predictor(z_v), z_u) over ordered pairs of views v != u; z (V, B, K).

    Without a predictor: mean over views of prediction_loss(z_v, mean of the views).
    """
    if predictor is None:
        return prediction_loss(z, z.mean(0, keepdim=True).expand_as(z))
    n_views = z.shape[0]
    predicted = predictor(z.flatten(0, 1)).view_as(z)
    losses = [
        prediction_loss(predicted[v], z[u])
        for v in range(n_views)
        for u in range(n_views)
        if u != v
    ]
    return torch.stack(losses).mean()


def _anti_collapse(
    z: torch.Tensor, config: TrainConfig, generator: torch.Generator
) -> torch.Tensor:
    if config.regulariser == "sigreg":
        return sigreg(z, config.n_slices, generator=generator)
    if config.regulariser == "moments":
        return moment_matching(z)
    return z.new_zeros(())


def _record(history: History, pending: list[tuple[int, torch.Tensor, float]]) -> None:
    """Move the pending (step, (loss, prediction, regulariser), lr) records into history."""
    if not pending:
        return
    values = torch.stack([terms for _, terms, _ in pending]).cpu().tolist()
    for (step, _, lr), (loss, prediction, regulariser) in zip(pending, values, strict=True):
        history.step.append(step)
        history.loss.append(loss)
        history.prediction.append(prediction)
        history.regulariser.append(regulariser)
        history.lr.append(lr)
    pending.clear()


def save_checkpoint(
    path: str | Path,
    encoder: nn.Module,
    predictor: nn.Module | None = None,
    *,
    config: TrainConfig | None = None,
    history: History | None = None,
    meta: dict | None = None,
) -> Path:
    """Write encoder (and predictor) weights, the config, the history and `meta` to `path`.

    `meta` holds plain values that describe the encoder (architecture, constructor arguments,
    dataset, input normalisation): what `checkpoint_meta` returns and `jepabook.image_jepa`
    needs to rebuild the encoder from the file alone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CHECKPOINT_FORMAT,
        "encoder": encoder.state_dict(),
        "predictor": predictor.state_dict() if predictor is not None else None,
        "config": asdict(config) if config is not None else None,
        "history": asdict(history) if history is not None else None,
        "meta": dict(meta) if meta is not None else None,
    }
    temporary = path.with_suffix(path.suffix + ".partial")
    torch.save(state, temporary)
    temporary.replace(path)  # never leave a half-written checkpoint under the real name
    return path


def load_checkpoint(
    path: str | Path, encoder: nn.Module, predictor: nn.Module | None = None
) -> tuple[TrainConfig | None, History | None]:
    """Load weights saved by `save_checkpoint` into encoder (and predictor); returns (config, history).

    Raises:
        FileNotFoundError: no file at path.
        ValueError: the file is not a jepabook checkpoint, is corrupt, or does not fit the modules.
    """
    state = _read_checkpoint(path)
    path = Path(path)
    _load_into(encoder, state["encoder"], "encoder", path)
    if predictor is not None:
        if state["predictor"] is None:
            raise ValueError(f"predictor: {path} holds no predictor weights")
        _load_into(predictor, state["predictor"], "predictor", path)
    config = TrainConfig(**state["config"]) if state["config"] else None
    history = History(**state["history"]) if state["history"] else None
    return config, history


def checkpoint_meta(path: str | Path) -> dict:
    """The `meta` dict saved with a checkpoint ({} when it has none); same errors as load_checkpoint."""
    return dict(_read_checkpoint(path).get("meta") or {})


def _read_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path: no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"path: {path} is not a readable checkpoint (corrupt or truncated): {error}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"path: {path} is not a jepabook checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def _load_into(module: nn.Module, weights: dict, name: str, path: Path) -> None:
    try:
        module.load_state_dict(weights)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise ValueError(
            f"{name}: the weights in {path} do not fit this architecture: {' '.join(first[:3])}"
        ) from None
