"""The `demo` recipe as a plain PyTorch loop, on exactly the views our pipeline produces.

Issue 22's question "recipe or bug?": if this loop (torchvision-style CIFAR ResNet-18, the
official Barlow Twins loss, timm's LAMB, the same warmup + cosine schedule) collapses on the
same views where `bt-cli` collapses, the recipe/data is at fault; if it learns, our code is.

    cargo run --release -p bt-data --example dump_twins -- /tmp/twins demo run.seed=8
    .venv/bin/python bench/demo_torch.py /tmp/twins --seed 8 [--bf16] [--width 8] [--lr 1e-2]

Prints per-epoch loss terms and, at the end, kNN top-1 (k=200, cosine, temperature 0.1,
weighted votes as in bt-train) of the pretrained and the random-init encoder, on the dumped
train/test images (no augmentation), and `result knn_pretrained=.. knn_random=.. seconds=..`.
"""

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import Lamb


class Block(nn.Module):
    def __init__(self, c_in, c, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.downsample = None
        if stride != 1 or c_in != c:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class CifarResNet18(nn.Module):
    """torchvision's resnet18 with the CIFAR stem (3x3/1 conv, no max-pool), fc removed."""

    def __init__(self, width):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, c_in = [], width
        for i in range(4):
            c = width << i
            layers.append(nn.Sequential(Block(c_in, c, 1 if i == 0 else 2), Block(c, c, 1)))
            c_in = c
        self.layers = nn.Sequential(*layers)
        self.features = c_in
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return torch.flatten(F.adaptive_avg_pool2d(self.layers(x), 1), 1)


class BarlowTwins(nn.Module):
    """facebookresearch/barlowtwins main.py's module (projector + loss)."""

    def __init__(self, width, sizes, lambd):
        super().__init__()
        self.backbone = CifarResNet18(width)
        sizes = [self.backbone.features] + sizes
        layers = []
        for i in range(len(sizes) - 2):
            layers += [nn.Linear(sizes[i], sizes[i + 1], bias=False), nn.BatchNorm1d(sizes[i + 1]), nn.ReLU(True)]
        layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
        self.projector = nn.Sequential(*layers)
        self.bn = nn.BatchNorm1d(sizes[-1], affine=False)
        self.lambd = lambd

    def forward(self, y1, y2):
        z1 = self.projector(self.backbone(y1))
        z2 = self.projector(self.backbone(y2))
        c = self.bn(z1.float()).T @ self.bn(z2.float())
        c.div_(y1.shape[0])
        on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
        off = c.flatten()[:-1].view(c.shape[0] - 1, c.shape[0] + 1)[:, 1:].flatten()
        off_diag = off.pow(2).sum()
        return on_diag + self.lambd * off_diag, on_diag, off_diag


def features(backbone, images, mean, std, bs=500):
    backbone.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), bs):
            x = torch.from_numpy(images[i : i + bs]).float().div_(255.0)
            x = (x - mean) / std
            out.append(backbone(x))
    backbone.train()
    return torch.cat(out)


def knn(train_f, train_y, test_f, test_y, k=200, t=0.1, classes=10):
    train_f, test_f = F.normalize(train_f, dim=1), F.normalize(test_f, dim=1)
    sim = test_f @ train_f.T
    w, idx = sim.topk(k, dim=1)
    w = (w / t).exp()
    votes = torch.zeros(len(test_f), classes).scatter_add_(1, train_y[idx], w)
    return (votes.argmax(1) == test_y).float().mean().item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dump")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--proj", default="512-512-512")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--lambd", type=float, default=0.0051)
    ap.add_argument("--warmup-epochs", type=float, default=1.0)
    ap.add_argument("--final-fraction", type=float, default=0.01)
    ap.add_argument("--bf16", action="store_true", help="CPU autocast bf16 for the forward")
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    meta = json.load(open(os.path.join(a.dump, "meta.json")))
    sizes, s = meta["batch_sizes"], meta["image_size"]
    nb = len(sizes)
    # Empty mean/std: no normalization (bt-config's default for CIFAR-10 and synthetic data).
    mean = torch.tensor(meta["mean"] or [0.0, 0.0, 0.0]).view(1, 3, 1, 1).float()
    std = torch.tensor(meta["std"] or [1.0, 1.0, 1.0]).view(1, 3, 1, 1).float()
    model = BarlowTwins(a.width, [int(x) for x in a.proj.split("-")], a.lambd)
    # tfa.optimizers.LAMB: no weight decay, trust ratio on every tensor, no gradient clipping.
    opt = Lamb(model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
               max_grad_norm=None, always_adapt=True)
    load = lambda name, n, dt: np.fromfile(os.path.join(a.dump, name), dtype=dt)
    tr_x = load("train_u8.bin", 0, np.uint8).reshape(-1, 3, s, s)
    tr_y = torch.from_numpy(load("train_labels.bin", 0, np.uint8).astype(np.int64))
    te_x = load("test_u8.bin", 0, np.uint8).reshape(-1, 3, s, s)
    te_y = torch.from_numpy(load("test_labels.bin", 0, np.uint8).astype(np.int64))
    random_bb = CifarResNet18(a.width)
    random_bb.load_state_dict(model.backbone.state_dict())
    total, warm = meta["epochs"] * nb, a.warmup_epochs * nb
    t0 = time.time()
    step = 0
    for e in range(meta["epochs"]):
        views = np.fromfile(os.path.join(a.dump, f"epoch_{e}.f32"), dtype="<f4")
        off = 0
        sums = np.zeros(3)
        for b in range(nb):
            if step < warm:
                f = step / warm
            else:
                q = 0.5 * (1 + math.cos(math.pi * min((step - warm) / max(total - warm, 1), 1.0)))
                f = q + a.final_fraction * (1 - q)
            for g in opt.param_groups:
                g["lr"] = a.lr * f
            n = sizes[b] * 3 * s * s
            y1 = torch.from_numpy(views[off : off + n]).view(-1, 3, s, s)
            y2 = torch.from_numpy(views[off + n : off + 2 * n]).view(-1, 3, s, s)
            off += 2 * n
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
                loss, on_d, off_d = model(y1, y2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sums += [loss.item(), on_d.item(), off_d.item()]
            step += 1
        sums /= nb
        print(f"epoch {e + 1}: loss {sums[0]:.2f} invariance {sums[1]:.2f} redundancy {sums[2]:.1f} "
              f"({time.time() - t0:.0f}s)", flush=True)
    secs = time.time() - t0
    res = {}
    for name, bb in [("pretrained", model.backbone), ("random", random_bb)]:
        res[name] = knn(features(bb, tr_x, mean, std), tr_y, features(bb, te_x, mean, std), te_y)
    print(f"result knn_pretrained={res['pretrained']:.4f} knn_random={res['random']:.4f} seconds={secs:.0f}")


if __name__ == "__main__":
    main()
