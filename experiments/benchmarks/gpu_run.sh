#!/usr/bin/env bash
# Every GPU check and benchmark, in one call on a lent GPU machine (the `device` tool; its image has
# jax, flax, optax, orbax and torch, not tensorflow-datasets or grain). Not yet run on a GPU.
#
# Here, once (all git-ignored; a call carries 64 MiB at most, so the 16 MB JPEG archive travels,
# not the 161 MB prepared dataset, which is prepared there):
#   ../shared/tools/device-wheels .whl tensorflow-datasets grain
#   mkdir -p data/raw && cp ../shared/data/cifar10_jpeg_train.tar.gz data/raw/
#   mkdir -p peers && cp -r ../shared/peers/airbench peers/
# Then a device call: command `bash experiments/benchmarks/gpu_run.sh PART`, carry [".whl",
# "data/raw", "peers"], timeout_s 580. PART `recipe` (the steps' limits add up to about 520 s):
# checks, then the fast CIFAR-10 recipe against its reference (airbench, PyTorch) on the same card
# and data; PART `suite`: the suite against PyTorch (float32, bfloat16) and the epoch time. One
# call runs at most 600 s: with 15 minutes of device time in all, run `recipe` first.
# Everything lands in $OUT (log.txt and the results JSON); copy the JSON files into
# experiments/benchmarks/results/ and the numbers into the README and the issue notes.
set -uo pipefail
OUT=${OUT:-/tmp/dlearn-gpu}
mkdir -p "$OUT"
pip install -q --no-index --find-links .whl tensorflow-datasets grain \
  && pip install -q --no-deps -e . || { echo "install failed" | tee "$OUT/log.txt"; exit 1; }
step() { echo "== $*"; timeout "$@"; echo "(exit $?)"; }
PART=${1:-recipe}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  step 120 python -m dlearn.prepare --name=cifar10_jpeg --data_dir=data/tfds \
    --train=data/raw/cifar10_jpeg_train.tar.gz
  if [ "$PART" = recipe ]; then
    step 45 python experiments/benchmarks/gpu_checks.py
    # dlearn's recipe: 5 timed runs after a warm-up; then the reference on the same split.
    step 180 python experiments/benchmarks/fast_cifar10.py --data_dir=data/tfds --runs=5
    step 170 bash peers/airbench/run.sh data/raw/cifar10_jpeg_train.tar.gz 5
  else
    # H100 SXM dense bf16 peak: 989 TFLOP/s (the fraction-of-peak column). The suite writes its
    # JSON after every workload, so a timeout keeps the rows measured so far.
    step 200 python experiments/benchmarks/suite.py --peak_tflops=989 --steps=20
    step 90 python experiments/benchmarks/suite.py --dtype=bfloat16 --peak_tflops=989 --steps=20 \
      --nocompile --noplain_layers
    step 120 python experiments/benchmarks/epoch_time.py --data_dir=data/tfds --repeats=1 \
      --workloads=seed_dcnn
  fi
} 2>&1 | tee "$OUT/log.txt"
cp experiments/benchmarks/results/*h100*.json experiments/benchmarks/results/*h200*.json \
  "$OUT"/ 2>/dev/null
ls "$OUT"
