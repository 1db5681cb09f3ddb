#!/usr/bin/env python3
"""Rebuilds CIFAR-10 (JPEG-q75 variant) in the official binary layout from a BTJPEG10 pack.

usage: python3 unpack.py OUT_DIR [--pack FILE] [--jpg JPG_DIR]
writes OUT_DIR/cifar-10-batches-bin/{data_batch_1..5.bin,test_batch.bin,batches.meta.txt}
FILE defaults to cifar10-jpeg-q75.pack next to this script. Needs Pillow (decoding is Pillow's
libjpeg).

The bundle's copy of ../shared/datasets/cifar10-jpeg/unpack.py (same format, same output for the
full pack: 5 files of 10,000 records, checked), generalized to any record count so that
`gpu-check.sh --dry-run` (tests/gpu_check.rs) runs this very script on a small pack: the training
records are cut into 5 files of as equal size as possible, the last taking the remainder (as
bt-data's write_cifar_binary).

Pack layout: b'BTJPEG10', u32 header length, the JPEG header every file shares, u32 n_train,
u32 n_test, then per image: u8 label, u16 length, the JPEG bytes after the shared header without
the final FF D9.
"""
import io, os, struct, sys
from PIL import Image

CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
HERE = os.path.dirname(os.path.abspath(__file__))
RECORD = 3073


def records(path):
    data = open(path, 'rb').read()
    assert data[:8] == b'BTJPEG10', f'{path}: not a BTJPEG10 pack'
    (hlen,) = struct.unpack_from('<I', data, 8)
    header = data[12:12 + hlen]
    off = 12 + hlen
    n_train, n_test = struct.unpack_from('<II', data, off)
    off += 8
    out = []
    for i in range(n_train + n_test):
        label, n = struct.unpack_from('<BH', data, off)
        off += 3
        assert label < 10, f'{path}: record {i} has label {label}'
        out.append(('train' if i < n_train else 'test', i, label, header + data[off:off + n] + b'\xff\xd9'))
        off += n
    assert off == len(data), f'{path}: trailing bytes in pack'
    return n_train, n_test, out


def main():
    args = sys.argv[1:]
    if not args or args[0].startswith('-'):
        sys.exit(__doc__)
    out = args[0]
    opt = lambda k: args[args.index(k) + 1] if k in args else None
    pack = opt('--pack') or os.path.join(HERE, 'cifar10-jpeg-q75.pack')
    jpg_dir = opt('--jpg')
    dst = os.path.join(out, 'cifar-10-batches-bin')
    os.makedirs(dst, exist_ok=True)
    n_train, n_test, recs = records(pack)
    assert n_train >= 5 and n_test >= 1, f'{pack}: {n_train} train / {n_test} test records'
    train, test = bytearray(), bytearray()
    for split, i, label, jpg in recs:
        im = Image.open(io.BytesIO(jpg)).convert('RGB')
        assert im.size == (32, 32), f'{pack}: record {i} is {im.size}, not 32x32'
        rec = bytes([label]) + b''.join(band.tobytes() for band in im.split())
        (train if split == 'train' else test).extend(rec)
        if jpg_dir:
            d = os.path.join(jpg_dir, split, CLASSES[label])
            os.makedirs(d, exist_ok=True)
            open(os.path.join(d, f'{i:05d}.jpg'), 'wb').write(jpg)
    assert len(train) == n_train * RECORD and len(test) == n_test * RECORD
    per = n_train // 5
    for b in range(5):
        hi = n_train if b == 4 else (b + 1) * per
        open(os.path.join(dst, f'data_batch_{b + 1}.bin'), 'wb').write(train[b * per * RECORD:hi * RECORD])
    open(os.path.join(dst, 'test_batch.bin'), 'wb').write(test)
    open(os.path.join(dst, 'batches.meta.txt'), 'w').write('\n'.join(CLASSES) + '\n')
    print(f'wrote {dst} ({n_train} train, {n_test} test records)')


if __name__ == '__main__':
    main()
