"""The `bt-cli bench step` workload in PyTorch eager: the peer that bt-model's step is timed against.

Run by `bt-cli bench step --compare-python PYTHON` (same libtorch version: the project's
.venv torch is the libtorch tch links; same thread count, same batch, same model and loss):

    .venv/bin/python bench/step_torch.py --arch KerasResnet34 --width 64 --projector 5000,5000,5000 \
        --batch 32 --steps 10 --warmup 3 --threads 2

The model mirrors bt-model op for op: the Keras ResNet-34 (explicit asymmetric TF `same` pads,
biases, BN eps 1e-3 with the Keras moving-variance update via native_batch_norm), the CIFAR
ResNets (torchvision blocks, PyTorch BN), or torchvision's own ImageNet ResNets (`--arch Resnet50`
or `resnet50`, `fc` = identity, what bt-model's `resnet18|34|50` reproduce; e.g. with
`--image-size 224`), and the projector; the loss mirrors bt_loss
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


class ImagenetResnet(nn.Module):
    """torchvision's resnet18/34/50 without `fc` (bt-model's `resnet18|34|50`)."""

    def __init__(self, depth, width):
        super().__init__()
        import torchvision

        if width != 64:
            # torchvision's planes are fixed at 64..512 (`width_per_group` only widens the
            # bottleneck's inner convs): a narrower bt-model has no torchvision twin.
            raise SystemExit(f"--width {width}: the torchvision peer exists only at width 64")
        self.net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        self.net.fc = nn.Identity()
        self.features = 2048 if depth == 50 else 512

    def forward(self, x):
        return self.net(x)


def encoder(arch, width):
    """bt-model's `Arch` (Debug name as bt-cli passes it, or the config's kebab-case name)."""
    name = arch.replace("-", "").lower()
    if name == "kerasresnet34":
        return KerasResnet34(width)
    if name.startswith("cifarresnet"):
        return CifarResnet(int(name[len("cifarresnet"):]), width)
    if name in ("resnet18", "resnet34", "resnet50"):
        return ImagenetResnet(int(name[len("resnet"):]), width)
    raise SystemExit(f"unknown --arch {arch}")


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


class Lamb:
    """tfa.optimizers.LAMB (bt-optim's Lamb) with torch._foreach ops: Adam moments with bias
    correction, decoupled decay, per-tensor trust ratio ||w|| / ||update|| (1 when either is 0).
    Multi-tensor ops, as a careful PyTorch user would write it (no per-tensor Python math)."""

    def __init__(self, params, lr, b1=0.9, b2=0.999, eps=1e-6, wd=0.0):
        self.p, self.lr, self.b1, self.b2, self.eps, self.wd = params, lr, b1, b2, eps, wd
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = 0

    @torch.no_grad()
    def step(self):
        self.t += 1
        g = [p.grad for p in self.p]
        torch._foreach_lerp_(self.m, g, 1 - self.b1)
        torch._foreach_mul_(self.v, self.b2)
        torch._foreach_addcmul_(self.v, g, g, 1 - self.b2)
        mh = torch._foreach_div(self.m, 1 - self.b1 ** self.t)
        vh = torch._foreach_div(self.v, 1 - self.b2 ** self.t)
        torch._foreach_sqrt_(vh)
        torch._foreach_add_(vh, self.eps)
        u = torch._foreach_div(mh, vh)
        if self.wd:
            torch._foreach_add_(u, self.p, alpha=self.wd)
        wn = torch.stack(torch._foreach_norm(self.p))
        un = torch.stack(torch._foreach_norm(u))
        ratio = torch.where((wn > 0) & (un > 0), wn / un, torch.ones_like(wn))
        torch._foreach_mul_(u, list((ratio * -self.lr).unbind()))
        torch._foreach_add_(self.p, u)


class Lars:
    """The official Barlow Twins LARS (bt-optim's Lars, official variant), foreach ops."""

    def __init__(self, params, lr, momentum=0.9, wd=0.0, eta=1e-3):
        self.p, self.lr, self.mom, self.wd, self.eta = params, lr, momentum, wd, eta
        self.mu = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self):
        g = [p.grad.clone() for p in self.p]
        if self.wd:
            torch._foreach_add_(g, self.p, alpha=self.wd)
        wn = torch.stack(torch._foreach_norm(self.p))
        gn = torch.stack(torch._foreach_norm(g))
        q = torch.where((wn > 0) & (gn > 0), self.eta * wn / gn, torch.ones_like(wn))
        torch._foreach_mul_(g, list(q.unbind()))
        torch._foreach_mul_(self.mu, self.mom)
        torch._foreach_add_(self.mu, g)
        torch._foreach_add_(self.p, self.mu, alpha=-self.lr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="KerasResnet34")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=32,
                    help="input side in pixels (32: CIFAR; 224: the ImageNet ResNets' usual size)")
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
    ap.add_argument("--optim", default="none", choices=["none", "lamb", "lars"],
                    help="also take an optimizer step (foreach LAMB/LARS), as bt-cli bench step does")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--bf16", action="store_true",
                    help="torch.autocast(bfloat16) around the forwards; the loss stays f32")
    ap.add_argument("--channels-last", action="store_true",
                    help="model and inputs in torch.channels_last")
    ap.add_argument("--interleave", action="store_true",
                    help="after warm-up, run one step per 'step' line on stdin, print its time")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    keras = a.arch.replace("-", "").lower() == "kerasresnet34"
    enc = encoder(a.arch, a.width)
    widths = [int(w) for w in a.projector.split(",")]
    model = nn.Sequential(enc, projector(enc.features, widths, a.projector_bn == "true",
                                         a.projector_bias == "true", keras)).to(dev).train()
    params = [p for p in model.parameters()]
    xa = torch.rand(a.batch, 3, a.image_size, a.image_size, device=dev)
    xb = torch.rand(a.batch, 3, a.image_size, a.image_size, device=dev)
    if a.channels_last:
        model = model.to(memory_format=torch.channels_last)
        xa, xb = (x.contiguous(memory_format=torch.channels_last) for x in (xa, xb))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = not a.bf16
        torch.backends.cudnn.allow_tf32 = not a.bf16
    opt = {"none": None, "lamb": lambda: Lamb(params, a.lr, wd=a.weight_decay),
           "lars": lambda: Lars(params, a.lr, wd=a.weight_decay)}[a.optim]
    opt = opt() if opt else None
    import contextlib
    amp = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if a.bf16 else contextlib.nullcontext

    def step():
        t = time.perf_counter()
        for p in params:
            if p.grad is not None:
                p.grad.detach_()
                p.grad.zero_()
        with amp():
            za, zb = model(xa), model(xb)
        loss = bt_loss(za.float(), zb.float(), a.lam, a.scale, a.normalization, a.loss_impl)
        loss.backward()
        if opt is not None:
            opt.step()
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
