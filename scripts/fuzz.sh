#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a set time, then minimises its corpus back into
# fuzz/corpus/<target>/ (kept in the repository, small).
#
#   scripts/fuzz.sh [SECONDS-PER-TARGET] [TARGET...]     default: 60 s, every target
#   scripts/fuzz.sh 0 [TARGET...]                        only minimise the corpora again
#
# Needs the nightly toolchain and cargo-fuzz (`cargo +nightly install cargo-fuzz`). The whole
# run (about SECONDS-PER-TARGET x targets, plus minimising) holds /tmp/hvkvm-heavy.lock, so
# fuzzing, benchmarks and Linux boots on a shared machine take turns. Prints per target: time, executions, exec/s, crashes, corpus size. Exits 1 when a
# target crashed (the input is in fuzz/artifacts/<target>/; reproduce it with
# `cargo +nightly fuzz run <target> <file>`).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

SECONDS_PER_TARGET=${1:-60}
shift || true
ALL_TARGETS=(hypercall evmcs payload_elf linux_kernel config_import host_json)
TARGETS=("${@:-${ALL_TARGETS[@]}}")
LOCK=/tmp/hvkvm-heavy.lock

# Longest input per target: the hypercall header and the first 2 KiB of guest RAM (the rest
# reads as zeros); an assist-page head and the 1 KiB of eVMCS fields; small ELF and bzImage
# images (the decoders' size checks do not need large files). Short inputs keep the committed
# corpora small.
max_len() {
    case $1 in
        hypercall) echo 2304 ;;
        evmcs) echo 1280 ;;
        payload_elf | linux_kernel) echo 65536 ;;
        *) echo 4096 ;;
    esac
}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: the nightly toolchain is missing (cargo-fuzz needs it)" >&2
    exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is missing: cargo +nightly install cargo-fuzz" >&2
    exit 2
fi

# HVKVM_HEAVY_LOCK_HELD=1: the caller already holds the lock (e.g. `flock LOCK sh -c '...'`).
if [ "${HVKVM_HEAVY_LOCK_HELD:-0}" != 1 ]; then
    exec 9>"$LOCK"
    if ! flock -n 9; then
        echo "fuzz.sh: waiting for $LOCK (another fuzzing run, benchmark or Linux boot)" >&2
        flock 9
    fi
fi
cargo +nightly fuzz build -O
mkdir -p logs corpus-work
crashed=0
summary=()
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "corpus-work/$t" "artifacts/$t" "regressions/$t"
    cp -n "corpus/$t"/* "corpus-work/$t"/ 2>/dev/null || true
    before=$(find "artifacts/$t" -type f | wc -l)
    log="logs/$t.log"
    execs=- rate=- took=0 rc=0
    bin=target/x86_64-unknown-linux-gnu/release/$t
    # Inputs that once crashed a target (fuzz/regressions/<target>/) must keep passing.
    if compgen -G "regressions/$t/*" >/dev/null; then
        if ! "$bin" regressions/"$t"/* >"logs/$t.regressions.log" 2>&1; then
            crashed=1
            echo "fuzz.sh: $t fails a regression input (see fuzz/logs/$t.regressions.log)" >&2
        fi
    fi
    if [ "$SECONDS_PER_TARGET" -gt 0 ]; then
        echo "fuzz.sh: $t for ${SECONDS_PER_TARGET}s (log: fuzz/$log)" >&2
        # -malloc_limit_mb: no single allocation may approach what a 16 MiB guest justifies.
        set +e
        cargo +nightly fuzz run -O "$t" "corpus-work/$t" "regressions/$t" -- \
            -max_total_time="$SECONDS_PER_TARGET" -max_len="$(max_len "$t")" \
            -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=256 -print_final_stats=1 \
            >"$log" 2>&1
        rc=$?
        set -e
        # (`|| true`: a grep without a match must not end the script under `set -e`.)
        execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
        rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)
        # How long it really ran (a crash ends the run early and prints no "Done").
        took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' | tail -1 || true)
    fi
    after=$(find "artifacts/$t" -type f | wc -l)
    if [ "$rc" -ne 0 ] || [ "$after" -gt "$before" ]; then
        crashed=1
        echo "fuzz.sh: $t FAILED (exit $rc); new artifacts in fuzz/artifacts/$t:" >&2
        grep -m3 -E 'ERROR|panicked|SUMMARY' "$log" >&2 || true
    fi
    # Minimise: a set cover of every input's edge coverage (smallest inputs first; hit counts
    # ignored, which keeps the set small) replaces the committed corpus; the working corpus
    # keeps everything for the next run.
    rm -rf "corpus-new/$t" && mkdir -p "corpus-new/$t"
    if "$bin" -set_cover_merge=1 -use_counters=0 -max_len="$(max_len "$t")" "corpus-new/$t" \
        "corpus/$t" "corpus-work/$t" >"logs/$t.merge.log" 2>&1; then
        rm -rf "corpus/$t" && mv "corpus-new/$t" "corpus/$t"
    else
        echo "fuzz.sh: minimising $t failed (see fuzz/logs/$t.merge.log)" >&2
    fi
    files=$(find "corpus/$t" -type f | wc -l)
    size=$(($(du -sb "corpus/$t" | cut -f1) / 1024))
    summary+=("$(printf '%-14s %6ss %12s %8s %8s %6s files %6s KiB' \
        "$t" "${took:-?}" "${execs:-?}" "${rate:-?}" "$((after - before))" "$files" "$size")")
done
printf '%-14s %7s %12s %8s %8s %12s %10s\n' target time execs exec/s crashes corpus ""
printf '%s\n' "${summary[@]}"
exit "$crashed"
