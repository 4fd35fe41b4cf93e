"""`train.profile`: a jax.profiler trace of the chosen steps lands in <workdir>/profile, and tracing changes
nothing the run computes."""
import glob
import logging
import os

import jax
import numpy as np

from sarmae_jax.training import checkpoint, loop
from tests.conftest import tiny_config


def test_profile_writes_a_trace_of_the_chosen_steps_and_leaves_the_results_unchanged(tmp_path, tiny_dataset, caplog):
    c = tiny_config()
    c.data.path, c.train.num_steps = tiny_dataset, 3
    plain = loop.train_and_evaluate(c, str(tmp_path / "plain"))
    assert not os.path.exists(tmp_path / "plain" / "profile")

    c.train.profile = (2, 1)
    with caplog.at_level(logging.INFO, logger="sarmae_jax"):
        traced = loop.train_and_evaluate(c, str(tmp_path / "traced"))
    runs = glob.glob(str(tmp_path / "traced" / "profile" / "plugins" / "profile" / "*"))
    assert len(runs) == 1  # one trace, of steps 2-2
    xplane = glob.glob(os.path.join(runs[0], "*.xplane.pb"))
    perfetto = glob.glob(os.path.join(runs[0], "*.trace.json.gz"))
    assert xplane and os.path.getsize(xplane[0]) > 1000 and perfetto and os.path.getsize(perfetto[0]) > 100
    messages = [r.getMessage() for r in caplog.records]
    assert any("profiling steps 2-2 into " + str(tmp_path / "traced" / "profile") in m for m in messages)
    assert any("wrote a profiler trace to " + str(tmp_path / "traced" / "profile") in m for m in messages)

    assert plain["loss"] == traced["loss"]
    a, _ = checkpoint.load_export(str(tmp_path / "plain" / "export"))
    b, _ = checkpoint.load_export(str(tmp_path / "traced" / "export"))
    jax.tree.map(np.testing.assert_array_equal, a, b)
