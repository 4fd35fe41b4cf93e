"""tests/tiny_train_config.py is a config file for subprocess runs of the trainer: it loads from any directory."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "tests", "tiny_train_config.py")


def test_the_tiny_train_config_loads_outside_the_repository_root(tmp_path):
    # As config_flags loads it: by its path, from the directory a command runs in, without the root on sys.path.
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('cfg', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); print(m.get_config().train.num_steps)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code, CONFIG], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "8"
