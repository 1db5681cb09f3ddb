"""Type stubs of twinloader (the native module is `twinloader._twinloader`)."""
import os
from typing import Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

View = Union[npt.NDArray[np.float32], npt.NDArray[np.uint8]]
Batch = Union[
    Tuple[View, View, npt.NDArray[np.int64]],
    Tuple[View, View, npt.NDArray[np.int64], npt.NDArray[np.int64]],
]

class DataError(RuntimeError):
    """A data error from the Rust pipeline; the message names the file, key or value."""

class ViewBuffer:
    """Owner of one batch view's memory (the `base` of its NumPy array)."""

class Epoch(Iterator[Batch]):
    """One epoch: `(view_a, view_b, labels)` per `next()` (plus `indices` with
    `return_indices=True`); views are float32 `(B, 3, S, S)`, labels int64 (-1: unlabeled)."""

    def __iter__(self) -> "Epoch": ...
    def __next__(self) -> Batch: ...
    def __len__(self) -> int:
        """Batches left."""
    def close(self) -> None:
        """Stops the epoch now."""

class TwinLoader:
    """Twin views of `data` with the `preset`'s augmentations (see the package README).

    data: a folder (CIFAR-10 / STL-10 binaries, or images) or a file listing image paths;
    None keeps the config's `data.dir`. preset: a bt-cli preset. config: a TOML file merged
    over it. overrides: bt-cli `--set` overrides, as a mapping or "key=value" strings. The
    other keyword arguments override the config too (None: keep it): `batch_size` is per
    rank (the global batch is `batch_size * world_size`), `threads` 0 = all cores.
    """

    def __init__(
        self,
        data: Optional[Union[str, os.PathLike]] = None,
        preset: str = "imagenet-resnet50",
        *,
        config: Optional[Union[str, os.PathLike]] = None,
        overrides: Optional[Union[Mapping[str, object], Sequence[str]]] = None,
        image_size: Optional[int] = None,
        batch_size: Optional[int] = None,
        threads: Optional[int] = None,
        seed: Optional[int] = None,
        drop_last: Optional[bool] = None,
        rank: int = 0,
        world_size: int = 1,
        return_indices: bool = False,
        dtype: str = "float32",
    ) -> None:
        """dtype: "float32" (NCHW, normalized) or "uint8" (NHWC, before ToTensor/Normalize, for
        normalization on the GPU; needs the pil-u8 colour math of the ImageNet presets)."""
    def __len__(self) -> int:
        """Batches per epoch."""
    def __iter__(self) -> Epoch:
        """The epoch `set_epoch` named, else the one after the last."""
    def set_epoch(self, epoch: int) -> None: ...
    def iter_epoch(self, epoch: int, start_batch: int = 0) -> Epoch: ...
    @property
    def epoch(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def image_size(self) -> int: ...
    @property
    def threads(self) -> int: ...
    @property
    def rank(self) -> int: ...
    @property
    def world_size(self) -> int: ...
    @property
    def num_images(self) -> int: ...
    @property
    def class_names(self) -> Optional[List[str]]: ...
    @property
    def bad_images(self) -> int: ...
    @property
    def config(self) -> str: ...
    @property
    def description(self) -> str: ...
