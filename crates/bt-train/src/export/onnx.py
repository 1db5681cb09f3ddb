"""TorchScript encoder -> ONNX with the installed PyTorch's torch.onnx (bt-cli export --format onnx).

Usage: python onnx.py ENCODER.pt OUT.onnx HEIGHT WIDTH
The TorchScript file is bt-cli's traced inference-mode encoder; the ONNX graph has input
`images` (N x 3 x H x W f32, normalized as the sidecar JSON says) and output `features`
(N x F), with a dynamic batch dimension. Needs the `onnx` package (torch.onnx writes through it).
"""
import sys
import warnings

import torch


def main():
    src, out, h, w = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    model = torch.jit.load(src, map_location="cpu").eval()
    x = torch.zeros(1, 3, h, w)
    with warnings.catch_warnings():
        # The TorchScript-based exporter is the one that takes a ScriptModule; it warns that
        # the torch.export one is the default now.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            out,
            dynamo=False,
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            opset_version=17,
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
