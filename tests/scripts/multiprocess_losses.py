"""One process of a many-host run on loopback (started by launch/local_multiprocess.sh): the losses of 3
train steps of the tiny config on a data-parallel mesh over all processes' devices, each process feeding
only its rows of the global batch; then a 2-step `train_and_evaluate` into a shared workdir (each process
reading its share of the dataset, Orbax writing from all, metrics from process 0, a profiler trace of step 2
from every process) with an in-loop k-NN evaluation at its end (each process feeding its rows of the features).

    launch/local_multiprocess.sh 2 2 python tests/scripts/multiprocess_losses.py WORKDIR DATA_PATH [--losses_only | --labelled LABELLED_PATH]

Process 0 prints one JSON line.
"""
import json
import sys

import jax

from sarmae_jax.convert import teacher_weights
from sarmae_jax.evaluate import in_loop
from sarmae_jax.runtime import distributed, sharding
from sarmae_jax.training import loop, metrics
from tests.conftest import build_parts, synthetic_batch, tiny_config
from tests.tiny_train_config import get_config


def losses(steps: int = 3) -> list[float]:
    c = tiny_config()
    mesh = sharding.make_mesh(c.mesh)
    parts = build_parts(c, mesh)
    teacher = jax.device_put(teacher_weights.load_teacher_params(c.sarc.teacher, parts.modules.teacher,
                                                                 c.model.image_size), sharding.replicated(mesh))
    step = parts.jit_step()
    rows = c.train.batch_size // jax.process_count()
    mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
    out = []
    state = parts.init_state(jax.random.key(0))
    with jax.set_mesh(mesh):
        for i in range(steps):
            local = {k: v[mine] for k, v in synthetic_batch(c, i).items()}  # this process's share only
            state, m = step(state, loop.global_batch(local, sharding.batch_sharding(mesh)), teacher)
            out.append(float(m["loss"]))
    return out


if __name__ == "__main__":
    distributed.maybe_initialize()
    workdir, data_path = sys.argv[1:3]
    result = {"processes": jax.process_count(), "devices": jax.device_count(), "losses": losses()}
    if "--losses_only" not in sys.argv:
        c = get_config()
        c.data.path, c.train.num_steps = data_path, 2
        # Every process traces step 2, each into its own <workdir>/profile/process_<i>/ (tests/test_multihost.py).
        c.train.profile, c.train.profile_all_processes = (2, 1), True
        c.evals.knn = in_loop.evaluator_config("knn", at_end=True)  # every process feeds its rows, process 0 writes
        c.evals.knn.dataset.path = sys.argv[sys.argv.index("--labelled") + 1]
        result["trained_loss"] = loop.train_and_evaluate(c, workdir, evaluators=in_loop.build)["loss"]
    if metrics.is_main_process():
        print(json.dumps(result), flush=True)
