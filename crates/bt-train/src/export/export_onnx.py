"""Our encoder checkpoint -> ONNX with the installed PyTorch's torch.onnx (bt-cli export --format onnx).

Usage: python export_onnx.py ENCODER.safetensors ARCH OUT.onnx HEIGHT WIDTH
ENCODER.safetensors is bt-cli's encoder checkpoint (torchvision state-dict names, no fc); ARCH is
resnet18|resnet34|resnet50 or cifar-resnet18|34|50 (3x3/1 stem, no max-pool). The encoder is
rebuilt as torchvision's ResNet (fc = Identity), loaded with strict=True, put in eval mode and
exported with the TorchScript-based exporter (the one that exports an nn.Module without
onnxscript). The ONNX graph has input `images` (N x 3 x H x W f32, normalized as the sidecar
JSON says) and output `features` (N x F), with dynamic batch and image sides. Needs `onnx`.
"""
import sys
import warnings

import torch
import torch.nn as nn
import torchvision
from safetensors.torch import load_file


def build(arch):
    cifar = arch.startswith("cifar-")
    name = arch.removeprefix("cifar-")
    if name not in ("resnet18", "resnet34", "resnet50"):
        raise SystemExit(f"ONNX export supports the torchvision ResNets, not {arch}")
    m = getattr(torchvision.models, name)()
    if cifar:
        m.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        m.maxpool = nn.Identity()
    m.fc = nn.Identity()
    return m


def main():
    src, arch, out, h, w = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    model = build(arch)
    model.load_state_dict(load_file(src), strict=True)
    model.eval()
    x = torch.zeros(1, 3, h, w)
    with warnings.catch_warnings():
        # The TorchScript-based exporter warns that the torch.export one is the default now.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            out,
            dynamo=False,
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "features": {0: "batch"}},
            opset_version=17,
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
