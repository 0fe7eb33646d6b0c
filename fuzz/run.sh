#!/usr/bin/env bash
# Builds every fuzz target, then runs each in turn for a bounded time.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]      (default 60)
#
# Exits non-zero if any target crashes; the crashing input is kept under
# fuzz/artifacts/<target>/ and printed in hex.
#
# Works on a stable toolchain. The default build uses AddressSanitizer, as
# cargo-fuzz does: its flag is nightly-only, so RUSTC_BOOTSTRAP=1 is set to let
# stable rustc accept it. Besides memory errors, its memcmp hooks let libFuzzer
# find compared strings such as `.haul`, which a build without it never found.
# SANITIZER=none builds with no nightly flag at all and runs 3-7x faster.
# Needs cargo-fuzz: `cargo install cargo-fuzz --locked`. Honours
# CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
sanitizer="${SANITIZER:-address}"
if [[ "$sanitizer" != none ]]; then
    export RUSTC_BOOTSTRAP=1
fi

command -v cargo-fuzz >/dev/null || {
    echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 2
}

cargo fuzz build --sanitizer "$sanitizer"

failed=()
for target in $(cargo fuzz list); do
    echo "=== $target: ${seconds}s"
    mkdir -p "corpus/$target" "artifacts/$target"
    before="$(ls "artifacts/$target")"
    # -max_len above 4096 so the decoders' length limits (a 4104-byte seed
    # header, a 4096-byte offer path) can be reached and crossed.
    if ! cargo fuzz run --sanitizer "$sanitizer" "$target" -- \
        -max_total_time="$seconds" -max_len=8192 -print_final_stats=1; then
        failed+=("$target")
    fi
    for artifact in artifacts/"$target"/*; do
        [[ -f "$artifact" ]] || continue
        grep -qxF "$(basename "$artifact")" <<<"$before" && continue
        echo "--- new artifact $artifact:"
        od -An -v -tx1 "$artifact" | tr -d ' \n'
        echo
    done
done

if ((${#failed[@]})); then
    echo "fuzzing found crashes in: ${failed[*]}" >&2
    exit 1
fi
echo "no crash in $(cargo fuzz list | wc -l) targets, ${seconds}s each"
