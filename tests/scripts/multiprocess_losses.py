"""One process of a many-host run on loopback (started by launch/local_multiprocess.sh): the losses of 3
train steps of the tiny config on a data-parallel mesh over all processes' devices, each process feeding
only its rows of the global batch; then a 2-step `train_and_evaluate` into a shared workdir (each process
reading its share of the dataset, Orbax writing from all, metrics from process 0).

    launch/local_multiprocess.sh 2 2 python tests/scripts/multiprocess_losses.py WORKDIR DATA_PATH [--losses_only]

Process 0 prints one JSON line.
"""
import json
import sys

import jax
import numpy as np


def losses(steps: int = 3) -> list[float]:
    from sarmae_jax import optim, sharding, train
    from sarmae_jax.models import sarmae, teachers
    from tests.conftest import tiny_config
    from tests.test_train import _batch

    c = tiny_config()
    mesh = sharding.make_mesh(c.mesh)
    modules = sarmae.build(c)
    schedule = optim.make_schedule(c.optim, global_batch=c.train.batch_size, total_steps=100, steps_per_epoch=10)
    tx = optim.make_optimizer(c.optim, schedule)
    _, shardings = train.state_shardings(modules, tx, c, mesh)
    teacher = jax.device_put(teachers.load_teacher_params(c.sarc.teacher, modules.teacher, c.model.image_size),
                             sharding.replicated(mesh))
    step = train.jit_train_step(modules, tx, c, schedule, mesh, shardings)
    rows = c.train.batch_size // jax.process_count()
    mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
    out = []
    with jax.set_mesh(mesh):
        state = jax.jit(lambda k: train.init_train_state(modules, tx, c, k), out_shardings=shardings)(jax.random.key(0))
        for i in range(steps):
            local = {k: v[mine] for k, v in _batch(c, i).items()}  # this process's share only
            state, m = step(state, train.global_batch(local, sharding.batch_sharding(mesh)), teacher)
            out.append(float(m["loss"]))
    return out


if __name__ == "__main__":
    from sarmae_jax import distributed, metrics, train
    from tests.tiny_train_config import get_config

    distributed.maybe_initialize()
    workdir, data_path = sys.argv[1:3]
    result = {"processes": jax.process_count(), "devices": jax.device_count(), "losses": losses()}
    if "--losses_only" not in sys.argv:
        c = get_config()
        c.data.path, c.train.num_steps = data_path, 2
        result["trained_loss"] = train.train_and_evaluate(c, workdir)["loss"]
    if metrics.is_main_process():
        print(json.dumps(result), flush=True)
