"""Repository-root conftest: makes `sarmae_jax`, `data_pipelines` and `configs` importable from a checkout,
and makes the CPU test suite compile fast.

XLA's CPU backend spends most of a small model's test time compiling. The tests run tiny models
for a few steps, so the backend's optimisation passes cost far more than they save; and many tests
compile the same step, which the persistent compilation cache then compiles only once per session.
Numerics are unaffected (optimisation level changes scheduling and fusion, not the maths of f32 ops
beyond rounding order); these settings are for tests only, never for training.
"""
import os
import tempfile

from sarmae_jax.runtime import tpu_topology

# With the `tpu` extra installed (libtpu), every JAX process would probe for TPU chips and print libtpu's
# start-up warnings; the test processes and the subprocesses they start (which inherit the environment) stay quiet.
tpu_topology.quiet_libtpu_start()

os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]))


def pytest_configure(config):
    import jax

    cache = os.environ.get("SARMAE_TEST_COMPILATION_CACHE") or os.path.join(tempfile.gettempdir(), "sarmae_jax_test_xla_cache")
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
