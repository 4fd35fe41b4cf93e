"""runtime/tpu_topology.py: every entry point imports it, so it must not depend on JAX's private modules at import."""
import importlib.util
import logging
import os
import sys

import jax._src

import sarmae_jax.runtime.tpu_topology as installed


def _fresh_copy(monkeypatch, name):
    """A new copy of the module's source, imported under `name` (the installed module stays as it is)."""
    spec = importlib.util.spec_from_file_location(name, installed.__file__)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def test_imports_and_starts_when_jax_moves_its_private_pci_scan(monkeypatch, caplog):
    # As if a JAX upgrade had moved jax._src.hardware_utils: importing it raises ImportError.
    monkeypatch.delattr(jax._src, "hardware_utils", raising=False)
    monkeypatch.setitem(sys.modules, "jax._src.hardware_utils", None)
    module = _fresh_copy(monkeypatch, "tpu_topology_without_hardware_utils")  # the module (and so every CLI) still imports
    monkeypatch.setattr(module, "compiler_available", lambda: True)  # as on a host with libtpu installed
    for key in module._QUIET_ENV:
        monkeypatch.delenv(key, raising=False)
    with caplog.at_level(logging.WARNING, logger="sarmae_jax"):
        module.quiet_libtpu_start()
    assert "jax._src.hardware_utils" in caplog.text and "not quieted" in caplog.text
    assert not any(key in os.environ for key in module._QUIET_ENV)  # nothing changed: it cannot tell a TPU VM apart


def test_quiets_libtpu_on_a_host_without_chips(monkeypatch):
    module = _fresh_copy(monkeypatch, "tpu_topology_copy")
    monkeypatch.setattr(module, "compiler_available", lambda: True)
    for key in module._QUIET_ENV:
        monkeypatch.delenv(key, raising=False)
    module.quiet_libtpu_start()  # this test machine has no TPU chips
    assert all(os.environ[k] == v for k, v in module._QUIET_ENV.items())
