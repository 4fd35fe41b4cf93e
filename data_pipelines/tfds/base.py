"""The common base of the sarmae TFDS builders."""

from __future__ import annotations

import inspect

import tensorflow_datasets as tfds
from etils import epath


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A GeneratorBasedBuilder whose code path is its source file.

    TFDS finds a builder's code path through package resources, a lookup that needs the
    `importlib_resources` backport on some installs (not a dependency here) and only serves to
    find download checksums -- these builders download nothing (manual_dir only).
    """

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))
