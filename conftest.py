"""Repository-root conftest: makes `sarmae_jax`, `data_pipelines` and `configs` importable from a checkout."""
