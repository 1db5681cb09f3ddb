"""Fixtures of the twinloader tests: real datasets written to disk (a CIFAR-10 binary folder,
an image folder of JPEGs and PNGs) and the Rust pipeline's own batches as the reference
(`crates/bt-data/examples/dump_batch.rs`, run as a separate process).

The package under test is the installed `twinloader` (`cargo xtask test` builds and installs it
from source with pip before running pytest)."""
import io
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
CIFAR_RECORD = 1 + 3 * 32 * 32


def write_cifar(dir: Path, per_file: int, seed: int = 0) -> Path:
    """The official CIFAR-10 binary layout with random pixels: 5 train files of `per_file`
    records, a test file, the class names."""
    rng = np.random.default_rng(seed)
    dir.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        rec = np.empty((per_file, CIFAR_RECORD), dtype=np.uint8)
        rec[:, 0] = rng.integers(0, 10, per_file)
        rec[:, 1:] = rng.integers(0, 256, (per_file, CIFAR_RECORD - 1))
        (dir / name).write_bytes(rec.tobytes())
    (dir / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n\n")
    return dir


def image_bytes(w: int, h: int, fmt: str, seed: int) -> bytes:
    """A smooth random image (gradients plus noise, so crops and resizes see structure)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * (c + 1) * 255 // max(w, 1)) % 256 for c in range(3)], -1)
    base = (base + (y[..., None] * 3) + rng.integers(0, 40, (h, w, 3))) % 256
    im = Image.fromarray(base.astype(np.uint8), "RGB")
    buf = io.BytesIO()
    if fmt == "JPEG":
        im.save(buf, "JPEG", quality=90)
    else:
        im.save(buf, fmt)
    return buf.getvalue()


# (class, name, width, height, format): sizes around and well above 96 px, so at image_size 96
# the crops take the full-size and the reduced (DCT 1/2, 1/4) JPEG decodes.
FOLDER_IMAGES = [
    ("cat", "a.jpg", 120, 97, "JPEG"),
    ("cat", "b.jpg", 400, 300, "JPEG"),
    ("cat", "c.png", 150, 180, "PNG"),
    ("cat", "d.jpeg", 800, 520, "JPEG"),
    ("cat", "e.jpg", 64, 200, "JPEG"),
    ("cat", "f.webp", 130, 130, "WEBP"),
    ("dog", "g.jpg", 333, 250, "JPEG"),
    ("dog", "h.png", 96, 96, "PNG"),
    ("dog", "i.jpg", 1024, 700, "JPEG"),
    ("dog", "j.jpg", 210, 410, "JPEG"),
    ("dog", "k.png", 300, 120, "PNG"),
    ("dog", "l.jpg", 500, 500, "JPEG"),
]


def write_folder(dir: Path) -> Path:
    for i, (cls, name, w, h, fmt) in enumerate(FOLDER_IMAGES):
        (dir / cls).mkdir(parents=True, exist_ok=True)
        (dir / cls / name).write_bytes(image_bytes(w, h, fmt, i))
    return dir


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory):
    return write_cifar(tmp_path_factory.mktemp("cifar"), per_file=8)


@pytest.fixture(scope="session")
def folder_dir(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("folder"))


@pytest.fixture(scope="session")
def dump_bin():
    """The Rust reference program, built once (a no-op after `cargo xtask test`'s build)."""
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", "bt-data", "--example", "dump_batch"],
        cwd=ROOT,
        check=True,
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    exe = target / "release" / "examples" / "dump_batch"
    assert exe.is_file(), f"{exe} was not built"
    return exe


@pytest.fixture()
def rust_batch(dump_bin, tmp_path):
    """rust_batch(preset, data, epoch, batch, rank, world, threads, overrides) -> dict of arrays
    (view_a, view_b, labels, indices) of the Rust pipeline, through its channel."""
    count = [0]

    def run(preset, data, epoch, batch, overrides, rank=0, world=1, threads=2):
        count[0] += 1
        out = tmp_path / f"rust{count[0]}"
        cmd = [str(dump_bin), preset, str(data), str(out), str(epoch), str(batch), str(rank), str(world), str(threads)]
        subprocess.run(cmd + list(overrides), check=True, capture_output=True)
        return {k: np.load(out / f"{k}.npy") for k in ("view_a", "view_b", "labels", "indices")}

    return run


def assert_bits_equal(got: np.ndarray, want: np.ndarray, what: str):
    """Same dtype, shape and bits (so a NaN or a -0.0 vs 0.0 difference fails too)."""
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} vs {want.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    g = np.ascontiguousarray(got).view(np.uint8)
    w = np.ascontiguousarray(want).view(np.uint8)
    diff = np.flatnonzero(g != w)
    assert diff.size == 0, f"{what}: {diff.size} bytes differ, first at byte {diff[0]}"
