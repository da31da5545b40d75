#!/usr/bin/env bash
# Everything a lent CUDA GPU should run, in one call (device time is scarce). Each stage has its
# own time limit, so the default stages end inside the device's 10-minute call and a later stage
# still runs when an earlier one fails or hangs. Logs and result files go to $OUT (default
# /tmp/fastes_gpu): at most 8 files, the most the device tool returns.
#
#   FASTES_GIT_SHA=$(git rev-parse HEAD) bash benchmarks/gpu_all.sh [stage ...]
#
# Stages (default: env tests kernels lowrank, ~7 minutes on an H100; peers on its own call):
#   env      nvidia-smi, versions, and an install of fastes (no deps, no network) -> env.txt
#   tests    the kernel tests on CUDA and every GPU test (tests/test_kernels*.py, ...) -> tests.log
#   kernels  benchmarks/bench_kernels.py -> kernels_gpu.json, kernels.log, profile_es_step.txt
#   lowrank  benchmarks/lowrank_gpu.py -> lowrank_gpu.json, lowrank.log,
#            profile_eggroll_P1024.txt
#   peers    benchmarks/peers/compare.py --device cuda (fastes eager and under torch.compile)
#            -> peers_gpu.json, peers.log, ~9 minutes: a call of its own; the peers
#            come as wheels in .whl/ (carried: evosax, its dotmap, evox; the image has jax,
#            flax, optax; EvoTorch needs ray, which it has not). Fetch them here first (.whl/ is
#            git-ignored), then run with carry [".whl"]:
#              pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                --platform manylinux2014_x86_64 -d .whl evosax==0.3.2 dotmap evox==1.4.0
set -u
OUT=${OUT:-/tmp/fastes_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
stages=${*:-env tests kernels lowrank}

stage() {  # stage NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s) ==="
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 40 "$OUT/$name.log"
    echo "=== $name: rc $rc in $((SECONDS - t0))s ==="
}

for s in $stages; do
    case $s in
    env)
        { nvidia-smi; $PY -c "import torch, triton, numpy; print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'triton', triton.__version__, 'numpy', numpy.__version__, \
torch.cuda.get_device_name())"; } 2>&1 | tee "$OUT/env.txt"
        # fastes.kernels lives in kernels/ (pyproject's package-dir): an install maps it.
        # (its log joins env.txt: the device returns at most 8 files)
        timeout 60 $PY -m pip install -q --no-deps --no-build-isolation --no-index -e . \
            >>"$OUT/env.txt" 2>&1 && echo "fastes installed (editable)"
        if ! $PY -c "import fastes.kernels" 2>/dev/null; then  # fallback: map it by hand
            ln -sfn ../kernels fastes/kernels
            export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
            $PY -c "import fastes.kernels; print('fastes.kernels via a link')"
        fi
        ;;
    tests)
        stage tests 240 $PY -m pytest -q -p no:cacheprovider --durations=8 tests/test_kernels.py \
            tests/test_kernels_gpu.py tests/test_kernels_lowrank.py tests/test_noise.py \
            tests/test_prng.py tests/test_pbt.py::test_vectorized_pbt_on_cuda_matches_the_cpu_run
        ;;
    kernels)
        stage kernels 150 $PY benchmarks/bench_kernels.py --out "$OUT/kernels_gpu.json" \
            --profile "$OUT/profile_es_step.txt"
        ;;
    lowrank)
        stage lowrank 130 $PY benchmarks/lowrank_gpu.py --out "$OUT/lowrank_gpu.json" --profile "$OUT"
        ;;
    peers)
        $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
        export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX takes what it uses, like torch
        stage peers 540 $PY benchmarks/peers/compare.py --device cuda --out "$OUT/peers_gpu.json"
        ;;
    *) echo "unknown stage $s" ;;
    esac
done
