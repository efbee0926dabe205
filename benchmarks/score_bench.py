"""JEPA-SCORE speed and memory: `jepa_score` against the paper's listing and against the floor.

    python benchmarks/score_bench.py                      # every case on CUDA when present, else CPU
    python benchmarks/score_bench.py --cases cnn-28px     # a subset
    python benchmarks/score_bench.py --markdown results.md
    OMP_NUM_THREADS=1 python benchmarks/score_bench.py --cases cnn-28px vit-s14-56 --repeats 3

For each case: wall time and peak memory of `reference_jepa_score` (the listing: K backward passes,
then an SVD of each K x D Jacobian) and of `jepa_score`, their ratios, the largest relative difference
of the scores, and the floor: the K (or D) Jacobian products alone, nothing stored (the work any exact
method does; see below).
On CUDA, `jepa_score` with precision "tf32" and "bf16" is timed too, with its difference to float32,
and `jepa_score` under a 2 GiB memory budget (by default it may use half the free GPU memory).

Cases (`CASES`): an MLP on 16-D Gaussian-mixture samples (K=64 > D=16: forward mode), the book's
Fashion-MNIST CNN architecture on 256 real test images (untrained weights), and the DINOv2 ViT-S/14
(and on CUDA ViT-B/14) architecture with random weights on real photographs (scikit-image's sample
images) at 56 (batch 2 on a CPU: the quick ViT case), 112 and 224 px. Weights do not change the
cost; random ones need no download.

The floor is the fastest of three ways to run the products alone: plain backward passes over
`jepa_score`'s chunks ("loop"), over the whole batch as the listing does ("batch loop"), and in
batched blocks of basis vectors ("blocks": `jepa_score`'s on a GPU, 16 on a CPU).

Timing: a warm-up forward and backward pass of the encoder on two samples (for the small MLP and
CNN cases also a call of the method itself on two samples, which takes one-time costs such as
functorch's compilation out), then each method once per round, for `--repeats` rounds (3 by
default; interleaved, so a change of the machine's load falls on every method); the table gives
the median and, in "spread", the largest (max - min) / median of the case's methods. The device line
names the CPU model, and each row the machine's load average before and after the case: on a
shared machine single timings vary widely (up to tenfold with 2 threads while another job held one
of 2 cores), so compare medians from one run. Peak memory (of a method's first call): on CUDA the
allocator's peak above what was allocated before the call; on a CPU each method runs in a fresh
process and the peak is the rise of its resident set (VmHWM, reset before the call), an
approximation that includes the allocator's slack.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from jepabook import jepa_score, reference_jepa_score
from jepabook.jacobian import jacobian_blocks
from jepabook.score import eval_mode, frozen_parameters, plan_for


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    batch: int
    cuda_batch: int
    cuda_only: bool = False
    warm_method: bool = False  # cheap enough to warm each method up on two samples first


CASES = {
    c.name: c
    for c in [
        Case("mlp-16d", "MLP 16-D mixture, K=64", 256, 256, warm_method=True),
        Case("cnn-28px", "CNN 28x28 FMNIST, K=64", 256, 256, warm_method=True),
        Case("vit-s14-56", "DINOv2 ViT-S/14 56 px, K=384", 2, 8),
        Case("vit-s14-112", "DINOv2 ViT-S/14 112 px, K=384", 4, 8),
        Case("vit-s14-224", "DINOv2 ViT-S/14 224 px, K=384", 4, 8),
        Case("vit-b14-224", "DINOv2 ViT-B/14 224 px, K=768", 4, 8, cuda_only=True),
    ]
}


@functools.lru_cache(maxsize=1)
def build(name: str, batch: int, device: torch.device) -> tuple[torch.nn.Module, torch.Tensor]:
    """The encoder (eval mode) and a (batch, ...) input for a case, the same in every process
    (kept for the next method of the same case when methods share a process, on CUDA)."""
    torch.manual_seed(0)
    if name == "mlp-16d":
        from jepabook.data import GaussianMixture
        from jepabook.models import MLP

        encoder, x = MLP(16, 64), GaussianMixture.random(16, 8, seed=0).sample(batch, seed=0)
    elif name == "cnn-28px":
        from jepabook.backbones import load_backbone
        from jepabook.datasets import fashion_mnist

        encoder = load_backbone("fmnist-cnn", pretrained=False).encoder
        x = fashion_mnist("test").images[:batch].float()
    else:
        encoder, x = _vit(name, batch)
    return encoder.to(device).eval(), x.to(device)


def _vit(name: str, batch: int) -> tuple[torch.nn.Module, torch.Tensor]:
    import numpy as np
    import skimage.data
    from PIL import Image

    from jepabook.backbones import load_backbone

    size = int(name.rsplit("-", 1)[1])
    backbone = load_backbone(name[:7].replace("vit-", "dinov2-"), pretrained=False, image_size=size)
    pictures = []
    for picture in ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
                    "colorwheel", "logo", "camera", "coins", "horse"]:  # fmt: skip
        try:
            array = getattr(skimage.data, picture)()
        except Exception:  # noqa: BLE001 - a sample image this install does not ship
            continue
        image = Image.fromarray(np.asarray(array)).convert("RGB")
        pictures.append(backbone.preprocess(image))
    x = torch.stack([pictures[i % len(pictures)] for i in range(batch)])
    return backbone.encoder, x


# --- what is measured -------------------------------------------------------------------------


def floor_products(encoder: torch.nn.Module, x: torch.Tensor, chunk: int, block: int) -> None:
    """The K (or D) Jacobian products of the batch, `chunk` samples and `block` basis vectors at a
    time, results dropped: the work of any exact method, nothing else."""
    with eval_mode(encoder), frozen_parameters(encoder), torch.enable_grad():
        plan = plan_for(encoder, x)
        for start in range(0, x.shape[0], chunk):
            part = x[start : start + chunk]
            for _ in jacobian_blocks(encoder, part, plan.K, block=block, forward=plan.forward):
                pass


LEAN_BUDGET = 2 << 30  # on CUDA, jepa_score is also timed under this memory budget
FLOOR_BLOCK_ON_CPU = 16  # blocks tried on a CPU, where jepa_score itself does not block


def method(name: str) -> Callable[[torch.nn.Module, torch.Tensor], torch.Tensor | None]:
    if name == "reference":
        return reference_jepa_score
    if name == "jepa_score":
        return jepa_score
    if name in ("tf32", "bf16"):
        return lambda encoder, x: jepa_score(encoder, x, precision=name)
    if name == "lean":
        return lambda encoder, x: jepa_score(encoder, x, memory_budget=LEAN_BUDGET)
    if name.startswith("floor-"):
        return lambda encoder, x: floor_products(encoder, x, *_floor_sizes(name, encoder, x))
    raise ValueError(f"unknown method {name!r}")


def _floor_sizes(name: str, encoder: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(chunk, block) of a floor variant: "floor-loop" (jepa_score's chunks, plain passes),
    "floor-batch" (the whole batch, plain passes, as the listing), "floor-block" (jepa_score's
    chunks, its blocks, or blocks of FLOOR_BLOCK_ON_CPU where it uses none)."""
    with frozen_parameters(encoder):
        plan = plan_for(encoder, x)
    if name == "floor-batch":
        return x.shape[0], 1
    if name == "floor-loop":
        return plan.chunk, 1
    return plan.chunk, plan.block if plan.block > 1 else FLOOR_BLOCK_ON_CPU


def measure(case: str, name: str, batch: int, device_name: str, repeats: int = 1) -> dict:
    """Median seconds over `repeats` calls (`bench_case` makes one per round), peak bytes (of the
    first call) and scores (or None) of one method on one case, after a warm-up pass."""
    device = torch.device(device_name)
    encoder, x = build(case, batch, device)
    _warm_up(encoder, x[:2])
    if CASES[case].warm_method:
        method(name)(encoder, x[:2])
    times, peak = [], 0
    for _ in range(repeats):
        before = _memory_before(device)
        _synchronize(device)
        start = time.perf_counter()
        scores = method(name)(encoder, x)
        _synchronize(device)
        times.append(time.perf_counter() - start)
        peak = peak or _memory_peak(device) - before
    with frozen_parameters(encoder):
        plan = plan_for(encoder, x)
    return {
        "seconds": statistics.median(times),
        "spread": (max(times) - min(times)) / statistics.median(times),
        "peak": peak,
        "scores": None if scores is None else scores.double().cpu(),
        "plan": f"{plan.chunk}x{plan.block}{' fwd' if plan.forward else ''}",
        "block": plan.block,
        "chunk": plan.chunk,
        "K": plan.K,
        "D": plan.D,
    }


def _warm_up(encoder: torch.nn.Module, x: torch.Tensor) -> None:
    x = x.detach().clone().requires_grad_(True)
    encoder(x).sum().backward()
    encoder.zero_grad(set_to_none=True)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _memory_before(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    return _status_bytes("VmRSS")


def _memory_peak(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _status_bytes("VmHWM")


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def run(case: str, name: str, batch: int, device: str, repeats: int) -> dict:
    """`measure` in-process on CUDA; in a fresh process on a CPU, so peak memory is its own."""
    if device.startswith("cuda"):
        return measure(case, name, batch, device, repeats)
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(measure, (case, name, batch, device, repeats))


# --- the table ----------------------------------------------------------------------------------


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())


def _median(rounds: list[dict]) -> dict:
    """One method's first call, with the median seconds and the spread of all its calls."""
    seconds = [r["seconds"] for r in rounds]
    median = statistics.median(seconds)
    return {**rounds[0], "seconds": median, "spread": (max(seconds) - min(seconds)) / median}


def bench_case(case: Case, device: str, repeats: int = 1) -> dict:
    cuda = device.startswith("cuda")
    batch = case.cuda_batch if cuda else case.batch
    names = ["reference", "jepa_score", "floor-loop", "floor-block"]
    names += ["tf32", "bf16", "lean"] if cuda else []
    first = run(case.name, "jepa_score", batch, device, 1)  # its plan's chunk:
    names += ["floor-batch"] if first["chunk"] < batch else []  # else the passes of floor-loop
    calls = {name: [first] if name == "jepa_score" else [] for name in names}
    for round_ in range(repeats):  # rounds, each method once: a change of load falls on all
        for name in names:
            if len(calls[name]) <= round_:
                calls[name].append(run(case.name, name, batch, device, 1))
    results = {name: _median(rounds) for name, rounds in calls.items()}
    ref, ours = results["reference"], results["jepa_score"]
    floor = min(results[name]["seconds"] for name in results if name.startswith("floor"))
    row = {
        "case": case.description,
        "B": batch,
        "plan": ours["plan"],
        "reference_s": ref["seconds"],
        "jepa_score_s": ours["seconds"],
        "speedup": ref["seconds"] / ours["seconds"],
        "floor_s": floor,
        "floor_loop_s": results["floor-loop"]["seconds"],
        "floor_batch_s": results.get("floor-batch", results["floor-loop"])["seconds"],
        "floor_block_s": results["floor-block"]["seconds"],
        "over_floor": ours["seconds"] / floor,
        "spread": max(r["spread"] for r in results.values()),
        "reference_peak_MB": ref["peak"] / 2**20,
        "jepa_score_peak_MB": ours["peak"] / 2**20,
        "memory_ratio": ours["peak"] / max(ref["peak"], 1),
        "max_rel_diff": relative_difference(ours["scores"], ref["scores"]),
    }
    for name in ("tf32", "bf16"):
        if name in results:
            row[f"{name}_s"] = results[name]["seconds"]
            row[f"{name}_rel_diff"] = relative_difference(results[name]["scores"], ours["scores"])
    if "lean" in results:
        row["lean_s"] = results["lean"]["seconds"]
        row["lean_MB"] = results["lean"]["peak"] / 2**20
    return row


COLUMNS = [
    ("case", "case", "{}"),
    ("B", "B", "{}"),
    ("plan", "chunk x block", "{}"),
    ("reference_s", "listing s", "{:.3f}"),
    ("jepa_score_s", "jepa_score s", "{:.3f}"),
    ("speedup", "speed-up", "{:.2f}x"),
    ("floor_s", "floor s", "{:.3f}"),
    ("floor_loop_s", "loop s", "{:.3f}"),
    ("floor_batch_s", "batch loop s", "{:.3f}"),
    ("floor_block_s", "blocks s", "{:.3f}"),
    ("over_floor", "/ floor", "{:.3f}"),
    ("spread", "spread", "{:.0%}"),
    ("reference_peak_MB", "listing MB", "{:.0f}"),
    ("jepa_score_peak_MB", "jepa_score MB", "{:.0f}"),
    ("memory_ratio", "memory ratio", "{:.2f}"),
    ("max_rel_diff", "max rel diff", "{:.1e}"),
    ("tf32_s", "tf32 s", "{:.3f}"),
    ("tf32_rel_diff", "tf32 diff", "{:.1e}"),
    ("bf16_s", "bf16 s", "{:.3f}"),
    ("bf16_rel_diff", "bf16 diff", "{:.1e}"),
    ("lean_s", "2 GiB budget s", "{:.3f}"),
    ("lean_MB", "2 GiB budget MB", "{:.0f}"),
    ("load", "machine load (before, after)", "{}"),
]


def markdown(rows: list[dict]) -> str:
    """One markdown table of the rows; columns absent from every row are left out."""
    columns = [c for c in COLUMNS if any(c[0] in row for row in rows)]
    lines = [
        "| " + " | ".join(title for _, title, _ in columns) + " |",
        "|" + "|".join(" --- " for _ in columns) + "|",
    ]
    for row in rows:
        cells = [fmt.format(row[key]) if key in row else "" for key, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe(device: str) -> str:
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        threads = torch.get_num_threads()
        name = f"{cpu_model()}, {os.cpu_count()} CPUs, {threads} thread{'s' * (threads > 1)}"
    return f"{device} ({name}), torch {torch.__version__}"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> str:
    """The 1-minute load average and the CPU count: how busy the machine was around a case."""
    try:
        return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    except OSError:
        return "load unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="*", choices=list(CASES), help="default: every case")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--markdown", help="also write the table (and the device line) to this file"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="calls per method; the median is reported"
    )
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    names = args.cases or [n for n, c in CASES.items() if cuda or not c.cuda_only]
    header = f"device: {describe(args.device)}"
    print(header, flush=True)
    rows = []
    for name in names:
        start, before = time.perf_counter(), load()
        rows.append(bench_case(CASES[name], args.device, args.repeats))
        rows[-1]["load"] = f"{before}, then {load()}"
        print(f"{name}: done in {time.perf_counter() - start:.0f} s", flush=True)
        if args.markdown:  # after every case, so an interrupted run keeps what it measured
            with open(args.markdown, "w") as f:
                f.write(f"{header}\n\n{markdown(rows)}\n")
    print(markdown(rows))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
