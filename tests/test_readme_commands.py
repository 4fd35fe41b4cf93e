"""Every `sarmae-*` command line in the README parses: each flag exists, positional arguments fit, config
overrides name real keys. The SAR-1M conversion command runs on a tiny generated SAR-1M folder."""
from __future__ import annotations

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from data_pipelines import records, sar1m
from sarmae_jax.convert import cli as convert_cli
from sarmae_jax.training import teacher_tokens
from tests.conftest import make_sar1m_folder

ROOT = pathlib.Path(__file__).resolve().parents[1]

ARGPARSE_COMMANDS = {
    "sarmae-import": convert_cli.import_parser,
    "sarmae-export": convert_cli.export_parser,
    "sarmae-convert-sar1m": sar1m.arg_parser,
    "sarmae-precompute-teacher": teacher_tokens.arg_parser,
}
ABSL_COMMANDS = {"sarmae-train": "sarmae_jax.main", "sarmae-eval": "sarmae_jax.evaluate.cli"}


def readme_commands(text: str) -> list[list[str]]:
    """The `sarmae-*` command lines of the README's shell blocks, continuations joined, comments and
    leading `VAR=value` assignments dropped, split as the shell would."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]
            for i, word in enumerate(words):  # `pip install -e . && sarmae-train ...`
                if word == "&&":
                    words = words[i + 1:]
                    break
            if words and words[0].startswith("sarmae-"):
                commands.append(words)
    return commands


COMMANDS = readme_commands((ROOT / "README.md").read_text())


def test_the_readme_has_every_command():
    names = {c[0] for c in COMMANDS}
    assert names == set(ARGPARSE_COMMANDS) | set(ABSL_COMMANDS), names


@pytest.mark.parametrize("words", [c for c in COMMANDS if c[0] in ARGPARSE_COMMANDS], ids=" ".join)
def test_argparse_command_parses(words):
    parser = ARGPARSE_COMMANDS[words[0]]()
    try:
        parser.parse_args(words[1:])
    except SystemExit as e:  # argparse reports a bad command line by exiting with status 2
        pytest.fail(f"{' '.join(words)}: rejected by the command's parser (exit {e.code})")


_PARSE_ABSL = """
import importlib, sys
from absl import flags
importlib.import_module(sys.argv[1])
flags.FLAGS(sys.argv[2:])  # config_flags loads the --config file and applies its --config.* overrides
flags.FLAGS.validate_all_flags()
"""


def _parse_absl(module: str, argvs: list[list[str]]) -> list[str | None]:
    """Parse each command line in a fresh process (absl flags parse once per process); None = parsed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", _PARSE_ABSL, module, *argv], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for argv in argvs]
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        results.append(None if proc.returncode == 0 else err.strip().splitlines()[-1])
    return results


@pytest.mark.parametrize("name", sorted(ABSL_COMMANDS))
def test_absl_commands_parse_with_their_configs(name):
    """Flags and `--config.key=value` overrides are parsed against the config files they name."""
    argvs = [c for c in COMMANDS if c[0] == name]
    assert argvs
    failures = [f"{' '.join(a)}\n  -> {r}" for a, r in zip(argvs, _parse_absl(ABSL_COMMANDS[name], argvs))
                if r is not None]
    assert not failures, "\n".join(failures)


def test_a_bad_command_line_is_caught():
    """The parse checks above can fail: a misspelt flag, a missing positional and an unknown config key."""
    with pytest.raises(SystemExit):
        convert_cli.export_parser().parse_args(["runs/b16/export", "--formatt", "timm"])
    with pytest.raises(SystemExit):
        sar1m.arg_parser().parse_args(["/data/SAR-1M", "/data/out"])
    bad = _parse_absl("sarmae_jax.main", [["sarmae-train", "--config", "configs/smoke.py", "--workdir", "w",
                                            "--config.train.no_such_key=1"]])
    assert bad[0] is not None and "no_such_key" in bad[0]


def test_the_readme_conversion_command_runs_on_a_tiny_sar1m_folder(tmp_path, capsys):
    (words,) = [c for c in COMMANDS if c[0] == "sarmae-convert-sar1m"]
    args = vars(sar1m.arg_parser().parse_args(words[1:]))
    root, out = tmp_path / "SAR-1M", tmp_path / "shards"
    make_sar1m_folder(str(root))
    argv = list(words[1:])
    argv[argv.index("--input") + 1], argv[argv.index("--output") + 1] = str(root), str(out)
    argv[argv.index("--workers") + 1] = "1"  # the README's 16 workers, on a 2-core test machine
    sar1m.main(argv + ["--image_size", "32"])
    assert args["input"] == "/data/SAR-1M"
    manifest = records.read_manifest(str(out))
    assert manifest["splits"]["train"]["num_examples"] == 8 and manifest["splits"]["train"]["num_paired"] == 3
    assert "8 examples (3 paired)" in capsys.readouterr().out
