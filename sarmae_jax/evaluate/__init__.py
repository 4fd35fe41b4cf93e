"""Downstream evaluation of exported checkpoints: fine-tuning, linear probe, k-NN, reconstruction.

Entry point: `sarmae-eval` (`sarmae_jax.evaluate.cli`), driven by configs in `configs/eval/`;
`pipeline.run(config, workdir)` is the same thing as a function.
"""
