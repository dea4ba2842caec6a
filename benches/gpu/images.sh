#!/usr/bin/env bash
# Image trials on a GPU machine (BENCHMARKS.md, "Digits on the GPU"): the U-Net on MNIST with
# the CUDA worker (xz-compressed at .gpu/worker.xz, data in .gpu/mnist), 1800 steps at batch
# 128, then 10,000 guided samples; PyTorch eager's figures come from
# `python3 benches/image_torch.py {unet,mlp} cuda --steps 200 --batch 128 --sample 10000`.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
xz -dc .gpu/worker.xz > /tmp/worker && chmod +x /tmp/worker
D=$(python3 -c 'import nvidia,os;print(os.path.join(os.path.dirname(nvidia.__file__),"cu13","lib"))' 2>/dev/null)
[ -d "$D" ] || D=$(dirname "$(find / -name libcublas.so.13 2>/dev/null | head -1)")
export LD_LIBRARY_PATH="$D:${LD_LIBRARY_PATH:-}" RUST_BACKTRACE=0
t0=$(date +%s)
sed -e "s/^steps = 60/steps = 1800/" -e "s/^eval_every = 60/eval_every = 450/" -e 's/^n = 100$/n = 10000/' -e "s/^kind = \"heun\"/kind = \"heun\"\nguidance = 1.0/" benches/gpu/unet_mnist.toml > /tmp/unet_main.toml
timeout 420 /tmp/worker trial /tmp/unet_main.toml --out $OUT/main --device cuda > $OUT/main.log 2>&1 || { echo "main FAILED"; grep -v '^\[' $OUT/main.log | head -8; }
tr '\r' '\n' < $OUT/main.log | grep "^\[" | grep eval_loss | tail -5
nvidia-smi --query-gpu=memory.used --format=csv,noheader
rm -f $OUT/main/samples.csv $OUT/main/model.safetensors
cat $OUT/main/metrics.json
echo "total $(( $(date +%s) - t0 )) s"
