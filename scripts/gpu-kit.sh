#!/usr/bin/env bash
# The GPU kit (../shared/gpu/README.md) for this checkout; docs/benchmarks/gpu.md says when and how.
#   bash scripts/gpu-kit.sh prepare      here, once per machine: the kit's prepare.sh (.gpu/ filled), the
#                                        wheels the project took on since (below), and the kit's driver
#                                        pointed at where the test models' builders live now
#                                        (vllm_mlx_testing; it imports them from vllm_mlx.testing)
#   bash scripts/gpu-kit.sh check        here, before spending device time: the kit's run and
#                                        benchmarks/gpu_speculative.py on this CPU with small models (~3 min)
#   bash scripts/gpu-kit.sh speculative  on the device, carry [".gpu"]: installs what .gpu/ holds unless
#                                        .gpu/run.sh already did on this machine, then gpu_speculative.py
#   bash scripts/gpu-kit.sh compiled     on the device, the same way: bench_compiled_step.py on the q06 model
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# Packages the engine and `vllm-mlx bench` import that the kit's prepare.sh does not fetch (the project
# took them on after the kit was made: msgspec and pyzmq for the engine's records and its process,
# aiohttp for the load generator, httpx/httpcore): cp312 wheels at requirements.lock's versions.
EXTRA="msgspec pyzmq aiohttp aiohappyeyeballs aiosignal attrs frozenlist multidict propcache yarl httpcore httpx h11
       anyio certifi"
PLATFORMS="--python-version 3.12 --implementation cp --platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64
           --platform manylinux_2_31_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64"
fetch_extra() {
    for p in $EXTRA; do
        v=$(grep -iE "^$p==" requirements.lock | head -1 | sed -E 's/^[^=]+==([^ ;\\]+).*/\1/')
        ls .gpu/whl | grep -qi "^$(echo "$p" | tr - _)-" \
            || "${PIP:-pip}" download -q --no-deps --only-binary=:all: $PLATFORMS -d .gpu/whl "$p==$v"
    done
}
patch_driver() {
    sed -i 's/from vllm_mlx\.testing import build_tiny_model/from vllm_mlx_testing import build_tiny_model/' .gpu/gpu_bench.py
}
device_env() {  # on the device: the kit installed (and its q06 model built) once, then its environment
    export OUT=${OUT:-/tmp/gpu-final}
    py=${PYBIN:-python3}
    if [ ! -d /tmp/site/mlx ]; then  # the kit's install (and its model build), nothing measured
        (cd .gpu && bash run.sh --skip sanity engine serve agent tests) > /tmp/gpu-install.log 2>&1 || true
        tail -3 /tmp/gpu-install.log
    fi
    nv=$("$py" -c "import sys; sys.path.insert(0, '/tmp/site'); import nvidia; print(list(nvidia.__path__)[0])" 2>/dev/null || true)
    [ -n "$nv" ] && export LD_LIBRARY_PATH=$(find "$nv" -maxdepth 3 -type d -name lib | tr '\n' ':')${LD_LIBRARY_PATH:-}
    export PYTHONPATH=/tmp/site:$root/src HF_HUB_OFFLINE=1 HF_HUB_CACHE=/tmp/hf VLLM_MLX_BLAS=${VLLM_MLX_BLAS:-off}
    export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
}
case "${1:-}" in
prepare)
    bash ../shared/gpu/prepare.sh
    fetch_extra
    patch_driver
    du -sh .gpu
    ;;
check)
    mkdir -p .gpu
    [ -f .gpu/run.sh ] || cp ../shared/gpu/run.sh ../shared/gpu/gpu_bench.py .gpu/
    patch_driver
    py=${PYBIN:-$root/.venv/bin/python}
    export OUT=${OUT:-/tmp/gpu-check} MODELS=${MODELS:-/tmp/gpu-check-models} HF_HUB_OFFLINE=1
    (cd .gpu && LOCAL=1 PYBIN=$py bash run.sh --small --skip sanity --tests tests/test_engine.py)
    grep -E "rc=" "$OUT/gpu_bench.log"
    PYTHONPATH=$root/src "$py" benchmarks/gpu_speculative.py --small | grep -E "rc=|done"
    ;;
speculative)
    shift
    device_env
    timeout "${BENCH_LIMIT:-420}" "$py" benchmarks/gpu_speculative.py "$@" > "$OUT/gpu_speculative.log" 2>&1 || true
    tail -c 11000 "$OUT/gpu_speculative.log"
    ;;
compiled)
    shift
    device_env
    timeout "${BENCH_LIMIT:-240}" "$py" benchmarks/bench_compiled_step.py --model "${MODELS:-/tmp/vm-models}/q06" \
        --rounds 4 --tokens 300 "$@" 2>&1 | tail -c 4000
    ;;
*)
    sed -n 2,11p "$0"
    exit 2
    ;;
esac
