"""The official Barlow Twins training loop (facebookresearch/barlowtwins `main.py`: model, loss,
LARS, learning-rate schedule, epoch/step loop) with its input pipeline replaced by twinloader.

Against main.py, three lines change (marked `# twinloader` below):

    # main.py                                              # with twinloader
    dataset = ImageFolder(args.data / 'train', Transform())
    sampler = DistributedSampler(dataset)
    loader = DataLoader(dataset, batch_size=per_device_batch_size,
                        num_workers=args.workers, pin_memory=True, sampler=sampler)
                                                           loader = TwinLoader(args.data / 'train', 'imagenet-resnet50',
                                                               batch_size=per_device_batch_size, threads=args.workers,
                                                               rank=args.rank, world_size=args.world_size)
    sampler.set_epoch(epoch)                               loader.set_epoch(epoch)
    for step, ((y1, y2), _) in enumerate(loader, ...):     for step, (y1, y2, _) in enumerate(loader, ...):
        y1 = y1.cuda(gpu, non_blocking=True)                   y1 = torch.from_numpy(y1).cuda(gpu, non_blocking=True)

The views are the official `Transform()`'s, bit for bit like Pillow (same crops, jitter, blur,
solarize, normalization); `torch.from_numpy` shares the loader's memory (no copy).

Run (one process; under torchrun it reads RANK/WORLD_SIZE and uses NCCL/Gloo as main.py does):

    python crates/bt-py/examples/barlow_main.py IMAGES --device cuda --arch resnet50 --batch-size 256
    # CPU, small: the measurement of docs/BENCHMARKS.md ("inside a PyTorch training loop")
    python crates/bt-py/examples/barlow_main.py ../shared/datasets/imagenet-sample/images --device cpu \\
        --arch resnet18 --image-size 96 --batch-size 64 --projector 2048-2048-2048 --workers 2 --steps 12
    # the same loop fed by main.py's own DataLoader + Transform, for comparison
    python crates/bt-py/examples/barlow_main.py ... --loader official

IMAGES is an ImageFolder (class subfolders) or a plain tree of images (both loaders accept either).
The last line printed is a JSON summary: training pairs/s and the fraction of the step time spent
waiting for the next batch.
"""
import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import torch
import torchvision
import torchvision.transforms as transforms
from PIL import Image, ImageFilter, ImageOps
from torch import nn, optim

parser = argparse.ArgumentParser(description="Barlow Twins Training (twinloader)")
parser.add_argument("data", type=Path, metavar="DIR", help="path to the training images")
parser.add_argument("--loader", choices=["twinloader", "official"], default="twinloader")
parser.add_argument("--workers", default=8, type=int, help="twinloader threads or DataLoader workers")
parser.add_argument("--epochs", default=1000, type=int)
parser.add_argument("--steps", default=0, type=int, help="stop after this many steps (0: all epochs)")
parser.add_argument("--batch-size", default=2048, type=int, help="global batch over all ranks")
parser.add_argument("--image-size", default=224, type=int)
parser.add_argument("--arch", default="resnet50", help="torchvision ResNet")
parser.add_argument("--learning-rate-weights", default=0.2, type=float)
parser.add_argument("--learning-rate-biases", default=0.0048, type=float)
parser.add_argument("--weight-decay", default=1e-6, type=float)
parser.add_argument("--lambd", default=0.0051, type=float)
parser.add_argument("--projector", default="8192-8192-8192", type=str)
parser.add_argument("--print-freq", default=100, type=int)
parser.add_argument("--device", default="cuda")
parser.add_argument("--seed", default=0, type=int)


class Timed:
    """Wraps a loader and adds up the time spent waiting in `next()` (for the summary only; the
    training loop is the same with or without it)."""

    def __init__(self, loader):
        self.loader, self.wait = loader, 0.0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                self.wait += time.perf_counter() - t
            yield batch


def main():
    args = parser.parse_args()
    args.rank = int(os.environ.get("RANK", 0))
    args.world_size = int(os.environ.get("WORLD_SIZE", 1))
    if args.world_size > 1:
        torch.distributed.init_process_group("nccl" if args.device == "cuda" else "gloo")
    device = torch.device(args.device, int(os.environ.get("LOCAL_RANK", 0))) if args.device == "cuda" else torch.device("cpu")
    torch.manual_seed(args.seed)
    model = BarlowTwins(args).to(device)
    param_weights, param_biases = [], []
    for param in model.parameters():
        (param_biases if param.ndim == 1 else param_weights).append(param)
    parameters = [{"params": param_weights}, {"params": param_biases}]
    optimizer = LARS(parameters, lr=0, weight_decay=args.weight_decay, weight_decay_filter=True, lars_adaptation_filter=True)

    assert args.batch_size % args.world_size == 0
    per_device_batch_size = args.batch_size // args.world_size
    if args.loader == "twinloader":
        from twinloader import TwinLoader

        loader = TwinLoader(args.data, "imagenet-resnet50", batch_size=per_device_batch_size,  # twinloader
                            threads=args.workers, rank=args.rank, world_size=args.world_size,
                            image_size=args.image_size, seed=args.seed)
        sampler = loader
    else:
        dataset = Images(args.data, Transform(args.image_size))
        sampler = torch.utils.data.distributed.DistributedSampler(dataset, args.world_size, args.rank, seed=args.seed)
        loader = torch.utils.data.DataLoader(dataset, batch_size=per_device_batch_size, num_workers=args.workers,
                                             pin_memory=args.device == "cuda", sampler=sampler, drop_last=True,
                                             persistent_workers=args.workers > 0)
    timed = Timed(loader)

    start_time = time.time()
    total_steps, t_first, wait_first = 0, None, 0.0
    for epoch in range(0, args.epochs):
        sampler.set_epoch(epoch)  # twinloader: loader.set_epoch
        for step, batch in enumerate(timed, start=epoch * len(loader)):
            (y1, y2), _ = (batch[:2], batch[2]) if args.loader == "twinloader" else batch  # twinloader: (y1, y2, _)
            if args.loader == "twinloader":
                y1, y2 = torch.from_numpy(y1), torch.from_numpy(y2)  # twinloader: no copy
            y1 = y1.to(device, non_blocking=True)
            y2 = y2.to(device, non_blocking=True)
            adjust_learning_rate(args, optimizer, loader, step)
            optimizer.zero_grad()
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                loss = model.forward(y1, y2)
            loss.backward()
            optimizer.step()
            total_steps += 1
            if total_steps == 2:  # the first step pays for start-up (workers, first batches)
                t_first, wait_first = time.perf_counter(), timed.wait
            if step % args.print_freq == 0 and args.rank == 0:
                stats = dict(epoch=epoch, step=step, lr_weights=optimizer.param_groups[0]["lr"],
                             lr_biases=optimizer.param_groups[1]["lr"], loss=loss.item(),
                             time=int(time.time() - start_time))
                print(json.dumps(stats), flush=True)
            if args.steps and total_steps >= args.steps:
                break
        if args.steps and total_steps >= args.steps:
            break
    if t_first is not None and args.rank == 0:
        dt = time.perf_counter() - t_first
        timed_steps = total_steps - 2
        print(json.dumps(dict(loader=args.loader, workers=args.workers, torch_threads=torch.get_num_threads(),
                              arch=args.arch, image_size=args.image_size, batch=per_device_batch_size,
                              timed_steps=timed_steps, seconds=round(dt, 2),
                              pairs_per_s=round(timed_steps * per_device_batch_size / dt, 2),
                              data_wait_fraction=round((timed.wait - wait_first) / dt, 4))))


def adjust_learning_rate(args, optimizer, loader, step):
    max_steps = args.epochs * len(loader)
    warmup_steps = 10 * len(loader)
    base_lr = args.batch_size / 256
    if step < warmup_steps:
        lr = base_lr * step / warmup_steps
    else:
        step -= warmup_steps
        max_steps -= warmup_steps
        q = 0.5 * (1 + math.cos(math.pi * step / max_steps))
        end_lr = base_lr * 0.001
        lr = base_lr * q + end_lr * (1 - q)
    optimizer.param_groups[0]["lr"] = lr * args.learning_rate_weights
    optimizer.param_groups[1]["lr"] = lr * args.learning_rate_biases


def off_diagonal(x):
    # return a flattened view of the off-diagonal elements of a square matrix
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


class BarlowTwins(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.args = args
        self.backbone = getattr(torchvision.models, args.arch)(zero_init_residual=True)
        width = self.backbone.fc.in_features
        self.backbone.fc = nn.Identity()
        # projector
        sizes = [width] + list(map(int, args.projector.split("-")))
        layers = []
        for i in range(len(sizes) - 2):
            layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=False))
            layers.append(nn.BatchNorm1d(sizes[i + 1]))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
        self.projector = nn.Sequential(*layers)
        # normalization layer for the representations z1 and z2
        self.bn = nn.BatchNorm1d(sizes[-1], affine=False)

    def forward(self, y1, y2):
        z1 = self.projector(self.backbone(y1))
        z2 = self.projector(self.backbone(y2))
        # empirical cross-correlation matrix
        c = self.bn(z1).T @ self.bn(z2)
        # sum the cross-correlation matrix between all gpus
        c.div_(self.args.batch_size)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(c)
        on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
        off_diag = off_diagonal(c).pow_(2).sum()
        loss = on_diag + self.args.lambd * off_diag
        return loss


class LARS(optim.Optimizer):
    def __init__(self, params, lr, weight_decay=0, momentum=0.9, eta=0.001, weight_decay_filter=False,
                 lars_adaptation_filter=False):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                        weight_decay_filter=weight_decay_filter, lars_adaptation_filter=lars_adaptation_filter)
        super().__init__(params, defaults)

    def exclude_bias_and_norm(self, p):
        return p.ndim == 1

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                dp = p.grad
                if dp is None:
                    continue
                if not g["weight_decay_filter"] or not self.exclude_bias_and_norm(p):
                    dp = dp.add(p, alpha=g["weight_decay"])
                if not g["lars_adaptation_filter"] or not self.exclude_bias_and_norm(p):
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.0, torch.where(update_norm > 0, (g["eta"] * param_norm / update_norm), one), one)
                    dp = dp.mul(q)
                param_state = self.state[p]
                if "mu" not in param_state:
                    param_state["mu"] = torch.zeros_like(p)
                mu = param_state["mu"]
                mu.mul_(g["momentum"]).add_(dp)
                p.add_(mu, alpha=-g["lr"])


# ---- main.py's own input pipeline (what twinloader replaces), for --loader official ----


class Images(torch.utils.data.Dataset):
    """torchvision's ImageFolder for a folder with class subfolders, else every image of the tree
    (label 0), with main.py's Transform."""

    def __init__(self, root, transform):
        exts = (".jpg", ".jpeg", ".png", ".webp")
        subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        if subdirs:
            self.inner = torchvision.datasets.ImageFolder(root, transform)
        else:
            self.inner = None
            self.files = sorted(os.path.join(r, f) for r, _, fs in os.walk(root) for f in fs if f.lower().endswith(exts))
        self.transform = transform

    def __len__(self):
        return len(self.inner) if self.inner is not None else len(self.files)

    def __getitem__(self, i):
        if self.inner is not None:
            return self.inner[i]
        return self.transform(Image.open(self.files[i]).convert("RGB")), 0


class GaussianBlur(object):
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        if random.random() < self.p:
            sigma = random.random() * 1.9 + 0.1
            return img.filter(ImageFilter.GaussianBlur(sigma))
        else:
            return img


class Solarization(object):
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        if random.random() < self.p:
            return ImageOps.solarize(img)
        else:
            return img


class Transform:
    def __init__(self, size=224):
        normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
        jitter = transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
        self.transform = transforms.Compose([
            transforms.RandomResizedCrop(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomApply([jitter], p=0.8),
            transforms.RandomGrayscale(p=0.2),
            GaussianBlur(p=1.0),
            Solarization(p=0.0),
            transforms.ToTensor(),
            normalize,
        ])
        self.transform_prime = transforms.Compose([
            transforms.RandomResizedCrop(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.RandomHorizontalFlip(p=0.5),
            transforms.RandomApply([jitter], p=0.8),
            transforms.RandomGrayscale(p=0.2),
            GaussianBlur(p=0.1),
            Solarization(p=0.2),
            transforms.ToTensor(),
            normalize,
        ])

    def __call__(self, x):
        y1 = self.transform(x)
        y2 = self.transform_prime(x)
        return y1, y2


if __name__ == "__main__":
    main()
