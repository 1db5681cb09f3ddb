"""The `bt-cli bench step` workload in PyTorch eager: the peer that bt-model's step is timed against.

Run by `bt-cli bench step --compare-python PYTHON` (same libtorch version: the project's
.venv torch is the libtorch tch links; same thread count, same batch, same model and loss):

    .venv/bin/python bench/step_torch.py --arch KerasResnet34 --width 64 --projector 5000,5000,5000 \
        --batch 32 --steps 10 --warmup 3 --threads 2

The model mirrors bt-model op for op: the Keras ResNet-34 (explicit asymmetric TF `same` pads,
biases, BN eps 1e-3 with the Keras moving-variance update via native_batch_norm) or the CIFAR
ResNets (torchvision blocks, PyTorch BN), and the projector; the loss mirrors bt_loss
(reference or fused, as the Rust side resolved it). One step = zero grads (in place, as tch's
zero_grad), forward both views in training mode, loss, backward. Prints one JSON line with the
median step time, or with --interleave answers one step per stdin line (bt-cli alternates its own
steps with these, so both see the same machine load).
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def tf_same(n, k, s):
    out = (n + s - 1) // s
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


class Conv(nn.Module):
    def __init__(self, cin, cout, k, stride, padding, bias):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, 0, bias=bias)
        self.k, self.stride, self.padding = k, stride, padding  # ("sym", p) | ("tf", pre) | ("valid",)

    def forward(self, x):
        if self.padding[0] == "sym":
            return F.conv2d(x, self.conv.weight, self.conv.bias, self.stride, self.padding[1])
        if self.padding[0] == "valid":
            return F.conv2d(x, self.conv.weight, self.conv.bias, self.stride, 0)
        pre = self.padding[1]
        t, b = tf_same(x.shape[2] + 2 * pre, self.k, self.stride)
        l, r = tf_same(x.shape[3] + 2 * pre, self.k, self.stride)
        if t == b and l == r and t == l:
            return F.conv2d(x, self.conv.weight, self.conv.bias, self.stride, t + pre)
        x = F.pad(x, (l + pre, r + pre, t + pre, b + pre))
        return F.conv2d(x, self.conv.weight, self.conv.bias, self.stride, 0)


class KerasBN(nn.Module):
    """eps 1e-3, momentum 0.99, moving variance updated with the biased batch variance."""

    def __init__(self, c):
        super().__init__()
        self.bn = nn.BatchNorm1d(c, eps=1e-3, momentum=0.01)

    def forward(self, x):
        bn = self.bn
        if not self.training:
            return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        y, mean, invstd = torch.native_batch_norm(x, bn.weight, bn.bias, None, None, True, 0.01, bn.eps)
        with torch.no_grad():
            bn.running_mean.mul_(0.99).add_(mean * 0.01)
            bn.running_var.mul_(0.99).add_((invstd.pow(-2) - bn.eps) * 0.01)
            bn.num_batches_tracked.add_(1)
        return y


class KerasBlock(nn.Module):
    def __init__(self, cin, c, stride):
        super().__init__()
        self.conv1 = Conv(cin, c, 3, stride, ("tf", 0), True)
        self.bn1 = KerasBN(c)
        self.conv2 = Conv(c, c, 3, 1, ("tf", 0), True)
        self.bn2 = KerasBN(c)
        self.short = Conv(cin, c, 1, stride, ("valid",), True) if (stride != 1 or cin != c) else None

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        s = x if self.short is None else self.short(x)
        return F.relu(y + s, inplace=True)


class KerasResnet34(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv1 = Conv(3, width, 7, 2, ("tf", 3), True)
        self.bn1 = KerasBN(width)
        blocks, cin = [], width
        for i, n in enumerate([3, 4, 6, 3]):
            c = width << i
            for j in range(n):
                blocks.append(KerasBlock(cin, c, 2 if i > 0 and j == 0 else 1))
                cin = c
        self.blocks = nn.Sequential(*blocks)
        self.features = cin

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        t, b = tf_same(y.shape[2], 3, 2)
        l, r = tf_same(y.shape[3], 3, 2)
        if t == b and l == r and t == l:
            y = F.max_pool2d(y, 3, 2, t)
        else:
            y = F.max_pool2d(F.pad(y, (l, r, t, b), value=float("-inf")), 3, 2)
        y = self.blocks(y)
        y = F.avg_pool2d(y, 2, 2, 0, ceil_mode=True, count_include_pad=False)
        return y.permute(0, 2, 3, 1).flatten(1)


class TorchBlock(nn.Module):
    def __init__(self, cin, planes, stride, bottleneck):
        super().__init__()
        cout = planes * 4 if bottleneck else planes
        shapes = ([(cin, planes, 1, 1), (planes, planes, 3, stride), (planes, cout, 1, 1)] if bottleneck
                  else [(cin, planes, 3, stride), (planes, planes, 3, 1)])
        self.convs = nn.ModuleList(nn.Conv2d(a, b, k, s, k // 2, bias=False) for a, b, k, s in shapes)
        self.bns = nn.ModuleList(nn.BatchNorm2d(b) for _, b, _, _ in shapes)
        self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else None)

    def forward(self, x):
        y = x
        for i, (c, b) in enumerate(zip(self.convs, self.bns)):
            y = b(c(y))
            if i < len(self.convs) - 1:
                y = F.relu(y, inplace=True)
        s = x if self.down is None else self.down(x)
        return F.relu(y + s, inplace=True)


class CifarResnet(nn.Module):
    def __init__(self, depth, width):
        super().__init__()
        blocks, bottleneck = {18: ([2, 2, 2, 2], False), 34: ([3, 4, 6, 3], False), 50: ([3, 4, 6, 3], True)}[depth]
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for i, n in enumerate(blocks):
            planes = width << i
            for j in range(n):
                layers.append(TorchBlock(cin, planes, 2 if i > 0 and j == 0 else 1, bottleneck))
                cin = planes * 4 if bottleneck else planes
        self.blocks = nn.Sequential(*layers)
        self.features = cin

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.adaptive_avg_pool2d(self.blocks(y), 1).flatten(1)


def projector(fin, widths, bn, bias, keras):
    layers = []
    for i, w in enumerate(widths):
        layers.append(nn.Linear(fin, w, bias=bias))
        fin = w
        if i < len(widths) - 1:
            if bn:
                layers.append(KerasBN(w) if keras else nn.BatchNorm1d(w))
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def bt_loss(za, zb, lam, scale, norm, impl):
    """Mirrors bt_loss::barlow_twins_loss (single process)."""
    n, d = za.shape
    def normalize(z):
        c = z - z.sum(0) / n
        var = c.square().sum(0) / n
        return c / (var.sqrt() if norm == "KerasSeed" else (var + 1e-5).sqrt())
    a, b = normalize(za), normalize(zb)
    if impl == "fused":
        diag = (a * b).sum(0) / n
        total = ((a @ a.T) * (b @ b.T)).sum() / (n * n)
        inv = (diag - 1).square().sum()
        red = total - diag.square().sum()
    else:
        c = a.T @ b / n
        inv = (c.diagonal() - 1).square().sum()
        off = c.flatten()[:-1].view(d - 1, d + 1)[:, 1:]
        red = off.square().sum()
    return (inv + lam * red) * scale


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="KerasResnet34")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--projector", default="5000,5000,5000")
    ap.add_argument("--projector-bn", default="true")
    ap.add_argument("--projector-bias", default="true")
    ap.add_argument("--lambda", dest="lam", type=float, default=5e-3)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--normalization", default="KerasSeed")
    ap.add_argument("--loss-impl", default="reference")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--interleave", action="store_true",
                    help="after warm-up, run one step per 'step' line on stdin, print its time")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    keras = a.arch == "KerasResnet34"
    enc = KerasResnet34(a.width) if keras else CifarResnet({"CifarResnet18": 18, "CifarResnet34": 34,
                                                            "CifarResnet50": 50}[a.arch], a.width)
    widths = [int(w) for w in a.projector.split(",")]
    model = nn.Sequential(enc, projector(enc.features, widths, a.projector_bn == "true",
                                         a.projector_bias == "true", keras)).to(dev).train()
    params = [p for p in model.parameters()]
    xa = torch.rand(a.batch, 3, 32, 32, device=dev)
    xb = torch.rand(a.batch, 3, 32, 32, device=dev)

    def step():
        t = time.perf_counter()
        for p in params:
            if p.grad is not None:
                p.grad.detach_()
                p.grad.zero_()
        loss = bt_loss(model(xa), model(xb), a.lam, a.scale, a.normalization, a.loss_impl)
        loss.backward()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t

    for _ in range(a.warmup):
        step()
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if a.interleave:
        # Driven by bt-cli over stdin/stdout, one step per "step" line, so that the two
        # implementations alternate and share whatever else loads the machine.
        print(json.dumps(dict(meta, ready=True)), flush=True)
        for line in sys.stdin:
            if line.strip() != "step":
                break
            print(json.dumps({"step_s": step()}), flush=True)
        return
    times = [step() for _ in range(a.steps)]
    print(json.dumps(dict(meta, median_s=statistics.median(times), times_s=times)))


if __name__ == "__main__":
    main()
