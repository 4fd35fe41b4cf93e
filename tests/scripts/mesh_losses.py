"""Print the losses of N train steps of the tiny config on each mesh given as `data,fsdp,tensor` (JSON on stdout).

Run in a fresh process with `XLA_FLAGS=--xla_force_host_platform_device_count=8` so that the device count is
set before JAX starts; tests/test_sharding.py compares the outputs of several meshes.
"""
import json
import sys

import jax
import numpy as np

from sarmae_jax.convert import teacher_weights
from sarmae_jax.runtime import sharding
from tests.conftest import build_parts, synthetic_batch, tiny_config


def run(mesh_spec: str, steps: int = 3) -> dict:
    c = tiny_config()
    c.model.size = "mini"
    d, f, t = (int(x) for x in mesh_spec.split(","))
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = d, f, t
    mesh = sharding.make_mesh(c.mesh, jax.devices()[: d * f * t])
    parts = build_parts(c, mesh)
    teacher = jax.device_put(teacher_weights.load_teacher_params(c.sarc.teacher, parts.modules.teacher,
                                                                 c.model.image_size), sharding.replicated(mesh))
    batch_sharding = sharding.batch_sharding(mesh)
    step = parts.jit_step()
    state = parts.init_state(jax.random.key(0))
    with jax.set_mesh(mesh):
        losses = []
        for i in range(steps):
            batch = {k: jax.device_put(v, batch_sharding) for k, v in synthetic_batch(c, i).items()}
            state, m = step(state, batch, teacher)
            losses.append(float(m["loss"]))
    qkv = state.params["encoder"]["stack"]["blocks"]["attn"]["qkv"]["kernel"]
    mu = state.opt_state[1][0].mu["encoder"]["stack"]["blocks"]["attn"]["qkv"]["kernel"]  # (clip, (adam, ...))
    return {"losses": losses, "qkv_sharding": str(qkv.sharding.spec),
            "mu_shards": len({str(s.index) for s in mu.addressable_shards}),
            "qkv_shards": len({str(s.index) for s in qkv.addressable_shards}),
            "checksum": float(np.sum(np.abs(np.asarray(jax.device_get(qkv)))))}


if __name__ == "__main__":
    jax.config.update("jax_compilation_cache_dir", "")  # each mesh compiles its own program anyway
    print(json.dumps({spec: run(spec) for spec in sys.argv[1:]}))
