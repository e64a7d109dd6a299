#!/usr/bin/env bash
# Every GPU check and benchmark, in two calls on a lent GPU machine (the `device` tool; its image
# has jax, flax, optax, orbax and torch, but not tensorflow-datasets, grain or ml_collections).
#
# Here, once (all git-ignored; a call carries 64 MiB at most, so the 16 MB JPEG archive travels,
# not the 161 MB prepared dataset, which is prepared there while the GPU runs the checks and suite):
#   ../shared/tools/device-wheels .whl tensorflow-datasets grain ml_collections
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform any -d .whl/pinned \
#     flax==0.12.8 optax==0.2.8 orbax-checkpoint==0.12.8     # the versions CI tests, a fallback
#   mkdir -p data/raw && cp ../shared/data/cifar10_jpeg_train.tar.gz data/raw/
#   mkdir -p peers && cp -r ../shared/peers/airbench peers/
#   JAX_PLATFORMS=cpu python experiments/benchmarks/export_on_gpu.py prepare workdirs/gpu_exports \
#     cnn=workdirs/smoke:validation \
#     lstm_fcn_ensemble=workdirs/cv/lstmfcn_e5_japanese_vowels/fold_0:../shared/data/JapaneseVowels_TRAIN.ts
# (any trained work directories: here the `:smoke` run of the README and a cross-validation fold of
# rnn_uea.py), and, if an earlier call brought back compile-cache.tgz, `tar xzf compile-cache.tgz`
# here (it fills .cache/: torch.compile's and JAX's compilation caches; compilation is never timed).
# Then the device calls, each `bash experiments/benchmarks/gpu_run.sh STEP...` with carry [".whl",
# "data/raw", "peers", ".cache", "workdirs/gpu_exports"] and timeout_s 590; a session's 15 minutes
# of device time (the machine's start included) hold two calls on a warm machine, in the order of
# issue 28's items: call 1 `checks recipe reference`, call 2 `suite bf16 unroll lstm export
# ensemble epoch pipeline imagenet` (what the budget cuts is named in the log: run it first in the
# next session).
# Steps (no names: all, in this order). Their device time on an H200 (2026-11-27, cold caches):
# checks 48 s, suite 144 s, recipe 160 s for 5 runs (61 s of it the first compilation; each run
# then also read and decoded the splits, ~10 s, which the runs now share), reference 93 s for 5
# runs, export 15 s, epoch 120 s, bf16 127 s; the others not run yet:
#   checks     experiments/benchmarks/gpu_checks.py: cuDNN LSTM == scan, bf16 ~ float32
#   suite      suite.py, float32: dlearn (scan and cuDNN LSTMs) against torch eager and compile
#   recipe     fast_cifar10.py: the fast CIFAR-10 recipe at 8 and 9 epochs, 8 timed runs of each
#              (alternated, after a warm-up each), then one more run profiled (the trace stays
#              in /tmp/dlearn-profile, too big to come back; profile_summary.py's reading of it
#              and the fraction of the card's peak go into the results file)
#   reference  peers/airbench (PyTorch) on the same split, 8 runs (REFERENCE_RUNS) after its
#              warm-up; torch.compile in its default mode (REFERENCE_MODE=max-autotune for
#              airbench's own: that one compiled for over 370 s on an H200 without finishing)
#   export     export_on_gpu.py check: the exported models run by the README's lines on the GPU
#   epoch      epoch_time.py: training through the real input pipeline, host and on-device data
#   pipeline   epoch_time.py's resnet50: ResNet-50 (bf16, batch 256) through the JPEG pipeline
#              (random-resized crops decoded in one worker process per core) on a folder made
#              from the CIFAR-10 JPEGs upscaled to 200-500 px (imagenet_like.py), images/s
#   bf16       suite.py, bfloat16 (autocast in PyTorch), eager and compile
#   unroll     suite.py's LSTM rows with --rnn_unroll=8 (results/<card>-unroll8.json), eager only
#   lstm       the long LSTM (T1024 F3 H128, batch 256) profiled: dlearn's scan and JAX's cuDNN
#              LSTM (float32), what each step's kernels take (results/<card>-lstm-profile.json)
#   ensemble   ensemble_step.py: the UEA recipe's 5 FCNs vmapped against in turn, two shapes
#   imagenet   suite.py's ResNet-50 and ViT-B/16 training steps, bf16, batch 256, against
#              torchvision's and timm's (both in the image), eager and compile: the step alone
# BUDGET (default 570 s) bounds the whole script: each step gets at most its own limit and what is
# left of the budget, so a slow step costs the later ones, never the call's output. Everything
# lands in $OUT: log.txt, prepare.log, probe.log and the results JSON files, which go into
# experiments/benchmarks/results/ (and the numbers into the README and the issue notes).
# SMOKE=1 runs every step in miniature on this CPU machine, to test this script before a call.
set -uo pipefail
OUT=${OUT:-/tmp/dlearn-gpu}
BUDGET=${BUDGET:-570}
SMOKE=${SMOKE:-0}
STEPS=" ${*:-checks suite recipe reference export epoch pipeline bf16 unroll lstm ensemble imagenet} "
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
began_at=$(mktemp)  # results files newer than this one are this call's
start=$SECONDS
wants() { [[ "$STEPS" == *" $1 "* ]]; }
# step LIMIT NAME COMMAND...: COMMAND for at most LIMIT seconds and what is left of the budget.
step() {
  local limit=$1 name=$2 left=$((BUDGET - (SECONDS - start))) began=$SECONDS
  shift 2
  ((limit > left)) && limit=$left
  if ((limit < 15)); then echo "== $name: skipped, the budget is spent"; return 1; fi
  echo "== $name: limit ${limit}s, at $((SECONDS - start))s: $*"
  timeout -k 10 "$limit" "$@"  # dlearn checkpoints and stops on SIGTERM; -k: a hard stop after
  local status=$?
  echo "== $name: exit $status after $((SECONDS - began))s"
  return $status
}

{
  if [ "$SMOKE" = 1 ]; then
    PY=python
    kind=(--machine_kind=smoke)  # results/smoke*.json, removed at the end
    suite_args=("${kind[@]}" --repeats=1 --steps=2 --only='seed_dcnn b32,lstm T29' --nocompile)
    imagenet_args=("${kind[@]}" --repeats=1 --steps=1 --imagenet_batch=2 --nocompile)
    recipe_args=("${kind[@]}" --smoke --runs=1 --epochs=8,9 --profile=/tmp/dlearn-profile)
    epoch_args=("${kind[@]}" --steps=8 --variants=host:1,device:1)
    pipeline_args=("${kind[@]}" --steps=2 --batch_size=4 --eval_examples=8 --repeats=1)
    like_count=64
    reference=(echo "reference: needs a GPU and torch.compile; not run in SMOKE mode")
    ensemble_args=("${kind[@]}" --repeats=1)
  else
    PY=python3
    # Wheels into a folder of their own (the image's site-packages stay as they are); this
    # checkout by path, as a `pip install -e .` would need the package index for its build.
    [ -d /tmp/site/grain ] || $PY -m pip install -q --no-index --no-deps --no-compile \
      --no-cache-dir --target /tmp/site .whl/*.whl \
      || { echo "error: installing .whl failed"; exit 1; }
    suite_args=(--repeats=3 --steps=10 --noplain_layers --only=seed_dcnn,resnet18,lstm,elman)
    imagenet_args=(--repeats=3 --steps=5 --imagenet_batch=256)
    recipe_args=(--runs=8 --epochs=8,9 --profile=/tmp/dlearn-profile --peak_tflops=989)
    epoch_args=(--repeats=1)
    pipeline_args=(--steps=48 --repeats=1)
    like_count=2000
    ensemble_args=(--repeats=20)
    reference=(python3 airbench94_muon.py)
  fi
  export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  # Compilation caches of the recipe and its reference that travel between calls (carry .cache;
  # compile-cache.tgz comes back). Only theirs: the suite's first-call column includes compilation.
  caches=$PWD/.cache
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
    --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY -c 'import jax, flax, optax, orbax.checkpoint as o, grain, tensorflow_datasets as t
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__,
      "orbax", o.__version__, "grain", grain.__version__, "tfds", t.__version__, jax.devices())'

  # CPU work in the background while the GPU runs the checks and the suite: the prepared dataset
  # (JAX kept off the GPU), and airbench's data files with the same validation carve.
  data_pid=''
  if { wants recipe || wants reference || wants epoch; } && [ ! -d data/tfds/cifar10_jpeg ]; then
    JAX_PLATFORMS=cpu $PY -m dlearn.prepare --name=cifar10_jpeg --data_dir=data/tfds \
      --train=data/raw/cifar10_jpeg_train.tar.gz >"$OUT/prepare.log" 2>&1 &
    data_pid=$!
  fi
  # The JPEG folder of ImageNet's sizes and its encoded store, for the pipeline step.
  like_pid=''
  if wants pipeline && [ ! -d data/tfds/imagenet_like ]; then
    { $PY experiments/benchmarks/imagenet_like.py --output=data/imagenet_like --count=$like_count \
        --archive=data/raw/cifar10_jpeg_train.tar.gz \
      && JAX_PLATFORMS=cpu $PY -m dlearn.prepare --name=imagenet_like --train=data/imagenet_like \
        --data_dir=data/tfds; } >"$OUT/prepare_imagenet_like.log" 2>&1 &
    like_pid=$!
  fi
  airbench=/tmp/airbench
  ref_pid=''
  if wants reference && [ "$SMOKE" != 1 ] && [ ! -f $airbench/cifar10/test.pt ]; then
    mkdir -p $airbench
    # REFERENCE_RUNS runs, and torch.compile's default mode unless REFERENCE_MODE says otherwise:
    # its own max-autotune compiled for over 370 s of device time on an H200 without finishing
    # (2026-11-27).
    sed "s/range(200)/range(${REFERENCE_RUNS:-8})/; s/mode=\"max-autotune\"/mode=\"${REFERENCE_MODE:-default}\"/" \
      peers/airbench/airbench94_muon.py >$airbench/airbench94_muon.py
    grep -n 'model.compile' $airbench/airbench94_muon.py
    $PY peers/airbench/jpeg_to_pt.py data/raw/cifar10_jpeg_train.tar.gz $airbench/cifar10 \
      >>"$OUT/prepare.log" 2>&1 &
    ref_pid=$!
  fi

  # Whether dlearn runs on the image's flax, optax and orbax (newer than CI's, with JAX 0.11): one
  # end-to-end test (data, training, checkpoint, resume) on the CPU while the GPU runs the checks.
  # If it fails, the versions CI tests (.whl/pinned) go first on the path, if they pass it.
  probe=(env JAX_PLATFORMS=cpu $PY -m pytest -q -x -p no:cacheprovider
    tests/test_fast_cnn.py -k resumes_exactly)
  timeout -k 5 120 "${probe[@]}" >"$OUT/probe.log" 2>&1 &
  probe_pid=$!
  wants checks && step 60 checks $PY experiments/benchmarks/gpu_checks.py
  if [ "$STEPS" = " reference " ]; then
    kill $probe_pid 2>/dev/null  # only PyTorch runs
  elif wait $probe_pid; then
    echo "== probe: dlearn's end-to-end test passes with the image's packages"
  else
    echo "== probe failed with the image's packages ($OUT/probe.log); trying .whl/pinned"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/pinned \
      .whl/pinned/*.whl
    if PYTHONPATH="/tmp/pinned:$PYTHONPATH" step 120 probe-pinned "${probe[@]}"; then
      export PYTHONPATH="/tmp/pinned:$PYTHONPATH"
      wants checks && step 60 checks $PY experiments/benchmarks/gpu_checks.py
    fi
  fi
  # JAX and PyTorch share the GPU in one process: JAX allocates as it goes.
  wants suite && XLA_PYTHON_CLIENT_PREALLOCATE=false \
    step 170 suite $PY experiments/benchmarks/suite.py --peak_tflops=989 "${suite_args[@]}"

  if [ -n "$data_pid" ]; then
    echo "== waiting for the dataset ($((SECONDS - start))s)"
    wait $data_pid || echo "error: preparing the dataset failed (prepare.log)"
  fi
  # 2 warm-ups, 16 runs and a profiled one: 5 runs and a warm-up took 160-180 s on an H200 when
  # each read the splits anew (2026-11-27).
  wants recipe && JAX_COMPILATION_CACHE_DIR=$caches/jax step 330 recipe \
    $PY experiments/benchmarks/fast_cifar10.py --data_dir=data/tfds "${recipe_args[@]}"
  if wants reference; then
    [ -n "$ref_pid" ] && { wait $ref_pid || echo "error: airbench's data files failed"; }
    mkdir -p $airbench && (cd $airbench \
      && TORCHINDUCTOR_CACHE_DIR=$caches/torchinductor step 240 reference "${reference[@]}")
    [ "$SMOKE" = 1 ] || $PY experiments/benchmarks/airbench_results.py "$OUT/log.txt" \
      --compile_mode="${REFERENCE_MODE:-default}"
  fi
  # A model exported on the CPU machine (export_on_gpu.py prepare, into workdirs/gpu_exports).
  wants export && XLA_PYTHON_CLIENT_PREALLOCATE=false step 60 export $PY experiments/benchmarks/export_on_gpu.py check \
    workdirs/gpu_exports && cp workdirs/gpu_exports/check.json "$OUT/export_check.json"
  wants epoch && step 150 epoch $PY experiments/benchmarks/epoch_time.py --data_dir=data/tfds \
    "${epoch_args[@]}"
  if wants pipeline; then
    [ -n "$like_pid" ] && { wait $like_pid || echo "error: the imagenet_like folder failed"; }
    step 150 pipeline $PY experiments/benchmarks/epoch_time.py --data_dir=data/tfds \
      --workloads=resnet50 --variants=host:1 --results_suffix=-resnet50 "${pipeline_args[@]}"
  fi
  wants bf16 && XLA_PYTHON_CLIENT_PREALLOCATE=false step 170 bf16 \
    $PY experiments/benchmarks/suite.py --dtype=bfloat16 --peak_tflops=989 "${suite_args[@]}"
  # The long LSTM, where dlearn's scan loses to cuDNN (0.19-0.25x): 8 time steps per iteration.
  wants unroll && XLA_PYTHON_CLIENT_PREALLOCATE=false step 90 unroll \
    $PY experiments/benchmarks/suite.py --peak_tflops=989 "${suite_args[@]}" --only=lstm \
    --rnn_unroll=8 --nocompile
  wants lstm && XLA_PYTHON_CLIENT_PREALLOCATE=false step 90 lstm \
    $PY experiments/benchmarks/suite.py --peak_tflops=989 "${suite_args[@]}" --only='lstm T1024' \
    --nocompile --profile=/tmp/dlearn-lstm-profile --results_suffix=-lstm-profile
  # JapaneseVowels' shape, then GunPoint's (one results file, an entry per shape).
  if wants ensemble; then
    for shape in '--length=26 --channels=12' '--length=150 --channels=1'; do
      step 40 ensemble $PY experiments/benchmarks/ensemble_step.py $shape "${ensemble_args[@]}"
    done
  fi
  wants imagenet && XLA_PYTHON_CLIENT_PREALLOCATE=false step 200 imagenet \
    $PY experiments/benchmarks/suite.py --dtype=bfloat16 --peak_tflops=989 --only=resnet50,vit_b16 \
    --results_suffix=-imagenet "${imagenet_args[@]}"
  echo "== done at $((SECONDS - start))s"
} 2>&1 | tee -a "$OUT/log.txt"
# The results files this call wrote (each script names its file after the device).
find experiments/benchmarks/results -name '*.json' -newer "$began_at" | xargs -r cp -t "$OUT"/
if [ -d .cache ] && [ "$(du -sm .cache | cut -f1)" -lt 60 ]; then
  tar czf "$OUT/compile-cache.tgz" .cache  # 16 MiB at most come back: else it stays behind
  [ "$(du -m "$OUT/compile-cache.tgz" | cut -f1)" -lt 16 ] || rm "$OUT/compile-cache.tgz"
fi
[ "$SMOKE" = 1 ] && rm -f experiments/benchmarks/results/*smoke*.json
ls "$OUT"
