"""Sharding: the same steps give the same losses on 1 device and on 8 fake CPU devices under several meshes."""
import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from sarmae_jax.models import vit
from sarmae_jax.runtime import sharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*mesh_specs: str) -> dict:
    env = dict(os.environ, XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8",
               PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "scripts", "mesh_losses.py"), *mesh_specs],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_losses_match_across_meshes():
    # Tolerance: different meshes reduce in different orders; f32 rounding differs, maths does not.
    runs = _run("1,1,1", "8,1,1", "1,8,1", "4,1,2", "2,2,2")
    reference = runs["1,1,1"]["losses"]
    for spec, r in runs.items():
        np.testing.assert_allclose(r["losses"], reference, rtol=2e-4, err_msg=spec)
        assert r["checksum"] == pytest.approx(runs["1,1,1"]["checksum"], rel=1e-4), spec
    # The parameters really are sharded: qkv kernel [depth, embed, 3, heads, kv] split on embed by fsdp,
    # on heads by tensor.
    assert runs["1,8,1"]["qkv_shards"] == 8 and "fsdp" in runs["1,8,1"]["qkv_sharding"]
    assert runs["2,2,2"]["qkv_shards"] == 4 and "tensor" in runs["2,2,2"]["qkv_sharding"]
    assert runs["4,1,2"]["qkv_shards"] == 2 and "tensor" in runs["4,1,2"]["qkv_sharding"]  # data x tensor
    assert runs["8,1,1"]["qkv_shards"] == 1  # pure data parallelism replicates parameters
    # ... but not Adam's moments (ZeRO-1, optim.shard_over_data): each data-parallel device holds a slice.
    assert runs["8,1,1"]["mu_shards"] == 8 and runs["4,1,2"]["mu_shards"] == 8 and runs["2,2,2"]["mu_shards"] == 8
    assert runs["1,1,1"]["mu_shards"] == 1


def test_mesh_shape_resolution_and_errors():
    cfg = ml_collections.ConfigDict(dict(data=-1, fsdp=2, tensor=1))
    assert sharding.mesh_shape(cfg, 8) == (4, 2, 1)
    with pytest.raises(ValueError, match="not divisible"):
        sharding.mesh_shape(ml_collections.ConfigDict(dict(data=-1, fsdp=3, tensor=1)), 8)
    with pytest.raises(ValueError, match="multiply to 4 but there are 8 devices"):
        sharding.mesh_shape(ml_collections.ConfigDict(dict(data=2, fsdp=2, tensor=1)), 8)


@pytest.mark.parametrize("sizes, split", [((8, 1, 1), False), ((1, 8, 1), False), ((4, 1, 2), True)])
def test_attention_projections_flatten_unless_heads_are_split(sizes, split):
    # The qkv kernel [embed, 3, heads, kv] is contracted as one flattened 2-D matmul (fast on CPU) unless
    # its heads axis is split across devices, which the flattened view could not express.
    import flax.linen as nn
    import jax

    mesh = jax.sharding.AbstractMesh(sizes, sharding.MESH_AXES)
    with jax.sharding.use_abstract_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
        assert vit._split_across_devices((None, "heads")) is split
        assert vit._split_across_devices(("kv",)) is False
    assert vit._split_across_devices((None, "heads")) is False  # no mesh: one device
