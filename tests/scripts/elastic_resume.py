"""One process of a run resumed on some number of processes (started by launch/local_multiprocess.sh): the
6-step tiny config (tests/conftest.py: six_step_config) trained into WORKDIR, which holds the checkpoint of a
run on another number of processes.

    launch/local_multiprocess.sh P D python tests/scripts/elastic_resume.py WORKDIR DATA RECORD

Each process writes RECORD.<process index>.json: for every global batch position it drew, the rows of that
batch it read and a fingerprint (SHA-1 of the SAR pixels) of each.
"""
import hashlib
import json
import sys

import jax

from sarmae_jax.data import pipeline
from sarmae_jax.runtime import distributed
from sarmae_jax.training import loop, metrics
from tests.conftest import six_step_config


class RecordingIterator(pipeline.TrainIterator):
    """The trainer's iterator, noting which rows of which global batch this process read."""

    seen: dict[int, dict[int, str]] = {}

    def __next__(self):
        position = self.position
        batch = super().__next__()
        rows = self.rows if self.rows is not None else range(len(batch["sar"]))
        self.seen[position] = {int(r): hashlib.sha1(img.tobytes()).hexdigest() for r, img in zip(rows, batch["sar"])}
        return batch


if __name__ == "__main__":
    metrics.setup_logging()
    distributed.maybe_initialize()
    workdir, data_path, record = sys.argv[1:4]
    pipeline.make_train_iterator = lambda cfg, **kw: RecordingIterator(cfg, **kw)
    # The saved run was the same config stopped at 2 steps: its num_steps change is accepted explicitly.
    result = loop.train_and_evaluate(six_step_config(data_path), workdir, resume_accept=("train.num_steps",))
    with open(f"{record}.{jax.process_index()}.json", "w") as f:
        json.dump({"processes": jax.process_count(), "devices": jax.device_count(),
                   "seen": RecordingIterator.seen, "result": result}, f)
