"""Checks bt-cli's exported encoder against our own forward (crates/bt-train/tests/export.rs).

Usage: python check_export.py --io IO.safetensors [--torchscript ENCODER.pt] [--onnx ENCODER.onnx]
IO holds `x` (N x 3 x H x W, N differs from the traced batch of 1) and `h`, our encoder's
eval-mode features of x. The TorchScript module must give h within 1e-5 in torch.jit.load
(same libtorch kernels, one thread); the ONNX model within 1e-4 in onnxruntime (other kernels,
other summation orders). Both relative to max(1, max |h|); NaN or a shape mismatch fails.
"""
import argparse
import sys

import numpy as np
import torch
from safetensors.torch import load_file


def close(name, got, want, tol):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        sys.exit(f"{name}: shape {got.shape} != {want.shape}")
    diff = np.abs(got - want).max()
    scale = max(1.0, np.abs(want).max())
    if not diff <= tol * scale:  # also catches NaN
        sys.exit(f"{name}: max |diff| {diff} > {tol} x {scale}")
    print(f"{name}: max |diff| {diff:.3g} (scale {scale:.3g}) ok")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--io", required=True)
    p.add_argument("--torchscript")
    p.add_argument("--onnx")
    a = p.parse_args()
    torch.set_num_threads(1)
    io = load_file(a.io)
    x, h = io["x"], io["h"]
    if a.torchscript:
        m = torch.jit.load(a.torchscript, map_location="cpu").eval()
        with torch.no_grad():
            close("torchscript", m(x).numpy(), h.numpy(), 1e-5)
    if a.onnx:
        import onnxruntime as ort

        s = ort.InferenceSession(a.onnx, providers=["CPUExecutionProvider"])
        (out,) = s.run(["features"], {"images": x.numpy()})
        close("onnx", out, h.numpy(), 1e-4)
    print("ok")


if __name__ == "__main__":
    main()
