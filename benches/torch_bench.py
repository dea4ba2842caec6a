#!/usr/bin/env python3
"""PyTorch eager (CPU) side of the engine-vs-PyTorch benchmarks (issue 4).

Mirrors `worker bench --case CASE --threads T [--dim D] [--iters N]` (engine/src/bench.rs): same
cases, same shapes, same JSON line on stdout, with "side":"torch". PyTorch is used for benchmarks
only and is never a dependency of the product; run it from a separate venv, e.g.

    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch numpy
    /tmp/torchvenv/bin/python benches/torch_bench.py --case dsm --threads 1

Cases (float32, nn.Linear default init, Adam lr 1e-3, no weight decay):
  dsm     MLP 2→128→128→2 SiLU, batch 1024, σ = 0.5, loss mean ‖σ S(x+σε) + ε‖², one Adam step.
  ssm     same net, batch 1024, one Rademacher probe v per point, vᵀJv by double backward,
          loss mean((vᵀS)² + 2 vᵀJv), one Adam step.
  ssm_vr  as ssm with loss mean(‖S‖² + 2 vᵀJv).
  ism     MLP D→256→256→D SiLU, batch 128, exact trace by one backward per dimension,
          loss mean(‖S‖² + 2 tr J), one Adam step.
  sample  annealed Langevin, noise-conditional net [x, log σ] 3→128→128→2 (random init), 10k
          points uniform in [−8, 8]², 10 geometric levels 20 → 1, 100 steps per level,
          α_i = 0.1 σ_i²/σ_L², under no_grad; one iteration is the whole run.

Data: the ncsn2d mixture 0.8·N((5,5), I) + 0.2·N((−5,−5), I) for D = 2, N(0, I) otherwise, drawn
fresh every step *inside* the timed iteration (as the Rust side does; it costs microseconds).

Timing: warm-up (3 iterations; 1 for sample), then at least --iters iterations and at least 2 s
(stopping at 10·iters once 2 s have passed), median ms per iteration. peak_mib is
ru_maxrss of the process at exit (each case runs in its own process); base_mib is the peak after
importing torch and setting up, before the first iteration (the interpreter + libtorch floor).
"""

import argparse
import json
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn


def rss_mib():
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def mlp(d_in, hidden, d_out):
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.SiLU(),
        nn.Linear(hidden, hidden), nn.SiLU(),
        nn.Linear(hidden, d_out),
    )


def sample_data(n, dim):
    if dim == 2:
        first = torch.rand(n, 1) < 0.8
        mean = torch.where(first, torch.tensor(5.0), torch.tensor(-5.0))
        return mean + torch.randn(n, 2)
    return torch.randn(n, dim)


def median_ms(step, warmup, iters):
    for _ in range(warmup):
        step()
    times = []
    start = time.perf_counter()
    while len(times) < iters or time.perf_counter() - start < 2.0:
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1000.0)
        if len(times) >= 10 * max(iters, 1) and time.perf_counter() - start >= 2.0:
            break
    return statistics.median(times)


def train_step_fn(case, dim):
    """Returns (step, batch) for the training cases."""
    if case == "ism":
        hidden, batch = 256, 128
    else:
        hidden, batch = 128, 1024
    net = mlp(dim, hidden, dim)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=0.0)

    if case == "dsm":
        sigma = 0.5

        def loss_fn():
            x = sample_data(batch, dim)
            eps = torch.randn_like(x)
            s = net(x + sigma * eps)
            return ((sigma * s + eps) ** 2).sum(1).mean()

    elif case in ("ssm", "ssm_vr"):
        vr = case == "ssm_vr"

        def loss_fn():
            x = sample_data(batch, dim).requires_grad_(True)
            v = torch.randint(0, 2, x.shape, dtype=x.dtype) * 2 - 1
            s = net(x)
            g = torch.autograd.grad((s * v).sum(), x, create_graph=True)[0]
            vjv = (g * v).sum(1)
            first = (s ** 2).sum(1) if vr else (s * v).sum(1) ** 2
            return (first + 2 * vjv).mean()

    elif case == "ism":

        def loss_fn():
            x = sample_data(batch, dim).requires_grad_(True)
            s = net(x)
            tr = torch.zeros(batch)
            for i in range(dim):
                tr = tr + torch.autograd.grad(s[:, i].sum(), x, create_graph=True)[0][:, i]
            return ((s ** 2).sum(1) + 2 * tr).mean()

    else:
        raise ValueError(case)

    def step():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()

    return step, batch


def sample_fn():
    # NCSN's Langevin step x + αS + √(2α)z; ε small enough that the untrained net's chains stay
    # finite (as the engine's case, which stops at the first non-finite value).
    n, levels, steps, eps = 10_000, 10, 100, 1e-4
    net = mlp(3, 128, 2)
    sigmas = [20.0 * (1.0 / 20.0) ** (i / (levels - 1)) for i in range(levels)]
    last = sigmas[-1]

    @torch.no_grad()
    def run():
        x = (torch.rand(n, 2) * 2 - 1) * 8.0
        inp = torch.empty(n, 3)
        for s in sigmas:
            alpha = eps * s * s / (last * last)
            half, noise = alpha, math.sqrt(2.0 * alpha)
            inp[:, 2] = math.log(s)
            for _ in range(steps):
                inp[:, :2] = x
                x = x + half * net(inp) + noise * torch.randn_like(x)
        return x

    return run, n


IMAGE_CASES = ["image_mlp", "unet", "image_mlp_sample", "unet_sample"]


def image_fn(case):
    """The image cases of engine/src/bench.rs on the nets of benches/image_torch.py: fixed images
    in [−1, 1] and labels; σ ~ exp(N(−1.2, 1.2²)) and ε drawn inside each step; EDM's weighted
    loss; AdamW lr 1e-3, no weight decay. Sampling: 18 Heun steps (35 evaluations) under no_grad,
    500 images (MLP) or 50 (U-Net)."""
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    import image_torch as it

    net = it.Unet() if case.startswith("unet") else it.Mlp()
    if case.endswith("sample"):
        n = 50 if case.startswith("unet") else 500
        n_steps, rho, smin, smax = 18, 7.0, 0.002, 80.0
        ts = [(smax ** (1 / rho) + i / (n_steps - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho for i in range(n_steps)] + [0.0]
        labels = torch.arange(n) % 10

        def run():
            with torch.no_grad():
                x = torch.randn(n, 1, 28, 28) * ts[0]
                for i in range(n_steps):
                    t0, t1 = ts[i], ts[i + 1]
                    d = (x - it.denoise(net, x, torch.full((n,), t0), labels)) / t0
                    xn = x + (t1 - t0) * d
                    if t1 > 0:
                        d2 = (xn - it.denoise(net, xn, torch.full((n,), t1), labels)) / t1
                        x = x + (t1 - t0) * (d + d2) / 2
                    else:
                        x = xn
            return x

        return run, n, 784, 1
    batch = 32 if case == "unet" else 128
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    x0 = torch.rand(batch, 1, 28, 28) * 2 - 1
    lab = torch.arange(batch) % 10

    def step():
        sigma = torch.exp(-1.2 + 1.2 * torch.randn(batch))
        y = x0 + sigma[:, None, None, None] * torch.randn_like(x0)
        w = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
        loss = (w * ((it.denoise(net, y, sigma, lab) - x0) ** 2).flatten(1).mean(1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, batch, 784, 3


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", required=True, choices=["dsm", "ssm", "ssm_vr", "ism", "sample", *IMAGE_CASES])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dim", type=int, default=2, help="data dimension (ism only)")
    p.add_argument("--iters", type=int, default=None,
                   help="minimum timed iterations (default 20; 3 for ism with D >= 256; 1 for sample)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(a.seed)

    dim = a.dim if a.case == "ism" else 2
    if a.iters is not None:
        iters = a.iters
    elif a.case == "sample":
        iters = 1
    elif a.case == "ism" and dim >= 256:
        iters = 3
    else:
        iters = 20

    if a.case in IMAGE_CASES:
        step, batch, dim, warmup = image_fn(a.case)
        if a.iters is None:
            iters = 1 if a.case.endswith("sample") else (5 if a.case == "unet" else 20)
    elif a.case == "sample":
        step, batch = sample_fn()
        warmup = 1
    else:
        step, batch = train_step_fn(a.case, dim)
        warmup = 3
    base = rss_mib()
    ms = median_ms(step, warmup, iters)
    out = {
        "side": "torch", "case": a.case, "threads": a.threads, "dim": dim if a.case not in IMAGE_CASES else 784, "batch": batch,
        "ms": round(ms, 4), "peak_mib": round(rss_mib(), 1), "base_mib": round(base, 1),
        "torch": torch.__version__,
    }
    print(json.dumps(out, separators=(",", ":")))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
