#!/usr/bin/env bash
# One lent-GPU session, prepared to run once: the engine's CUDA tests and the score benchmark.
# Run from the repository root with the machine's own python3 (torch, timm, scikit-image there);
# needs data/cache/fashion-mnist/test.npz carried along. Writes everything under $OUT.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
timeout 270 python3 benchmarks/score_bench.py --markdown "$OUT/score_bench_cuda.md" \
    > "$OUT/score_bench_cuda.log" 2>&1
echo "benchmark exit $?"
timeout 80 python3 -m pytest tests/test_engine.py tests/test_score.py -q -p no:cacheprovider \
    -W ignore::FutureWarning > "$OUT/tests_cuda.log" 2>&1
echo "tests exit $?"
tail -5 "$OUT/tests_cuda.log"
grep -v Warning "$OUT/score_bench_cuda.log" | tail -12
