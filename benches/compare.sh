#!/usr/bin/env bash
# Side-by-side benchmarks: the engine (`worker bench`) against PyTorch eager CPU
# (benches/torch_bench.py), same cases, run back to back, printed as a markdown table with the
# speed-up torch ms / rust ms (> 1: the engine is faster).
#
# Usage: benches/compare.sh [CASE_FILTER...]
#   CASE_FILTER: only rows whose label (dsm, ssm, ssm_vr, ism, sample, ism:D, image_mlp, unet,
#   image_mlp_sample, unet_sample) matches one of the arguments, e.g.
#   `benches/compare.sh dsm ism:784` or `benches/compare.sh image_mlp unet`.
# Environment:
#   CARGO_TARGET_DIR  where the worker is built (default $HOME/.cache/scoresweep-target)
#   TORCH_PYTHON      interpreter with torch installed (default /tmp/torchvenv/bin/python);
#                     if torch is not importable the PyTorch side is skipped ("n/a")
#   REPEAT            runs per side and case, the fastest kept (default 1; use 2 on a busy box)
#   RAW               if set, a file that receives every JSON line
#   NO_BUILD          if set, skip `cargo build` and use the existing binary
#
# PyTorch is a benchmark-only tool: nothing in the product depends on it.
set -u

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/scoresweep-target}"
TORCH_PYTHON="${TORCH_PYTHON:-/tmp/torchvenv/bin/python}"
REPEAT="${REPEAT:-1}"
worker="$CARGO_TARGET_DIR/release/worker"

# --- Rust side -------------------------------------------------------------------------------
rust_ok=1
if [ -z "${NO_BUILD:-}" ]; then
    echo "building: cargo build --release -p worker (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)" >&2
    if ! (cd "$root" && cargo build --release -p worker >&2); then
        echo "warning: cargo build failed; the Rust side will read n/a" >&2
        rust_ok=0
    fi
fi
if [ "$rust_ok" = 1 ] && ! "$worker" bench --help >/dev/null 2>&1; then
    echo "warning: '$worker bench' is not available; the Rust side will read n/a" >&2
    rust_ok=0
fi

# --- PyTorch side ----------------------------------------------------------------------------
torch_ok=1
if ! "$TORCH_PYTHON" -c 'import torch' >/dev/null 2>&1; then
    echo "note: torch is not importable with TORCH_PYTHON=$TORCH_PYTHON; skipping the PyTorch side." >&2
    echo "      To enable it: python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy" >&2
    torch_ok=0
else
    echo "torch: $("$TORCH_PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null) ($TORCH_PYTHON)" >&2
fi

# field NAME JSON_LINE -> value or empty
field() { printf '%s\n' "$2" | sed -n "s/.*\"$1\":\([0-9.eE+-]*\).*/\1/p"; }

# run_side SIDE ARGS... -> prints the fastest JSON line of REPEAT runs (empty on failure)
run_side() {
    local side="$1"; shift
    local best="" best_ms="" line ms i
    for ((i = 0; i < REPEAT; i++)); do
        if [ "$side" = rust ]; then
            line="$("$worker" bench "$@" 2>/dev/null | grep '^{' | tail -n 1)"
        else
            line="$("$TORCH_PYTHON" "$here/torch_bench.py" "$@" 2>/dev/null | grep '^{' | tail -n 1)"
        fi
        ms="$(field ms "$line")"
        [ -z "$ms" ] && { echo "warning: $side $* failed" >&2; continue; }
        [ -n "${RAW:-}" ] && printf '%s\n' "$line" >>"$RAW"
        if [ -z "$best_ms" ] || awk -v a="$ms" -v b="$best_ms" 'BEGIN { exit !(a < b) }'; then
            best="$line"; best_ms="$ms"
        fi
    done
    printf '%s\n' "$best"
}

fmt_ms() { [ -z "$1" ] && { echo "n/a"; return; }; awk -v v="$1" 'BEGIN { if (v >= 1000) printf "%.0f", v; else if (v >= 10) printf "%.1f", v; else printf "%.2f", v }'; }
fmt_mib() { [ -z "$1" ] && { echo "n/a"; return; }; echo "$1"; }

# case threads dim iters
rows=(
    "dsm 1 2 20"
    "dsm 2 2 20"
    "ssm 1 2 20"
    "ssm 2 2 20"
    "ssm_vr 1 2 20"
    "ssm_vr 2 2 20"
    "ism 1 2 20"
    "ism 1 16 20"
    "ism 1 64 20"
    "ism 1 256 3"
    "ism 1 784 3"
    "sample 1 2 1"
    "image_mlp 1 784 20"
    "image_mlp 2 784 20"
    "unet 1 784 3"
    "unet 2 784 3"
    "image_mlp_sample 2 784 1"
    "unet_sample 2 784 1"
)

selected() {
    [ $# -le 1 ] && return 0
    local label="$1"; shift
    local f
    for f in "$@"; do
        case "$f" in
            "$label" | "${label%%:*}") return 0 ;;
        esac
    done
    return 1
}

echo "| case | threads | D | rust ms | torch ms | speed-up (torch/rust) | rust peak MiB | torch peak MiB | torch peak − import MiB |"
echo "|---|---|---|---|---|---|---|---|---|"
for row in "${rows[@]}"; do
    read -r case threads dim iters <<<"$row"
    label="$case"; [ "$case" = ism ] && label="ism:$dim"
    selected "$label" "$@" || continue
    args=(--case "$case" --threads "$threads" --iters "$iters")
    [ "$case" = ism ] && args+=(--dim "$dim")
    echo "running $label, $threads thread(s)..." >&2
    r=""; t=""
    [ "$rust_ok" = 1 ] && r="$(run_side rust "${args[@]}")"
    [ "$torch_ok" = 1 ] && t="$(run_side torch "${args[@]}")"
    rms="$(field ms "$r")"; tms="$(field ms "$t")"
    rpk="$(field peak_mib "$r")"; tpk="$(field peak_mib "$t")"; tbase="$(field base_mib "$t")"
    ratio="n/a"
    if [ -n "$rms" ] && [ -n "$tms" ]; then
        ratio="$(awk -v t="$tms" -v r="$rms" 'BEGIN { if (r > 0) printf "%.2f×", t / r; else print "n/a" }')"
    fi
    delta="n/a"
    [ -n "$tpk" ] && [ -n "$tbase" ] && delta="$(awk -v p="$tpk" -v b="$tbase" 'BEGIN { printf "%.1f", p - b }')"
    D="$dim"; case "$case" in ism | image_* | unet*) ;; *) D=2 ;; esac
    echo "| $case | $threads | $D | $(fmt_ms "$rms") | $(fmt_ms "$tms") | $ratio | $(fmt_mib "$rpk") | $(fmt_mib "$tpk") | $delta |"
done
