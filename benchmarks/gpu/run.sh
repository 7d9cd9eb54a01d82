#!/usr/bin/env bash
# The GPU check, run THERE (the lent GPU machine: no network, its own python3 3.12 / torch / triton), from the
# repository root, after benchmarks/gpu/prepare.sh filled .whl/ here:
#
#     bash benchmarks/gpu/run.sh                  # every step
#     bash benchmarks/gpu/run.sh tests kernels    # only these steps (a rerun of what failed)
#
# Steps, in order, each with its own time limit, logs teed into $OUT (8 files at most come back):
#   env       nvidia-smi, python / torch / triton versions, the GPU                   -> env.txt
#   tests     python3 -m pytest -m gpu tests/ (the gpu-marked tests)                  -> pytest.log
#   kernels   benchmarks/bench_kernels.py --device cuda (bandwidth vs a device copy)  -> kernels.json, kernels.log
#   prune     benchmarks/bench_prune.py --device cpu,cuda (a synthetic checkpoint)    -> prune.log
#   quantize  benchmarks/bench_quantize.py --device cpu,cuda                          -> quantize.log
# and always summary.md: a section ready to paste at the end of benchmarks/RESULTS.md.
# Exit status: 0 when every step that ran passed; 1 otherwise (a failed gpu test, a kernel unequal to its
# reference, a benchmark that failed or ran out of time); everything is written either way.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/benchmarks/work/gpu-out}
mkdir -p "$OUT"
STEPS=${*:-tests kernels prune quantize}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The repository root holds a folder modelsurgeon/ (the top of the package, without ops/ etc., which setuptools maps
# from the top-level folders): with the current directory on sys.path it would hide the installed package.
# PYTHONSAFEPATH=1 (Python 3.11+) keeps it off, in every child process too.
export PYTHONSAFEPATH=1
unset TRITON_INTERPRET

status=$(mktemp)  # lines "step exit-code seconds", for summary.md (kept out of $OUT: 8 files at most come back)
step() {  # step NAME LIMIT_S LOG COMMAND...: run with a time limit, tee the log, record the exit code
    local name=$1 limit=$2 log=$3
    shift 3
    local t0=$SECONDS
    echo "=== $name (limit ${limit}s): $*" | tee -a "$log"
    timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    echo "$name $rc $((SECONDS - t0))" >>"$status"
    echo "=== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$log"
}

# --- install what the machine lacks: our wheel and the missing requirements, built and downloaded by prepare.sh
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
    { echo "run.sh: installing .whl/*.whl failed: run benchmarks/gpu/prepare.sh here first and carry .whl" >&2; exit 1; }
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PATH=/tmp/site/bin:$PATH

# a wheel built from other sources than these (prepare.sh not rerun after an edit): rebuild it here, offline
tree_hash() {
    { find cli ops kernels recipes modelsurgeon -type f \( -name '*.py' -o -name '*.yaml' \) -print0 | LC_ALL=C sort -z |
        xargs -0 sha256sum; sha256sum pyproject.toml; } | sha256sum | cut -d' ' -f1
}
stale=""
if [ "$(cat .whl/SOURCE.sha256 2>/dev/null)" != "$(tree_hash)" ]; then
    stale="the carried wheel was built from other sources than this tree"
    if python3 -m pip wheel -q --no-deps --no-build-isolation --no-index -w /tmp/rebuilt . >/dev/null 2>&1 &&
        python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site /tmp/rebuilt/modelsurgeon-*.whl; then
        stale="$stale; rebuilt here from the tree"
    else
        stale="$stale; the rebuild here FAILED, so the wheel's (older) code ran"
    fi
    echo "run.sh: $stale" >&2
fi

# --- env
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    [ -n "$stale" ] && echo "WARNING: $stale"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv 2>&1
    nvidia-smi 2>&1 | head -15
    python3 - <<'EOF'
import platform, sys
import torch
print(f"python {platform.python_version()} ({sys.executable}); torch {torch.__version__} (CUDA {torch.version.cuda})")
try:
    import triton
    print(f"triton {triton.__version__}")
except Exception as e:
    print(f"triton: not importable: {e}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs, compute capability {p.major}.{p.minor}")
else:
    print("gpu: torch sees none")
import modelsurgeon, modelsurgeon.ops.quantize.run
print(f"modelsurgeon {modelsurgeon.__version__} from {modelsurgeon.__file__}")
from importlib.metadata import version
for name, dist in (("gguf", "gguf"), ("compressed_tensors", "compressed-tensors"), ("transformers", "transformers"), ("pydantic", "pydantic")):
    try:
        __import__(name)
        print(f"{dist} {version(dist)}")
    except Exception as e:
        print(f"{dist}: not importable: {type(e).__name__}: {e}")
EOF
    echo "cpu: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB"
} 2>&1 | tee "$OUT/env.txt"

for s in $STEPS; do
    case $s in
    tests)
        # every test module is imported to select the gpu-marked ones; one that cannot be imported here (an optional
        # package missing) must not stop the others: its error is reported and fails the step
        step tests 180 "$OUT/pytest.log" python3 -m pytest -m gpu -q -p no:cacheprovider --continue-on-collection-errors -rfEs tests/
        ;;
    kernels)
        step kernels 120 "$OUT/kernels.log" python3 benchmarks/bench_kernels.py --device cuda --json "$OUT/kernels.json"
        ;;
    prune)
        step prune 90 "$OUT/prune.log" python3 benchmarks/bench_prune.py --mb 256 --repeat 1 --cases bf16-48 --device cpu,cuda
        ;;
    quantize)
        step quantize 100 "$OUT/quantize.log" python3 benchmarks/bench_quantize.py --layers 2 --hidden 1024 --repeat 1 \
            --schemes w4a16,fp8,q8_0,q4_0 --device cpu,cuda
        ;;
    *)
        echo "run.sh: unknown step $s (tests, kernels, prune, quantize)" >&2
        echo "$s 2 0" >>"$status"
        ;;
    esac
done

python3 benchmarks/gpu/summarize.py "$OUT" "$status" >"$OUT/summary.md" || echo "run.sh: summarize.py failed" >&2
echo
cat "$OUT/summary.md"
# nonzero when any step failed
! awk '$2 != 0 { bad = 1 } END { exit !bad }' "$status"
