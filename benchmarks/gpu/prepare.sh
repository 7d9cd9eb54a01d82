#!/usr/bin/env bash
# Prepare the GPU check HERE (a machine with network, no GPU), from the repository root:
#
#     bash benchmarks/gpu/prepare.sh
#
# 1. builds our wheel from the working tree as it is (uncommitted changes included) into .whl/ (git-ignored);
# 2. downloads into .whl/ the wheels the GPU machine lacks (no network there): every requirement of ours, followed
#    down, that its image does not have (benchmarks/gpu/device-packages.txt), for CPython 3.12 manylinux x86-64;
# 3. records a hash of the package sources, so that run.sh can tell a stale wheel;
# 4. prints the sizes (what travels must stay under 64 MiB) and the device call to make.
# Then, THERE: bash benchmarks/gpu/run.sh (see docs/gpu.md).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo "$PWD/.venv/bin/python" || command -v python3 )}

if ! git check-ignore -q .whl/x.whl; then
    echo "prepare.sh: .whl/ is not git-ignored; add /.whl/ to .gitignore" >&2
    exit 1
fi

# the package sources, hashed the same way by run.sh
tree_hash() {
    { find cli ops kernels recipes modelsurgeon -type f \( -name '*.py' -o -name '*.yaml' \) -print0 | LC_ALL=C sort -z |
        xargs -0 sha256sum; sha256sum pyproject.toml; } | sha256sum | cut -d' ' -f1
}

rm -rf .whl
mkdir .whl
echo "building our wheel from the working tree ..."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# a clean copy of the tree (tracked and untracked-not-ignored files that exist): no stale build/ leaks into the wheel
git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
    tar --null -T - -cf - | tar -xf - -C "$tmp"
(cd "$tmp" && "$PY" -m pip wheel -q --no-deps -w "$OLDPWD/.whl" . >/dev/null) 2>&1 | grep -v -i warn || true
ls .whl/modelsurgeon-*.whl >/dev/null
tree_hash >.whl/SOURCE.sha256

echo "downloading what the GPU machine lacks (CPython 3.12, manylinux x86-64):"
"$PY" benchmarks/gpu/wheels.py .whl

echo
echo "wheels in .whl/:"
ls -1 .whl/*.whl | sed 's/^/  /'
whl=$(du -cb .whl | tail -1 | cut -f1)
tree=$(git ls-files -z -co --exclude-standard | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
    du -cb --files0-from=- | tail -1 | cut -f1)
shared=0
[ -d shared ] && shared=$(du -sb shared | cut -f1)
total=$((whl + tree + shared))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "sizes: wheels $(mib "$whl"), working tree $(mib "$tree"), shared/ $(mib "$shared"): $(mib "$total") travel of 64 MiB"
if [ "$total" -ge $((64 * 1048576)) ]; then
    echo "prepare.sh: over the 64 MiB the device call carries" >&2
    exit 1
fi
cat <<'EOF'

Now, in a session with a GPU, one device call (about 5 minutes; the per-step limits in run.sh add up to 8):
    run(command="bash benchmarks/gpu/run.sh", carry=[".whl"], timeout_s=540)
then paste $OUT/summary.md (files_at/summary.md) at the end of benchmarks/RESULTS.md, fix what failed,
and rerun only the failed steps if time is left, e.g.  command="bash benchmarks/gpu/run.sh tests kernels".
EOF
