"""Checks that need 8 fake CPU devices, in one process (one JAX start-up for all of them):

  dry_run   AOT-compile the tiny config's step on a (data 2, fsdp 2, tensor 2) mesh with 2 micro-batches,
            with a teacher checkpoint path that does not exist (a dry run reads no weights).
  reshard   save a train state sharded over 8 devices (fsdp 8), restore it onto 4 devices (data 2 x fsdp 2)
            and onto 1 device; the values must be bitwise equal.
  full_disk a save that fails (file-size limit: the OS refuses writes past 4 kB, as on a full disk) raises
            CheckpointSaveError and leaves the previous checkpoint restorable.

Run with `XLA_FLAGS=--xla_force_host_platform_device_count=8`; prints one JSON object on stdout.
"""
import json
import resource
import signal
import sys

import jax
import ml_collections
import numpy as np

from sarmae_jax.runtime import sharding
from sarmae_jax.training import checkpoint, dry_run
from tests.conftest import build_parts, tiny_config


def dry_run_check() -> dict:
    c = tiny_config()
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
    c.train.batch_size, c.train.grad_accum_steps = 16, 2
    c.sarc.teacher.checkpoint = "/nonexistent/teacher_weights.pth"
    report = dry_run.compile_train_step(c)
    return {"report": report, "text": dry_run.format_report(report)}


def _tiny_state(mesh):
    parts = build_parts(tiny_config(), mesh, total_steps=10, steps_per_epoch=5)
    return parts.init_state(jax.random.key(3)), parts.abstract_state


def _mesh(data, fsdp, devices):
    return sharding.make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=1)), devices)


def reshard_check(workdir: str) -> dict:
    state8, _ = _tiny_state(_mesh(1, 8, jax.devices()))
    ckpt = checkpoint.Checkpoints(workdir, keep=2)
    ckpt.save(5, state8, None, {"note": "saved on 8 devices"})
    ckpt.close()
    saved = jax.tree.map(np.asarray, jax.device_get(state8))
    qkv = lambda s: s.params["encoder"]["stack"]["blocks"]["attn"]["qkv"]["kernel"]
    out = {"saved_shards": len({str(s.index) for s in qkv(state8).addressable_shards})}
    for name, (data, fsdp, devices) in {"4": (2, 2, jax.devices()[:4]), "1": (1, 1, jax.devices()[:1])}.items():
        _, abstract = _tiny_state(_mesh(data, fsdp, devices))
        step, restored = checkpoint.Checkpoints(workdir, keep=2).restore_latest(abstract, None)
        equal = jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(a, np.asarray(b))), saved,
                                          jax.device_get(restored)))
        out[name] = {"step": step, "bitwise_equal": equal,
                     "devices": len(qkv(restored).sharding.device_set),
                     "shards": len({str(s.index) for s in qkv(restored).addressable_shards})}
    return out


def full_disk_check(workdir: str) -> dict:
    state, abstract = _tiny_state(_mesh(8, 1, jax.devices()))
    ckpt = checkpoint.Checkpoints(workdir, keep=3)
    ckpt.save(1, state, None, {})
    ckpt.wait()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing us
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    error = None
    try:
        bumped = state.replace(step=state.step + 1, params=jax.tree.map(lambda x: x + 1, state.params))
        ckpt.save(2, bumped, None, {})
        ckpt.wait()
    except checkpoint.CheckpointSaveError as e:
        error = str(e)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    step, restored = checkpoint.Checkpoints(workdir, keep=3).restore_latest(abstract, None)
    same = jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                                     jax.device_get(state), jax.device_get(restored)))
    return {"error": error, "restored_step": step, "restored_equal": same}


if __name__ == "__main__":
    jax.config.update("jax_compilation_cache_dir", "")
    tmp = sys.argv[1]
    result = {"dry_run": dry_run_check(), "reshard": reshard_check(f"{tmp}/reshard"),
              "full_disk": full_disk_check(f"{tmp}/full_disk")}
    print(json.dumps(result))
