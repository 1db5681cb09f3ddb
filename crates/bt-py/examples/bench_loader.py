"""Twin pairs per second of twinloader from Python, timed as `bt-cli bench data --seconds` times
the Rust pipeline (bt_data::bench::pairs_per_second): one warm-up batch, then pairs delivered to
the consumer until the time is up, epoch after epoch. The consumer touches nothing (as the Rust
bench); each batch's arrays are released before the next, as a training loop does.

    python crates/bt-py/examples/bench_loader.py IMAGES [THREADS] [SECONDS] [BATCH] [SIZE]
"""
import sys
import time

from twinloader import TwinLoader

d = sys.argv[1]
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 15.0
batch = int(sys.argv[4]) if len(sys.argv) > 4 else 64
size = int(sys.argv[5]) if len(sys.argv) > 5 else 224

loader = TwinLoader(d, "imagenet-resnet50", batch_size=batch, image_size=size, threads=threads)
pairs, start, done = 0, None, False
while not done:
    for a, b, labels in loader:
        if start is None:
            start = time.perf_counter()
        else:
            pairs += a.shape[0]
            if time.perf_counter() - start >= seconds:
                done = True
                break
        del a, b, labels
dt = time.perf_counter() - start
print(f"twinloader (Python): {pairs / dt:.1f} pairs/s ({pairs} pairs in {dt:.1f}s, {threads} threads, batch {batch}, {size} px)")
