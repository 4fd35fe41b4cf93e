"""What a person sees of a run: a progress bar, JSON-lines and TensorBoard metrics, PNG image grids.

One logging path: `MetricWriter.write(step, scalars)` goes to all three. Only process 0 writes;
other processes get a writer whose methods do nothing, so the training loop has no `if` for it.
The run directory may be local or a gs:// bucket (etils.epath; tensorboardX uploads through
google-cloud-storage).
"""
from __future__ import annotations

import io
import logging
import os
import time
from typing import Mapping

import jax
import numpy as np
from absl import logging as absl_logging
from PIL import Image, ImageDraw, PngImagePlugin
from tqdm.auto import tqdm

from sarmae_jax.runtime import paths
from sarmae_jax.training import metrics_file

log = logging.getLogger("sarmae_jax")


class MetricWriter:
    """Scalars to `workdir/metrics.jsonl` and TensorBoard event files in `workdir/tensorboard/`.

    `resume_step`: the checkpoint step the run resumes from (0 for a fresh start). Lines and events of
    later steps, written before an interruption, are dropped (metrics.jsonl) or purged (TensorBoard's
    `purge_step`), so each step is shown once. On a bucket both are uploaded whole every `flush_secs`
    and at `flush()` (before each checkpoint) and `close()`.
    """

    def __init__(self, workdir: str | os.PathLike, enabled: bool = True, resume_step: int = 0,
                 flush_secs: float = 30.0):
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        workdir = paths.as_path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = metrics_file.MetricsFile(workdir / "metrics.jsonl", resume_step, flush_secs=flush_secs)
        # Imported here, by the one process that writes: tensorboardX imports torch when it is installed
        # (1.6 s), which the other processes, the dry run and the evaluation never need.
        from tensorboardX import SummaryWriter

        _register_closing_gcs_writer()
        self._tb = SummaryWriter(str(workdir / "tensorboard"), flush_secs=flush_secs, purge_step=resume_step + 1)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        self._jsonl.write({"step": int(step), "time": time.time(), **clean})
        for k, v in clean.items():
            self._tb.add_scalar(k, v, int(step))

    def flush(self) -> None:
        """Make everything written so far durable (called before each checkpoint)."""
        if self.enabled:
            self._jsonl.flush()
            self._tb.flush()

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """`image: [H, W, 3] uint8`."""
        if self.enabled:
            self._tb.add_image(tag, image, int(step), dataformats="HWC")

    def close(self) -> None:
        if self.enabled and self._tb is not None:
            self._jsonl.close()
            self._tb.close()
            self._tb = None


def _register_closing_gcs_writer() -> None:
    """tensorboardX's gs:// event-file writer uploads its whole buffer again from `__del__`, after `close()`
    already did: at interpreter exit, with the bucket gone or unreachable, each event file then costs a
    120 s retry. Its S3 writer keeps a `closed` flag; this registers the same for gs:// (same uploads)."""
    from tensorboardX import record_writer

    class ClosingGCSRecordWriter(record_writer.GCSRecordWriter):
        closed = False

        def __del__(self):
            if not self.closed:
                self.close()

        def close(self):
            self.flush()
            self.closed = True

    class Factory(record_writer.GCSRecordWriterFactory):
        def open(self, path):
            return ClosingGCSRecordWriter(path)

    record_writer.register_writer_factory("gs", Factory())


class Progress:
    """tqdm bar over steps showing the loss terms, step time and images/s (process 0 only)."""

    def __init__(self, total: int, initial: int, enabled: bool = True):
        self._bar = None
        self._pinned: dict[str, float] = {}
        if enabled:
            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, smoothing=0.1)

    def update(self, step: int, shown: Mapping[str, float]) -> None:
        if self._bar is None:
            return
        self._bar.n = int(step)
        shown = {**shown, **self._pinned}
        self._bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in shown.items()}, refresh=False)
        self._bar.refresh()

    def pin(self, shown: Mapping[str, float]) -> None:
        """Numbers shown on every later update too (the latest evaluation's headline numbers)."""
        self._pinned.update(shown)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8 (clipped)."""
    return (np.clip(np.asarray(x, np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def image_grid(columns: Mapping[str, np.ndarray], pad: int = 2, min_cell: int = 96) -> np.ndarray:
    """Side-by-side labelled columns of images, one row per sample.

    columns: name -> `[N, H, W, 1 or 3]` floats in [0, 1] (same N, H, W for all). Small images are
    enlarged (nearest neighbour) to at least `min_cell` pixels so that a person can see them.
    Returns `[rows, cols, 3]` uint8 with a white gutter and a header naming each column.
    """
    arrays = [np.asarray(a, np.float32) for a in columns.values()]
    n, h, w = arrays[0].shape[:3]
    scale = max(1, -(-min_cell // max(h, w)))
    h, w = h * scale, w * scale
    header = 14
    grid = np.full((header + n * (h + pad) + pad, len(arrays) * (w + pad) + pad, 3), 255, np.uint8)
    for j, a in enumerate(arrays):
        if a.shape[-1] == 1:
            a = np.repeat(a, 3, axis=-1)
        a = a.repeat(scale, axis=1).repeat(scale, axis=2)
        for i in range(n):
            y, x = header + pad + i * (h + pad), pad + j * (w + pad)
            grid[y:y + h, x:x + w] = to_uint8(a[i])
    picture = Image.fromarray(grid)
    draw = ImageDraw.Draw(picture)
    for j, name in enumerate(columns):
        draw.text((pad + j * (w + pad) + 2, 1), name[: max(4, w // 6)], fill=(0, 0, 0))
    return np.asarray(picture)


def save_png(path: str | os.PathLike, image: np.ndarray, description: str = "") -> None:
    """`image: [H, W, 3] uint8` as a PNG at `path` (local or gs://), with `description` as its text chunk."""
    info = PngImagePlugin.PngInfo()
    if description:
        info.add_text("Description", description)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", pnginfo=info)
    paths.write_atomic(paths.as_path(path), buffer.getvalue())


def is_main_process() -> bool:
    return jax.process_index() == 0


def setup_logging() -> None:
    """Our own INFO lines, readable; the libraries' (Orbax, Grain, XLA) only from WARNING up."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    ours = logging.getLogger("sarmae_jax")
    ours.setLevel(logging.INFO)
    ours.propagate = False
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(message)s", "%H:%M:%S"))
        ours.addHandler(handler)
