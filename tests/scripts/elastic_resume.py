"""One process of a run that may be stopped and resumed on another number of processes (started by
launch/local_multiprocess.sh): the tiny config trained for NUM_STEPS steps into WORKDIR, logging every step.

    launch/local_multiprocess.sh P D python tests/scripts/elastic_resume.py WORKDIR DATA NUM_STEPS STOP_AT RECORD

STOP_AT > 0 delivers a preemption notice to every process at that step (as JAX's preemption service would):
the trainer saves a checkpoint of it and returns. A later run in the same WORKDIR resumes from it.
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
from tests.tiny_train_config import get_config


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
    workdir, data_path, num_steps, stop_at, record = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    pipeline.make_train_iterator = lambda cfg, **kw: RecordingIterator(cfg, **kw)
    distributed.PreemptionWatch.should_stop = lambda self, step: step == stop_at
    c = get_config()
    c.data.path, c.train.num_steps = data_path, num_steps
    c.train.log_every, c.train.checkpoint_every = 1, 1000  # losses of every step; saves only when told to stop
    result = loop.train_and_evaluate(c, workdir)
    with open(f"{record}.{jax.process_index()}.json", "w") as f:
        json.dump({"processes": jax.process_count(), "devices": jax.device_count(),
                   "seen": RecordingIterator.seen, "result": result}, f)
