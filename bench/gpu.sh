#!/usr/bin/env bash
# GPU runs (DESIGN §9): build the wheels here, install them beside the GPU machine's own torch, run the tests there.
#
#   bash bench/gpu.sh build        # here: wheels into dist/ (ignored by git; carry it to the GPU machine)
#   bash bench/gpu.sh run [ARGS]   # there: install dist/*.whl with --no-deps, then pytest -m gpu plus the whole
#                                  # CPU suite against that torch; logs under $OUT (or ./gpu-logs)
#   bash bench/gpu.sh bench        # there: the GPU benchmarks of bench/ (tables, JSON and PNG plots under $OUT)
#   bash bench/gpu.sh all [ARGS]   # there: the GPU tests, then the benchmarks, then the CPU suite
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
build)
    rm -rf dist
    uv build --all-packages --wheel --quiet --out-dir dist
    for plugin in tests/plugins/edifice-*; do uv build --wheel --quiet --out-dir dist "$plugin"; done
    # Pure-Python test references and benchmark peers the GPU image lacks (its torch, transformers, einops are used).
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d dist "flash-linear-attention==0.6.0" "fla-core==0.6.0" "mambapy==1.2.0"
    ls dist
    ;;
run | bench | all)
    action="$1"
    shift
    # Results and logs go to one folder; under the device tool ($OUT set, which returns few files) it is packed into
    # one archive at the end.
    out="${OUT:-gpu-logs}"
    [ -n "${OUT:-}" ] && out="$(mktemp -d)"
    mkdir -p "$out"
    site="$(mktemp -d)"
    python3 -m pip install --quiet --no-index --no-deps --no-compile --target "$site" dist/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 EDIFICE_TEST_PLUGINS=1
    python3 - <<'PY' | tee "$out/environment.txt"
import platform, torch, edifice
print(f"python {platform.python_version()}, torch {torch.__version__}, cuda {torch.version.cuda}")
print(f"device {torch.cuda.get_device_name()}, edifice-core {edifice.__version__}")
PY
    # Packed after every phase, so a run stopped at the device tool's time limit still returns what it finished.
    pack() { if [ -n "${OUT:-}" ]; then tar -czf "$OUT/edifice-gpu-results.tar.gz" -C "$out" .; fi; }
    status=0
    if [ "$action" != bench ]; then
        # No hang guard here: the first check of a worker also pays CUDA's start-up and kernel compilation.
        python3 -m pytest -p no:cacheprovider -m gpu -n 8 --edifice-check-time-limit 0 --durations=15 -ra packages tests "$@" \
            2>&1 | tee "$out/gpu-tests.log" || status=$?
        pack
    fi
    if [ "$action" != run ]; then
        {
            python3 bench/ssm_speed.py gpu --out "$out"
            python3 bench/ssm_speed.py gpu --dtype bfloat16 --out "$out"
            python3 bench/recurrent_latency.py --device cuda --out "$out"
            python3 bench/recurrent_latency.py --device cuda --dtype float16 --out "$out"
            python3 bench/train_overhead.py --device cuda --out "$out"
            python3 bench/arena_overhead.py --device cuda --out "$out"
            python3 bench/kernels.py --out "$out"
        } 2>&1 | tee "$out/bench.log" || status=$?
        pack
    fi
    if [ "$action" != bench ]; then
        # The CPU suite against this machine's torch and transformers (the oldest versions DESIGN §1 supports). The
        # meta-package test builds a wheel with uv, which needs the network there: it runs in CI instead.
        python3 -m pytest -p no:cacheprovider -n 8 --edifice-require-signatures -ra packages tests \
            --ignore=tests/test_meta_package.py "$@" 2>&1 | tee "$out/cpu-suite.log" || status=$?
        pack
    fi
    exit "$status"
    ;;
*)
    echo "usage: bash bench/gpu.sh build | run [pytest args] | bench | all [pytest args]" >&2
    exit 2
    ;;
esac
