"""How far PyTorch's own CPU autocast bf16 gradient strays from its f32 gradient at the same
weights: the reference for bt-train's modecheck bounds on bf16 (issue 22).

For each seed: the demo model as `bt_train::modecheck::check_config` builds it (CIFAR ResNet-18
width 8, projector 256-256-256, batch 32, LAMB lr 2e-2 constant) in plain PyTorch
(`bench/demo_torch.py`'s modules), on the twin views our pipeline dumps. At every step, at the
same f32 weights: the f32 gradient g and the `torch.autocast("cpu", bfloat16)` gradient h of
the loss; beta = <h, g> / <g, g>, cos = <h, g> / |h||g|, loss relative difference; then one
f32 LAMB step (teacher forcing, as modecheck::trace). Prints per seed the max |beta - 1|, the
min cosine and the max loss difference over the steps, as the Rust test prints them.

    cargo run --release -p bt-data --example dump_twins -- /tmp/twins32 demo data.batch_size=32 run.epochs=1
    .venv/bin/python bench/bf16_grad_torch.py /tmp/twins32 --seeds 5 6 7 8 9 --steps 10
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from timm.optim import Lamb

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demo_torch import BarlowTwins  # noqa: E402


def flat_grad(model):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).double().flatten()
                      for p in model.parameters()])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dump")
    ap.add_argument("--seeds", type=int, nargs="+", default=[5, 6, 7, 8, 9])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--proj", default="256-256-256")
    a = ap.parse_args()
    torch.set_num_threads(2)
    meta = json.load(open(os.path.join(a.dump, "meta.json")))
    sizes, s = meta["batch_sizes"], meta["image_size"]
    views = np.fromfile(os.path.join(a.dump, "epoch_0.f32"), dtype="<f4")
    for seed in a.seeds:
        torch.manual_seed(seed)
        model = BarlowTwins(a.width, [int(x) for x in a.proj.split("-")], 0.0051)
        opt = Lamb(model.parameters(), lr=2e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
                   max_grad_norm=None, always_adapt=True)
        worst_beta, min_cos, max_loss, betas = 0.0, 1.0, 0.0, []
        off = 0
        for b in range(min(a.steps, len(sizes))):
            n = sizes[b] * 3 * s * s
            y1 = torch.from_numpy(views[off: off + n]).view(-1, 3, s, s)
            y2 = torch.from_numpy(views[off + n: off + 2 * n]).view(-1, 3, s, s)
            off += 2 * n
            state = {k: v.clone() for k, v in model.state_dict().items()}
            with torch.autocast("cpu", dtype=torch.bfloat16):
                l16 = model(y1, y2)[0]
            opt.zero_grad()
            l16.backward()
            h = flat_grad(model)
            model.load_state_dict(state)  # the bf16 pass moved the BN running statistics
            l32 = model(y1, y2)[0]
            opt.zero_grad()
            l32.backward()
            g = flat_grad(model)
            beta = (h @ g / (g @ g)).item()
            cos = (h @ g / (h.norm() * g.norm())).item()
            betas.append(round(beta, 3))
            worst_beta = max(worst_beta, abs(beta - 1))
            min_cos = min(min_cos, cos)
            max_loss = max(max_loss, abs(l16.item() - l32.item()) / abs(l32.item()))
            opt.step()
        print(f"seed {seed}: torch autocast bf16: max loss rel {max_loss:.2e}, max |β-1| {worst_beta:.2e}, "
              f"min cos {min_cos:.4f}; β per step {betas}", flush=True)


if __name__ == "__main__":
    main()
