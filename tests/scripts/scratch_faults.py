"""Page faults of one call of a jitted function with a 64 MiB scratch buffer, after warm-up calls.

Prints one JSON line: {"tuned": bool, "faults": int}. Run as a fresh process (the glibc settings of
sarmae_jax.host_memory must precede JAX's threads); SARMAE_HOST_MALLOC=system runs it untuned.
"""
import json
import resource

from sarmae_jax import host_memory

tuned = host_memory.tune_for_xla_cpu()

import jax  # noqa: E402  (after the allocator settings, as in sarmae-train)
import jax.numpy as jnp  # noqa: E402


@jax.jit
def gram_times(x):  # x [4096, 8]: x @ x.T, between the two products, is a 64 MiB float32 scratch array
    return (x @ x.T) @ x


x = jax.random.normal(jax.random.key(0), (4096, 8))
for _ in range(3):
    gram_times(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
gram_times(x).block_until_ready()
print(json.dumps({"tuned": tuned, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
