"""Runs the snippet of docs/CHECKPOINTS.md on checkpoints written by bt-model.

Called by crates/bt-model/tests/torchvision_load.rs with the interpreter in $BT_PYTHON
(`cargo xtask test` sets it to .venv/bin/python: torch, torchvision, timm, safetensors):

    python scripts/check_torchvision_load.py --before ENC.safetensors --after ENC2.safetensors \
        --io IO.safetensors [--arch resnet50 --stem imagenet]

- ENC: an encoder saved by `BarlowTwins::save_encoder` (`cifar-resnet18` by default; with
  `--arch resnetNN --stem imagenet`, bt-model's `resnetNN`, torchvision's own stem);
- IO: inputs `x`, bt-model's inference features `h_eval`, and training-mode features `h_train`;
- ENC2: the encoder after that training-mode forward (BN running statistics updated once).

Loads ENC into torchvision's and timm's ARCH (CIFAR or ImageNet stem) with strict=True through the
docs' own code, compares features in eval mode, then one train-mode forward (features and the
updated BN buffers against ENC2). Prints one JSON line; exits 1 if anything is off by more than
1e-5 (relative to max(1, max |reference|)).
"""
import argparse
import json
import os
import re
import sys

import torch
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5


def docs_snippet():
    text = open(os.path.join(ROOT, "docs", "CHECKPOINTS.md")).read()
    # The block that defines the loaders (the docs also show short usage examples).
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def load_encoder_torchvision" in b]
    assert len(blocks) == 1, "docs/CHECKPOINTS.md: expected one python block defining the loaders"
    ns = {}
    exec(compile(blocks[0], "docs/CHECKPOINTS.md", "exec"), ns)
    return ns


def err(a, b):
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--io", required=True)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--stem", default="cifar", choices=["cifar", "imagenet"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    ns = docs_snippet()
    io = load_file(a.io)
    after = load_file(a.after)
    report = {"arch": a.arch, "stem": a.stem}
    ok = True
    for lib in ["torchvision", "timm"]:
        model = ns[f"load_encoder_{lib}"](a.before, arch=a.arch, stem=a.stem)
        with torch.no_grad():
            e_eval = err(model(io["x"]), io["h_eval"])
            model.train()
            e_train = err(model(io["x"]), io["h_train"])
        sd = model.state_dict()
        e_buf = max(err(sd[k].float(), after[k].float()) for k in after if "running" in k)
        nbt_ok = all(torch.equal(sd[k], after[k]) for k in after if k.endswith("num_batches_tracked"))
        report[lib] = {"eval": e_eval, "train": e_train, "buffers": e_buf, "num_batches_tracked": nbt_ok}
        ok &= max(e_eval, e_train, e_buf) <= TOL and nbt_ok
    report["ok"] = bool(ok)
    print(json.dumps(report))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
