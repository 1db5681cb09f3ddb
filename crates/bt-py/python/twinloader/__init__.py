"""Barlow Twins twin views for PyTorch, produced by Rust (bt-data).

    from twinloader import TwinLoader
    loader = TwinLoader("imagenet/train", "imagenet-resnet50", batch_size=256, threads=8,
                        rank=rank, world_size=world_size)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for y1, y2, labels in loader:          # NumPy float32 NCHW, normalized
            y1 = torch.from_numpy(y1).cuda(non_blocking=True)
            ...

See ``TwinLoader`` and the package README (crates/bt-py/README.md).
"""
from ._twinloader import DataError, Epoch, TwinLoader, ViewBuffer, __version__

__all__ = ["TwinLoader", "Epoch", "DataError", "ViewBuffer", "__version__"]
