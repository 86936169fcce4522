#!/usr/bin/env bash
# Run every atheris fuzz target for N seconds each (default 60); exit non-zero on the first crash.
#
#   fuzz/run.sh [SECONDS] [TARGET ...]      e.g. fuzz/run.sh 60, fuzz/run.sh 300 http
#
# The committed seed corpus under fuzz/corpus/<target>/ is read but never written: new inputs go
# to a scratch folder, and a crashing input is copied to fuzz/crashes/<target>/ (and printed as
# hex) so it can be turned into a regression test. PYTHON defaults to the plain-Python build's
# virtualenv: the fuzzer is steered by the coverage of Python code, and compiled modules report none.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(http proxyproto tlshello basic hostname config)
fi
python="${PYTHON:-.venv-pure/bin/python}"
if ! "$python" -c "import atheris" 2>/dev/null; then
    echo "fuzz/run.sh: atheris is not installed for $python (pip install atheris)" >&2
    exit 2
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=0
for target in "${targets[@]}"; do
    script="fuzz/fuzz_${target}.py"
    if [ ! -f "$script" ]; then
        echo "fuzz/run.sh: no target $script" >&2
        exit 2
    fi
    mkdir -p "$scratch/$target/corpus" "$scratch/$target/artifacts"
    echo "== $target: ${seconds}s"
    set +e
    "$python" "$script" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
        -print_final_stats=1 -artifact_prefix="$scratch/$target/artifacts/" \
        "$scratch/$target/corpus" "fuzz/corpus/$target" >"$scratch/$target/log" 2>&1
    status=$?
    set -e
    tail -n 12 "$scratch/$target/log"
    if [ $status -ne 0 ]; then
        failed=1
        echo "!! $target crashed (exit $status)"
        grep -E "Error|Traceback|assert" -m 20 "$scratch/$target/log" || true
        mkdir -p "fuzz/crashes/$target"
        for artifact in "$scratch/$target/artifacts/"*; do
            [ -e "$artifact" ] || continue
            cp "$artifact" "fuzz/crashes/$target/"
            echo "   input $(basename "$artifact"): $(od -An -tx1 -v "$artifact" | tr -d ' \n' | head -c 400)"
        done
    fi
done
exit $failed
