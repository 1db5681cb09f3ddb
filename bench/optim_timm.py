"""One LAMB step with timm's `Lamb` on given parameter shapes (peer of `bt-cli bench optim`).

    .venv/bin/python bench/optim_timm.py --shapes shapes.json [--iters 3] [--threads N]

`shapes.json` is a list of [name, [dims...]] (bt-cli writes it from the model's VarStore).
Settings match tfa LAMB as bt-optim runs it: weight_decay 0, no global grad-norm clipping
(timm's default clips at 1.0), trust ratio on every tensor (`always_adapt=True`; timm skips it
for weight_decay 0 otherwise). Both timm code paths are timed: `foreach=True` (multi-tensor
`torch._foreach_*` ops) and `foreach=False` (a Python loop over tensors).
Prints human lines; the last line is `timm_lamb_step_ms=<foreach median>`.
"""
import argparse
import json
import statistics
import time

import torch
from timm.optim import Lamb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", required=True)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    shapes = json.load(open(a.shapes))
    torch.manual_seed(0)
    params = []
    for _, dims in shapes:
        p = torch.nn.Parameter(torch.randn(dims) * 0.02)
        p.grad = torch.randn(dims)
        params.append(p)
    n = sum(p.numel() for p in params)
    print(f"timm {__import__('timm').__version__} torch {torch.__version__} threads={torch.get_num_threads()} "
          f"tensors={len(params)} params={n}")
    res = {}
    for foreach in (True, False):
        opt = Lamb(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, max_grad_norm=None,
                   always_adapt=True, foreach=foreach)
        opt.step()  # warm-up (allocates the moments)
        ts = []
        for _ in range(a.iters):
            t = time.perf_counter()
            opt.step()
            ts.append(time.perf_counter() - t)
        res[foreach] = statistics.median(ts) * 1e3
        print(f"timm Lamb foreach={foreach}: {res[foreach]:.1f} ms/step (median of {a.iters})")
        del opt
    print(f"timm_lamb_loop_ms={res[False]:.3f}")
    print(f"timm_lamb_step_ms={res[True]:.3f}")


if __name__ == "__main__":
    main()
