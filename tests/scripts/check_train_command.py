"""A `sarmae-train` command line through the trainer's own flag parsing and its start-up checks that need no
pod, bucket or dataset:

    python tests/scripts/check_train_command.py [sarmae-train flags ...]

The flags are parsed by sarmae_jax.main's definitions (config file, `--config.key=value` overrides), the config
is validated (`config.validate`, which also refuses a dataset given as gs://) and the paths are resolved
(`training.loop.resolve_paths`: URIs and bucket names checked). Prints the resolved run directory.
"""
import sys

from absl import flags

from sarmae_jax import config as config_lib, main
from sarmae_jax.training import loop

if __name__ == "__main__":
    flags.FLAGS(["sarmae-train", *sys.argv[1:]])
    config = main._CONFIG.value
    config_lib.validate(config)
    print(loop.resolve_paths(config, main._WORKDIR.value))
