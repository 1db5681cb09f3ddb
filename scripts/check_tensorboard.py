"""Reads a run folder's TensorBoard event files with the `tensorboard` package's own code and
prints what TensorBoard would show, as one JSON line on stdout.

Used by crates/bt-train/tests/tensorboard.rs, which compares the output with the run's
metrics.jsonl. Two readers of the package are used:

- `tensorboard.compat.tensorflow_stub.pywrap_tensorflow.PyRecordReader_New`, strictly: every
  record of every file must pass its header and payload CRC-32C checks. (TensorBoard's loaders
  swallow a CRC failure as "truncated record, retry later", which would hide a framing bug.)
- `EventAccumulator` on the folder: the loader behind TensorBoard's scalar dashboard (all event
  files of the folder in name order, `data_compat` migration of `simple_value`, purging rules),
  with no sampling (size guidance 0 = keep everything).

Output: {"files": [...], "records": {file: count}, "file_versions": [...],
         "scalars": {tag: [[step, value], ...]}}

Usage: python scripts/check_tensorboard.py RUN_DIR
"""

import json
import os
import sys

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub import errors
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow


def strict_records(path):
    """Every record of `path`, failing on any CRC or truncation error."""
    reader = pywrap_tensorflow.PyRecordReader_New(path.encode(), 0, b"", None)
    out = []
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return out
        out.append(reader.record())


def main():
    run_dir = sys.argv[1]
    files = sorted(f for f in os.listdir(run_dir) if "tfevents" in f)
    if not files:
        sys.exit(f"no events.out.tfevents.* file in {run_dir}")
    records = {}
    file_versions = []
    for f in files:
        recs = strict_records(os.path.join(run_dir, f))
        records[f] = len(recs)
        first = event_pb2.Event.FromString(recs[0])
        file_versions.append(first.file_version)

    acc = event_accumulator.EventAccumulator(run_dir, size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    scalars = {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    print(json.dumps({"files": files, "records": records, "file_versions": file_versions, "scalars": scalars}))


if __name__ == "__main__":
    main()
