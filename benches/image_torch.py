"""PyTorch eager replicas of scoresweep's image denoisers (engine/src/images/unet.rs and mlp.rs,
EDM preconditioning), for side-by-side speed figures only (never a product dependency).

Usage: python3 benches/image_torch.py {unet,mlp} DEVICE [--steps N] [--batch B] [--sample N]
Prints one JSON line: training images/s over N steps of EDM's loss (AdamW) after warm-up, and
the seconds to sample `--sample` images with 18 Heun steps (35 evaluations), chunks of 500.
"""
import argparse, json, math, time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Res(nn.Module):
    def __init__(s, cin, cout, emb, g):
        super().__init__()
        s.n1, s.c1 = nn.GroupNorm(g, cin), nn.Conv2d(cin, cout, 3, padding=1)
        s.e = nn.Linear(emb, cout)
        s.n2, s.c2 = nn.GroupNorm(g, cout), nn.Conv2d(cout, cout, 3, padding=1)
        s.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(s, x, e):
        h = s.c1(F.silu(s.n1(x))) + s.e(e)[:, :, None, None]
        h = s.c2(F.silu(s.n2(h)))
        return (h + (s.skip(x) if s.skip is not None else x)) / math.sqrt(2)


def fourier(c_noise, k):
    f = torch.exp(-torch.arange(k, device=c_noise.device) / k * math.log(10000.0))
    a = c_noise[:, None] * f[None]
    return torch.cat([a.sin(), a.cos()], 1)


class Unet(nn.Module):
    def __init__(s, c=40, mults=(1, 2, 2), blocks=1, emb=160, g=8):
        super().__init__()
        s.c, s.half = c, c // 2
        s.conv_in = nn.Conv2d(1, c, 3, padding=1)
        s.e1, s.e2 = nn.Linear(2 * s.half, emb), nn.Linear(emb, emb)
        s.cls = nn.Embedding(11, emb)
        s.down, ch, skips = nn.ModuleList(), c, []
        for i, m in enumerate(mults):
            bl = nn.ModuleList()
            for _ in range(blocks):
                bl.append(Res(ch, c * m, emb, g)); ch = c * m
            skips.append(ch)
            s.down.append(nn.ModuleList([bl, nn.Conv2d(ch, ch, 3, stride=2, padding=1) if i + 1 < len(mults) else nn.Identity()]))
        s.mid = nn.ModuleList([Res(ch, ch, emb, g), Res(ch, ch, emb, g)])
        s.up = nn.ModuleList()
        for i in reversed(range(len(mults))):
            bl = nn.ModuleList()
            for b in range(blocks):
                bl.append(Res(ch + skips[i] if b == 0 else ch, c * mults[i], emb, g)); ch = c * mults[i]
            s.up.append(nn.ModuleList([bl, nn.Conv2d(ch, ch, 3, padding=1) if i > 0 else nn.Identity()]))
        s.norm, s.out = nn.GroupNorm(g, ch), nn.Conv2d(ch, 1, 3, padding=1)

    def forward(s, x, c_noise, labels):
        e = F.silu(s.e2(F.silu(s.e1(fourier(c_noise, s.half)))) + s.cls(labels))
        h, hs = s.conv_in(x), []
        for bl, ds in s.down:
            for b in bl:
                h = b(h, e)
            hs.append(h); h = ds(h)
        for b in s.mid:
            h = b(h, e)
        for bl, us in s.up:
            skip = hs.pop()
            for k, b in enumerate(bl):
                h = b(torch.cat([h, skip], 1), e) if k == 0 else b(h, e)
            if not isinstance(us, nn.Identity):
                h = us(F.interpolate(h, size=hs[-1].shape[-2:], mode="nearest"))
        return s.out(F.silu(s.norm(h)))


class Mlp(nn.Module):
    def __init__(s, hidden=1024, depth=2, emb=64, dim=784):
        super().__init__()
        s.half = emb // 2
        s.cls = nn.Embedding(11, emb)
        w, layers = dim + 2 * s.half + emb, []
        for _ in range(depth):
            layers.append(nn.Linear(w, hidden)); w = hidden
        s.layers, s.out = nn.ModuleList(layers), nn.Linear(w, dim)

    def forward(s, x, c_noise, labels):
        h = torch.cat([x.flatten(1), fourier(c_noise, s.half), s.cls(labels)], 1)
        for l in s.layers:
            h = F.silu(l(h))
        return s.out(h).view_as(x)


def denoise(net, x, sigma, labels, sd=0.5):
    s = sigma[:, None, None, None]
    d = s * s + sd * sd
    return sd * sd / d * x + s * sd / d.sqrt() * net(x / d.sqrt(), sigma.log() / 4, labels)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model", choices=["unet", "mlp"])
    p.add_argument("device")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--sample", type=int, default=1000)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    net = (Unet() if a.model == "unet" else Mlp()).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    x0 = torch.rand(a.batch, 1, 28, 28, device=dev) * 2 - 1
    lab = torch.randint(0, 10, (a.batch,), device=dev)

    def step():
        sigma = torch.exp(-1.2 + 1.2 * torch.randn(a.batch, device=dev))
        y = x0 + sigma[:, None, None, None] * torch.randn_like(x0)
        w = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
        loss = (w * ((denoise(net, y, sigma, lab) - x0) ** 2).flatten(1).mean(1)).mean()
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()

    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    for _ in range(5):
        step()
    sync(); t = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync(); train = time.perf_counter() - t

    n_steps, rho, smin, smax = 18, 7.0, 0.002, 80.0
    ts = [(smax ** (1 / rho) + i / (n_steps - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho for i in range(n_steps)] + [0.0]
    sync(); t = time.perf_counter()
    with torch.no_grad():
        for start in range(0, a.sample, 500):
            m = min(500, a.sample - start)
            labels = torch.arange(m, device=dev) % 10
            x = torch.randn(m, 1, 28, 28, device=dev) * ts[0]
            for i in range(n_steps):
                t0, t1 = ts[i], ts[i + 1]
                d = (x - denoise(net, x, torch.full((m,), t0, device=dev), labels)) / t0
                xn = x + (t1 - t0) * d
                if t1 > 0:
                    d2 = (xn - denoise(net, xn, torch.full((m,), t1, device=dev), labels)) / t1
                    x = x + (t1 - t0) * (d + d2) / 2
                else:
                    x = xn
    sync(); sample = time.perf_counter() - t
    print(json.dumps({"impl": "torch", "model": a.model, "device": a.device, "params": sum(q.numel() for q in net.parameters()),
                      "batch": a.batch, "train_images_per_second": a.steps * a.batch / train, "sample_images": a.sample, "sample_seconds": sample}))


if __name__ == "__main__":
    main()
