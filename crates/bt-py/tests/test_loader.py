"""The Python surface of twinloader: bit-equality with the Rust pipeline, sharding, epochs,
errors, the GIL and array lifetime. Each test writes its own data (see conftest.py)."""
import gc
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import twinloader
from twinloader import TwinLoader

from conftest import FOLDER_IMAGES, assert_bits_equal, image_bytes, write_cifar

CIFAR = dict(preset="cifar-resnet18", overrides={"data.drop_remainder": False})
# The official views (pil-u8 arithmetic, JPEG DCT-domain reduction) at 96 px.
FOLDER_SETS = ["data.image_size=96", "run.seed=7"]


def first(epoch_iter):
    return next(iter(epoch_iter))


@pytest.mark.parametrize("threads", [1, 3])
def test_cifar_batches_equal_rust_bit_for_bit(cifar_dir, rust_batch, threads):
    loader = TwinLoader(cifar_dir, "cifar-resnet18", batch_size=16, threads=threads, drop_last=False, return_indices=True)
    assert len(loader) == 3  # 40 images, the last batch short
    for epoch, batch in [(0, 0), (1, 2)]:
        a, b, labels, idx = first(loader.iter_epoch(epoch, batch))
        ref = rust_batch("cifar-resnet18", cifar_dir, epoch, batch, ["data.batch_size=16", "data.drop_remainder=false"])
        assert_bits_equal(a, ref["view_a"], f"view_a e{epoch} b{batch}")
        assert_bits_equal(b, ref["view_b"], f"view_b e{epoch} b{batch}")
        assert_bits_equal(labels, ref["labels"], "labels")
        assert_bits_equal(idx, ref["indices"], "indices")
        assert a.shape == ((16 if batch < 2 else 8), 3, 32, 32)


@pytest.mark.parametrize("threads", [1, 3])
def test_folder_batches_at_96px_equal_rust_bit_for_bit(folder_dir, rust_batch, threads):
    loader = TwinLoader(folder_dir, "imagenet-resnet50", overrides=FOLDER_SETS, batch_size=4, threads=threads)
    assert loader.image_size == 96 and len(loader) == 3 and loader.class_names == ["cat", "dog"]
    assert loader.num_images == len(FOLDER_IMAGES)  # every file of the fixture is read
    loader.set_epoch(2)
    got = list(loader)  # the whole epoch through __iter__
    assert len(got) == 3 and loader.epoch == 3
    for batch in range(3):
        ref = rust_batch("imagenet-resnet50", folder_dir, 2, batch, FOLDER_SETS + ["data.batch_size=4"])
        a, b, labels = got[batch]
        assert_bits_equal(a, ref["view_a"], f"view_a b{batch}")
        assert_bits_equal(b, ref["view_b"], f"view_b b{batch}")
        assert_bits_equal(labels, ref["labels"], "labels")
    # Normalized ImageNet views: not clipped to [0, 1].
    assert got[0][0].min() < -0.5 and got[0][0].max() > 1.0


def test_uint8_nhwc_views_normalize_to_the_float32_batches(folder_dir):
    f32 = TwinLoader(folder_dir, "imagenet-resnet50", overrides=FOLDER_SETS, batch_size=4, threads=2)
    u8 = TwinLoader(folder_dir, "imagenet-resnet50", overrides=FOLDER_SETS, batch_size=4, threads=3, dtype="uint8")
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    n = 0
    for x, y in zip(f32.iter_epoch(1), u8.iter_epoch(1)):
        for k in range(2):
            assert y[k].dtype == np.uint8 and y[k].shape == (4, 96, 96, 3)
            # torchvision's ToTensor + Normalize in float32, on the u8 NHWC views
            t = (y[k].transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255) - mean) / std
            assert_bits_equal(t, x[k], f"batch {n} view {k}")
        assert_bits_equal(y[2], x[2], "labels")
        n += 1
    assert n == 3


def test_shards_cover_the_epoch_once_and_match_the_unsharded_batches(cifar_dir, rust_batch):
    n, world, per = 40, 4, 2
    whole = TwinLoader(cifar_dir, **CIFAR, batch_size=world * per, threads=2, return_indices=True)
    ranks = [
        TwinLoader(cifar_dir, **CIFAR, batch_size=per, threads=2, rank=r, world_size=world, return_indices=True)
        for r in range(world)
    ]
    assert all(len(r) == len(whole) == n // (world * per) for r in ranks)
    for r in ranks:
        r.set_epoch(3)
    whole.set_epoch(3)
    seen = []
    for step, parts in enumerate(zip(whole, *ranks)):
        full, shards = parts[0], parts[1:]
        for k in range(4):  # view_a, view_b, labels, indices: rank slices concatenated
            assert_bits_equal(np.concatenate([s[k] for s in shards]), full[k], f"step {step} field {k}")
        seen.extend(i for s in shards for i in s[3].tolist())
    assert sorted(seen) == list(range(n)), "every image exactly once per epoch over the ranks"
    ref = rust_batch("cifar-resnet18", cifar_dir, 3, 1, [f"data.batch_size={world * per}"], rank=2, world=world)
    a, _, _, idx = first(ranks[2].iter_epoch(3, 1))
    assert_bits_equal(a, ref["view_a"], "rank 2 view_a")
    assert_bits_equal(idx, ref["indices"], "rank 2 indices")


def test_set_epoch_changes_the_order_and_repeats_an_epoch_exactly(cifar_dir):
    loader = TwinLoader(cifar_dir, **CIFAR, batch_size=8, threads=2, return_indices=True)

    def epoch_of(e):
        loader.set_epoch(e)
        return list(loader)

    e0, e1, e0_again = epoch_of(0), epoch_of(1), epoch_of(0)
    order = lambda ep: np.concatenate([b[3] for b in ep])  # noqa: E731
    assert sorted(order(e0).tolist()) == sorted(order(e1).tolist()) == list(range(40))
    assert not np.array_equal(order(e0), order(e1)), "epoch 1 has the order of epoch 0"
    for x, y in zip(e0, e0_again):
        for k in range(4):
            assert_bits_equal(x[k], y[k], "epoch 0 twice")
    # Without set_epoch each iteration is the next epoch (as DataLoader(shuffle=True)).
    assert loader.epoch == 1
    assert np.array_equal(order(list(loader)), order(e1)) and loader.epoch == 2


def test_arrays_are_zero_copy_and_outlive_the_loader(folder_dir):
    loader = TwinLoader(folder_dir, "imagenet-resnet50", overrides=FOLDER_SETS, batch_size=4, threads=2)
    it = iter(loader)
    a, b, labels = next(it)
    assert a.dtype == np.float32 and a.shape == (4, 3, 96, 96)
    keep = (a.copy(), b.copy(), labels.copy())
    # Later batches while `a`, `b` are held: their buffers must not be reused under them.
    rest = [x[0].copy() for x in it]
    del it, loader
    gc.collect()
    # A second loader's batches go through the allocator (and the free list) again.
    other = TwinLoader(folder_dir, "imagenet-resnet50", overrides=FOLDER_SETS, batch_size=4, threads=2)
    for _ in range(2):
        for x in other:
            del x
    del other
    gc.collect()
    for got, want, what in zip((a, b, labels), keep, ("view_a", "view_b", "labels")):
        assert_bits_equal(got, want, what)
    assert not any(np.array_equal(a, r) for r in rest)
    # Views of a buffer the pipeline filled (no copy out of it), one owner per view.
    assert isinstance(a.base, twinloader.ViewBuffer) and isinstance(b.base, twinloader.ViewBuffer)
    assert not a.flags.owndata and a.flags.c_contiguous and a.flags.writeable


def png_with_bad_pixels() -> bytes:
    """A PNG whose header and end marker are intact (it passes the header scan) but whose pixel
    data holds only half the rows: the error comes from the decode, during iteration."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    w = h = 120
    rows = b"".join(b"\x00" + bytes(range(w)) * 3 for _ in range(h // 2))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def bad_case(tmp_path, case):
    """(data path, kwargs, exception type, text the message must contain)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "ok.jpg").write_bytes(image_bytes(200, 150, "JPEG", 1))
    (folder / "ok2.png").write_bytes(image_bytes(130, 140, "PNG", 2))
    kw = dict(preset="imagenet-resnet50", overrides=["data.image_size=64"], batch_size=1, threads=1)
    if case == "missing folder":
        return tmp_path / "nope", kw, twinloader.DataError, "nope"
    if case == "not an image":
        (folder / "notes.jpg").write_text("hello, not a JPEG")
        return folder, kw, twinloader.DataError, "notes.jpg"
    if case == "truncated png":
        (folder / "cut.png").write_bytes(image_bytes(100, 100, "PNG", 3)[:300])
        return folder, kw, twinloader.DataError, "cut.png"
    if case == "corrupt pixels":
        (folder / "zz_bad.png").write_bytes(png_with_bad_pixels())
        return folder, kw, twinloader.DataError, "zz_bad.png"
    if case == "images too small":
        kw["overrides"] = ["data.image_size=512"]
        return folder, kw, twinloader.DataError, "512"
    if case == "cifar file size":
        d = write_cifar(tmp_path / "cifar", per_file=2)
        with open(d / "data_batch_3.bin", "ab") as f:
            f.write(b"xx")
        return d, dict(preset="cifar-resnet18", batch_size=2), twinloader.DataError, "data_batch_3.bin"
    if case == "cifar file missing":
        d = write_cifar(tmp_path / "cifar", per_file=2)
        (d / "test_batch.bin").unlink()
        return d, dict(preset="cifar-resnet18", batch_size=2), twinloader.DataError, "test_batch.bin"
    if case == "file list entry":
        lst = tmp_path / "list.txt"
        lst.write_text("imgs/ok.jpg\nimgs/missing.jpg\n")
        return lst, kw, twinloader.DataError, "missing.jpg"
    if case == "unknown preset":
        return folder, dict(kw, preset="resnet9000"), ValueError, "resnet9000"
    if case == "unknown key":
        return folder, dict(kw, overrides={"data.imagesize": 64}), ValueError, "data.imagesize"
    if case == "bad value":
        return folder, dict(kw, overrides={"data.image_size": "huge"}), ValueError, "huge"
    if case == "image size range":
        return folder, dict(kw, image_size=1), ValueError, "data.image_size"
    if case == "rank":
        return folder, dict(kw, rank=2, world_size=2), ValueError, "rank 2"
    if case == "uint8 with f32 colour math":
        d = write_cifar(tmp_path / "cifar", per_file=2)
        return d, dict(preset="cifar-resnet18", batch_size=2, dtype="uint8"), twinloader.DataError, "color_math"
    if case == "dtype":
        return folder, dict(kw, dtype="float16"), ValueError, "float16"
    if case == "batch size":
        return folder, dict(kw, batch_size=0), ValueError, "batch_size"
    raise AssertionError(case)


BAD_CASES = [
    "missing folder", "not an image", "truncated png", "corrupt pixels", "images too small", "cifar file size",
    "cifar file missing", "file list entry", "unknown preset", "unknown key", "bad value", "image size range",
    "rank", "batch size", "uint8 with f32 colour math", "dtype",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_raises_with_the_rust_message(tmp_path, case):
    data, kw, exc, needle = bad_case(tmp_path, case)
    with pytest.raises(exc) as e:
        loader = TwinLoader(data, **kw)
        for _ in loader:  # decode errors surface while iterating
            pass
    assert needle in str(e.value), f"{case}: {e.value!r} does not name {needle!r}"


def test_skip_bad_images_counts_instead_of_failing(tmp_path):
    data, kw, _, _ = bad_case(tmp_path, "not an image")
    loader = TwinLoader(data, **dict(kw, overrides=kw["overrides"] + ["data.skip_bad_images=true"]))
    assert loader.num_images == 2 and loader.bad_images == 1
    assert sum(x[0].shape[0] for x in loader) == 2


GIL_SCRIPT = textwrap.dedent(
    """
    # The only image is a named pipe that a Python thread fills: once for the header scan in
    # the constructor, once for the decode in next(). If either call held the GIL, the writer
    # could never run and the call would wait forever.
    import os, sys, threading
    from twinloader import TwinLoader
    d, png = sys.argv[1], open(sys.argv[2], "rb").read()
    fifo = os.path.join(d, "only.png")
    os.mkfifo(fifo)
    writes, constructed = [], threading.Event()
    def writer():
        for k in range(2):
            if k == 1:
                constructed.wait()  # the scan has closed the pipe: the next reader is the decode
            with open(fifo, "wb") as f:
                f.write(png)
            writes.append(1)
    threading.Thread(target=writer, daemon=True).start()
    loader = TwinLoader(d, "imagenet-resnet50", image_size=32, batch_size=1, threads=1)
    constructed.set()
    assert len(writes) == 1, writes
    a, b, labels = next(iter(loader))
    assert len(writes) == 2 and a.shape == (1, 3, 32, 32), (writes, a.shape)
    print("ok")
    """
)


def test_gil_is_released_while_scanning_and_waiting(tmp_path):
    d = tmp_path / "fifo"
    d.mkdir()
    (tmp_path / "img.png").write_bytes(image_bytes(64, 64, "PNG", 5))
    # A watchdog, not a measurement: with the GIL held the child deadlocks (never finishes).
    r = subprocess.run(
        [sys.executable, "-c", GIL_SCRIPT, str(d), str(tmp_path / "img.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
