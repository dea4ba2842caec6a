#!/usr/bin/env bash
# The GPU worker on a GPU machine (BENCHMARKS.md, "GPU worker"): driver and CUDA libraries,
# `worker devices`, the toy trial on cuda and cpu side by side, and DSM MLP training throughput
# (cuda: candle autograd; cpu: the hand-derived step). Usage: benches/gpu/run.sh WORKER [OUTDIR]
# with WORKER built by scripts/cuda-build.sh; the CUDA 13 libraries are looked for in the
# Python packages (e.g. a PyTorch cu130 installation's nvidia-* wheels) unless LD_LIBRARY_PATH
# already has them.
set -uo pipefail
W=$(realpath "${1:?usage: benches/gpu/run.sh WORKER [OUTDIR]}")
here=$(cd "$(dirname "$0")" && pwd)
out=${2:-$(mktemp -d)}
mkdir -p "$out" && cd "$out"
export RUST_BACKTRACE=0
echo "== nvidia-smi"; nvidia-smi --query-gpu=index,name,memory.total,driver_version,compute_cap --format=csv
SP=$(python3 -c 'import site; print(" ".join(site.getsitepackages() + [site.getusersitepackages()]))' 2>/dev/null); D=""
for l in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcudart.so.13; do
    f=$(find $SP /usr/local /usr/lib -name "$l" 2>/dev/null | head -1); echo "$l -> ${f:-not found}"
    [ -n "$f" ] && case ":$D:" in *":$(dirname "$f"):"*) ;; *) D="$D:$(dirname "$f")" ;; esac
done
export LD_LIBRARY_PATH="${D#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
ldd "$W" | grep -E 'libcu|not found'
echo "== worker devices"; "$W" devices
for dev in cuda cpu; do
    echo "== toy trial on $dev"
    s=$(date +%s.%N)
    "$W" trial "$here/toy.toml" --out "out-toy-$dev" --device "$dev" 2>&1 | grep -v '^\[' | head -20
    echo "wall $(python3 -c "print(round($(date +%s.%N) - $s, 2))") s"
done
python3 - <<'PY'
import json
a, b = (json.load(open(f"out-toy-{d}/metrics.json")) for d in ("cuda", "cpu"))
print(f"{'metric':22s} {'cuda':>14s} {'cpu':>14s} {'rel':>9s}")
for k in a:
    va, vb = a[k], b.get(k)
    if isinstance(va, (int, float)) and isinstance(vb, (int, float)):
        print(f"{k:22s} {va:14.6g} {vb:14.6g} {abs(va - vb) / max(abs(va), abs(vb), 1e-12):9.2e}")
    else:
        print(f"{k:22s} {str(va):>14s} {str(vb):>14s}")
PY
echo "== DSM MLP training throughput"
for t in t_h128_b256 t_h512_b4096 t_h1024_b16384; do
    for dev in cuda cpu; do
        "$W" trial "$here/$t.toml" --out "out-$t-$dev" --device "$dev" >"log-$t-$dev" 2>&1 || { echo "$t $dev FAILED"; head -c 1500 "log-$t-$dev"; continue; }
        python3 -c "import json; m = json.load(open('out-$t-$dev/metrics.json')); print('$t $dev', m['trainer'], 'steps/s %.1f' % (m['steps_done'] / m['train_seconds']), 'eval_s %.2f' % m['eval_seconds'], 'l_dsm %.6g' % m['l_dsm'])"
    done
done
echo "outputs in $out"
