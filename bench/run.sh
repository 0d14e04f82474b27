#!/usr/bin/env bash
# The benchmark: builds release binaries, generates the data, runs batchsync, the Python baseline
# and the emulator, and writes the table to docs/BENCHMARKS.md and bench/results/latest.json.
#
#   bench/run.sh [--rows 1000000] [--big 10000000] [--skip-big] [--repeat 3]
#                [--big-repeat 3] [--steady 10] [--limits-seconds 60] [--skip-limits]
#                [--no-python] [--no-docs]
#
# Data and state go to bench/out/ (gitignored): about 3 GB with the 10M case. Binaries go to
# $CARGO_TARGET_DIR (default: target/). Needs python3; the Python baseline uses the `blake3`
# package when installed (pip install blake3) and hashlib's blake2b otherwise, and says which.
# The run takes ~7 minutes with --skip-big and ~25-30 minutes without it; on a shared machine the
# figures carry the load average they were taken under.
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
-h | --help)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
esac

target="${CARGO_TARGET_DIR:-$PWD/target}"
echo "bench: building release binaries into $target" >&2
cargo build --release --quiet --bin batchsync --example bench_stages
cargo build --release --quiet --manifest-path bench/gen/Cargo.toml --target-dir "$target/bench-gen"

qsv=()
if command -v qsv >/dev/null; then
    qsv=(--qsv "$(command -v qsv)")
elif [ -x "$target/tools/bin/qsv" ]; then
    qsv=(--qsv "$target/tools/bin/qsv")
fi

exec python3 bench/harness.py \
    --bin "$target/release/batchsync" \
    --gen "$target/bench-gen/release/bench-gen" \
    --stages "$target/release/examples/bench_stages" \
    ${qsv[@]+"${qsv[@]}"} \
    --command "bench/run.sh $*" \
    "$@"
