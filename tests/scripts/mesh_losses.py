"""Print the losses of N train steps of the tiny config on each mesh given as `data,fsdp,tensor` (JSON on stdout).

Run in a fresh process with `XLA_FLAGS=--xla_force_host_platform_device_count=8` so that the device count is
set before JAX starts; tests/test_sharding.py compares the outputs of several meshes.
"""
import json
import sys

import jax
import numpy as np


def run(mesh_spec: str, steps: int = 3) -> dict:
    from sarmae_jax import optim, sharding, train
    from sarmae_jax.models import sarmae, teachers
    from tests.conftest import tiny_config
    from tests.test_train import _batch

    c = tiny_config()
    c.model.size = "mini"
    d, f, t = (int(x) for x in mesh_spec.split(","))
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = d, f, t
    mesh = sharding.make_mesh(c.mesh, jax.devices()[: d * f * t])
    modules = sarmae.build(c)
    schedule = optim.make_schedule(c.optim, global_batch=c.train.batch_size, total_steps=100, steps_per_epoch=10)
    tx = optim.make_optimizer(c.optim, schedule)
    abstract, shardings = train.state_shardings(modules, tx, c, mesh)
    teacher = jax.device_put(teachers.load_teacher_params(c.sarc.teacher, modules.teacher, c.model.image_size),
                             sharding.replicated(mesh))
    batch_sharding = sharding.batch_sharding(mesh)
    step = jax.jit(train.make_train_step(modules, tx, c, schedule),
                   in_shardings=(shardings, batch_sharding, sharding.replicated(mesh)),
                   out_shardings=(shardings, sharding.replicated(mesh)), donate_argnums=(0,))
    with jax.set_mesh(mesh):
        state = jax.jit(lambda k: train.init_train_state(modules, tx, c, k), out_shardings=shardings)(jax.random.key(0))
        losses = []
        for i in range(steps):
            batch = {k: jax.device_put(v, batch_sharding) for k, v in _batch(c, i).items()}
            state, m = step(state, batch, teacher)
            losses.append(float(m["loss"]))
    qkv = state.params["encoder"]["stack"]["blocks"]["attn"]["qkv"]["kernel"]
    return {"losses": losses, "qkv_sharding": str(qkv.sharding.spec),
            "qkv_shards": len({str(s.index) for s in qkv.addressable_shards}),
            "checksum": float(np.sum(np.abs(np.asarray(jax.device_get(qkv)))))}


if __name__ == "__main__":
    jax.config.update("jax_compilation_cache_dir", "")  # each mesh compiles its own program anyway
    print(json.dumps({spec: run(spec) for spec in sys.argv[1:]}))
