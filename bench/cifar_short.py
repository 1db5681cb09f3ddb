"""The `cifar-resnet18` recipe, shrunk, as a plain PyTorch loop on real CIFAR-10: the peer of
`bt-cli pretrain --preset cifar-resnet18` in bench/cifar_short.sh.

    .venv/bin/python bench/cifar_short.py --data /tmp/cifar/cifar-10-batches-bin --seed 5 \
        [--bf16] [--epochs 2] [--width 8] [--limit-train N --limit-test M] [--out result.json]

What it mirrors (crates/bt-config/configs/cifar-resnet18.toml and the crates it configures):
- views: torchvision v2 on float tensors in [0, 1] (our `color_math = f32`, torchvision
  arithmetic): RandomResizedCrop(32, scale (0.08, 1), ratio (3/4, 4/3), bilinear without
  antialias = our `tf-bilinear`), flip 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8 (random
  order, clamped per op), grayscale 0.2, solarize (x >= 0.5 -> 1 - x) 0.0 on view A / 0.2 on view B.
  No Normalize: bt-config's default for `cifar10` is no normalization (DataConfig::normalization;
  the preset sets no data.mean/std), so views and evaluation images are ToTensor's [0, 1].
- DataLoader: shuffle, batch 256, drop_last (195 steps/epoch on 50,000 images), 2 workers.
- model: CIFAR-stem ResNet-18 at `--width` (bench/step_torch.py's CifarResnet: torchvision
  BasicBlocks, 3x3/1 stem, no max-pool) with torchvision's init (kaiming normal, fan_out, ReLU on
  convs; BN weight 1, bias 0), projector Linear+BN+ReLU, Linear+BN+ReLU, Linear with biases
  (nn.Linear's default init, as bt-model's non-Keras Linear).
- loss: bt_loss (step_torch.py's mirror of bt_loss): batch-norm normalized cross-correlation
  (biased variance + 1e-5), lambda 0.0051, scale 0.1, in f32 on f32 embeddings.
- optimizer: solo-learn LARS exactly as crates/bt-optim/src/lars.rs: rank <= 1 tensors (biases,
  BN) excluded from decay and adaptation; otherwise s = eta ||w|| / (||g|| + wd ||w|| + 1e-8),
  s = min(s / lr, 1) (clip_lr; lr = 0 gives 1), d = s (g + wd w); mu = m mu + d; w -= lr mu.
- schedule: crates/bt-optim/src/schedule.rs warmup-cosine per step (0-based step index):
  step < warmup: f = step / warmup (warmup = 10 epochs x steps/epoch) else cosine to 0.
- bf16 (`--bf16`): torch.autocast("cpu", bfloat16) around the forwards (training and the kNN
  feature passes, as bt-cli's run.precision = bf16 also extracts its kNN features in bf16),
  loss in f32.
- kNN: k = 200, T = 0.1, cosine, votes exp(sim / T) (solo-learn; bt-train eval/knn.rs), encoder
  features in eval mode (BN running statistics) of the un-augmented train images vs test; the
  random init is the same seed's weights before step 0.

Prints one JSON line (and writes it to --out): knn_random, knn_final, pretrain_wall_s (first batch
requested .. last optimizer step done; DataLoader start-up included, kNN excluded), knn seconds,
steps, final_loss (mean loss of the last epoch, as bt-cli's `final_loss`).
"""

import argparse
import contextlib
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from step_torch import CifarResnet, bt_loss, projector  # noqa: E402

TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
RECORD = 1 + 3 * 32 * 32


def read_bins(paths, limit):
    """CIFAR-10 binary records (label byte + 3072 CHW bytes) of `paths` in order, first `limit`."""
    raw = np.concatenate([np.fromfile(p, dtype=np.uint8) for p in paths]).reshape(-1, RECORD)
    if limit > 0:
        raw = raw[:limit]
    return raw[:, 1:].reshape(-1, 3, 32, 32).copy(), raw[:, 0].astype(np.int64)


def view_transform(solarize_p):
    t = [
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomResizedCrop(32, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                             interpolation=v2.InterpolationMode.BILINEAR, antialias=False),
        v2.RandomHorizontalFlip(0.5),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        v2.RandomGrayscale(0.2),
    ]
    if solarize_p > 0:
        t.append(v2.RandomSolarize(0.5, p=solarize_p))
    return v2.Compose(t)


class TwinViews(Dataset):
    def __init__(self, images):
        self.images = torch.from_numpy(images)  # N x 3 x 32 x 32 uint8
        self.a, self.b = view_transform(0.0), view_transform(0.2)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = self.images[i]
        return self.a(x), self.b(x)


class BarlowTwins(nn.Module):
    def __init__(self, width, widths):
        super().__init__()
        self.encoder = CifarResnet(18, width)
        for m in self.encoder.modules():  # torchvision ResNet's init (bt-model's kaiming_out)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.projector = projector(self.encoder.features, widths, True, True, False)

    def forward(self, x):
        return self.projector(self.encoder(x))


class SoloLars:
    """crates/bt-optim/src/lars.rs, solo-learn variant, as a plain per-tensor loop."""

    def __init__(self, params, momentum, eta, wd, clip_lr):
        self.p, self.m, self.eta, self.wd, self.clip = params, momentum, eta, wd, clip_lr
        self.mu = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, lr_w, lr_b):
        for p, mu in zip(self.p, self.mu):
            g = p.grad
            lr = lr_b if p.ndim <= 1 else lr_w
            d = g
            if p.ndim > 1:  # exclude_bias_and_norm: rank <= 1 neither decays nor adapts
                pn, gn = p.norm(), g.norm()
                if pn > 0 and gn > 0:
                    s = self.eta * pn / (gn + self.wd * pn + 1e-8)
                    if self.clip:
                        s = torch.clamp_max(s / lr, 1.0) if lr > 0 else torch.ones_like(s)
                    d = (g + self.wd * p) * s
            mu.mul_(self.m).add_(d)
            p.add_(mu, alpha=-lr)


def lr_factor(step, warmup, total, final_fraction=0.0):
    if step < warmup:
        return step / warmup
    q = 0.5 * (1 + math.cos(math.pi * min((step - warmup) / max(total - warmup, 1.0), 1.0)))
    return q + final_fraction * (1 - q)


@torch.no_grad()
def features(encoder, images, amp, bs=256):
    encoder.eval()
    out = []
    for i in range(0, len(images), bs):
        x = torch.from_numpy(images[i:i + bs]).float().div_(255.0)
        with amp():
            out.append(encoder(x).float())
    encoder.train()
    return torch.cat(out)


@torch.no_grad()
def knn(train_f, train_y, test_f, test_y, k=200, t=0.1, classes=10):
    train_f, test_f = F.normalize(train_f, dim=1), F.normalize(test_f, dim=1)
    k = min(k, len(train_f))
    correct = 0
    for i in range(0, len(test_f), 256):
        w, idx = (test_f[i:i + 256] @ train_f.T).topk(k, dim=1)
        votes = torch.zeros(len(w), classes).scatter_add_(1, train_y[idx], (w / t).exp())
        correct += (votes.argmax(1) == test_y[i:i + 256]).sum().item()
    return correct / len(test_f)


def knn_top1(encoder, data, amp):
    (trx, try_), (tex, tey) = data
    return knn(features(encoder, trx, amp), torch.from_numpy(try_), features(encoder, tex, amp),
               torch.from_numpy(tey))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/tmp/cifar/cifar-10-batches-bin")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--projector", default="512,512,512")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit-train", type=int, default=0, help="first N train images only (0: all)")
    ap.add_argument("--limit-test", type=int, default=0, help="first N test images only (0: all)")
    ap.add_argument("--out", default="")
    # The preset's [optim] / [schedule] / [loss].
    ap.add_argument("--lr", type=float, default=0.3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--eta", type=float, default=0.02)
    ap.add_argument("--warmup-epochs", type=float, default=10)
    ap.add_argument("--lambd", type=float, default=0.0051)
    ap.add_argument("--loss-scale", type=float, default=0.1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)

    train = read_bins([os.path.join(a.data, f) for f in TRAIN_FILES], a.limit_train)
    test = read_bins([os.path.join(a.data, "test_batch.bin")], a.limit_test)
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if a.bf16 else contextlib.nullcontext

    model = BarlowTwins(a.width, [int(w) for w in a.projector.split(",")]).train()
    params = list(model.parameters())
    opt = SoloLars(params, a.momentum, a.eta, a.weight_decay, clip_lr=True)

    t = time.perf_counter()
    knn_random = knn_top1(model.encoder, (train, test), amp)
    knn_s = time.perf_counter() - t

    loader = DataLoader(TwinViews(train[0]), batch_size=a.batch, shuffle=True, drop_last=True,
                        num_workers=a.workers, persistent_workers=a.workers > 0)
    spe = len(loader)
    total, warmup = a.epochs * spe, a.warmup_epochs * spe
    step, losses = 0, []
    t0 = time.perf_counter()
    for epoch in range(a.epochs):
        ep_loss, te = 0.0, time.perf_counter()
        for xa, xb in loader:
            lr = a.lr * lr_factor(step, warmup, total)
            for p in params:
                p.grad = None
            with amp():
                za, zb = model(xa), model(xb)
            loss = bt_loss(za.float(), zb.float(), a.lambd, a.loss_scale, "BatchNorm", "reference")
            loss.backward()
            opt.step(lr, lr)
            ep_loss += loss.item()
            step += 1
        losses.append(ep_loss / spe)
        print(f"epoch {epoch + 1}: loss {losses[-1]:.4f} lr {lr:.5f} ({time.perf_counter() - te:.1f}s)",
              file=sys.stderr, flush=True)
    wall = time.perf_counter() - t0

    t = time.perf_counter()
    knn_final = knn_top1(model.encoder, (train, test), amp)
    knn_s += time.perf_counter() - t
    res = {
        "impl": "torch", "precision": "bf16" if a.bf16 else "f32", "seed": a.seed,
        "knn_random": knn_random, "knn_final": knn_final, "pretrain_wall_s": wall, "knn_s": knn_s,
        "steps": step, "final_loss": losses[-1] if losses else float("nan"),
        "train_images": len(train[0]), "test_images": len(test[0]),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    print(json.dumps(res), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f)


if __name__ == "__main__":
    main()
