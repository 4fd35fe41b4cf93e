"""Shared fixtures and helpers: a tiny, fast SARMAE config, a small synthetic dataset built once per
session, batches, train steps built by the trainer's builder, params-only exports, SAR-1M folders, and a
PyTorch reference of timm's ViT forward for the conversion tests."""
import json
import os
import sys
import uuid

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from configs import smoke
from data_pipelines import synthetic
from sarmae_jax import config as config_lib
from sarmae_jax.convert import teacher_weights
from sarmae_jax.models import sarmae
from sarmae_jax.runtime import sharding
from sarmae_jax.training import checkpoint
from sarmae_jax.training import state as state_lib
from tests import gcs_emulator


def tiny_config():
    """A 2-block ViT on 32x32 images with 8x8 patches: compiles and steps in well under a second."""
    c = config_lib.default_config()
    c.model.size = "mini"
    c.model.image_size = 32
    c.model.patch_size = 8
    c.model.decoder.width = 32
    c.model.decoder.depth = 1
    c.model.decoder.num_heads = 2
    c.sarc.teacher.kind = "released"
    c.sarc.teacher.size = "mini"
    c.sarc.teacher.patch_size = 8
    c.sarc.teacher.checkpoint = "random-init"
    c.data.synthetic.num_examples = 64
    c.data.synthetic.num_test_examples = 16
    c.data.synthetic.examples_per_shard = 32
    c.data.paired_share = None
    c.train.compilation_cache_dir = None  # the test session's cache (conftest.py), not the default
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 2
    c.train.batch_size = 8
    c.train.num_steps = 4
    c.train.log_every = 2
    c.train.image_every = 4
    c.train.checkpoint_every = 2
    return c


@pytest.fixture
def tiny():
    return tiny_config()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """Path of a synthetic dataset matching `tiny_config()` (generated once)."""
    c = tiny_config()
    out = str(tmp_path_factory.mktemp("tiny_data"))
    synthetic.ensure_synthetic_dataset(out, **dict(c.data.synthetic.to_dict(), image_size=c.model.image_size))
    return out


# A labelled synthetic set at the tiny config's size whose test split holds every class (the in-loop evaluators
# refuse a class without test images; tiny_dataset's 16 test scenes miss one).
TINY_LABELLED = dict(synthetic.DEFAULTS, num_examples=64, num_test_examples=40, image_size=32, examples_per_shard=64)


@pytest.fixture(scope="session")
def tiny_labelled(tmp_path_factory):
    """Path of the `TINY_LABELLED` synthetic set (generated once)."""
    out = str(tmp_path_factory.mktemp("tiny_labelled"))
    synthetic.ensure_synthetic_dataset(out, **TINY_LABELLED)
    return out


def six_step_config(data_path: str):
    """tests/tiny_train_config.py for 6 steps on `data_path`, losses logged every step, no periodic checkpoint."""
    from tests.tiny_train_config import get_config

    c = get_config()
    c.data.path, c.train.num_steps, c.train.log_every, c.train.checkpoint_every = data_path, 6, 1, 1000
    return c


@pytest.fixture(scope="session")
def six_step_run(tmp_path_factory, tiny_dataset):
    """The workdir of an uninterrupted `six_step_config` run in this process (one device): the reference of the
    elastic-resume and profiling tests."""
    from sarmae_jax.training import loop

    workdir = str(tmp_path_factory.mktemp("six_step_run"))
    loop.train_and_evaluate(six_step_config(tiny_dataset), workdir)
    return workdir


def synthetic_batch(c, seed=0, paired=(True, False)):
    """One global batch for config `c`: smooth uint8 SAR scenes, their inverted optical rendering, `paired` cycled."""
    rng = np.random.default_rng(seed)
    b, s = c.train.batch_size, c.model.image_size
    # Smooth images (a few gradients) so that there is structure to learn.
    yy, xx = np.mgrid[0:s, 0:s] / s
    phases = rng.uniform(0, 2 * np.pi, (b, 1, 1))
    sar = (0.5 + 0.4 * np.sin(4 * xx[None] + phases) * np.cos(3 * yy[None])) * 255
    sar = sar[..., None].astype(np.uint8)
    return {
        "sar": sar,
        "optical": np.repeat(255 - sar, 3, axis=-1),  # a rendering of the same scene, so alignment is learnable
        "is_paired": np.resize(np.array(paired), b),
    }


def step_setup(c, seed=None, total_steps=100, steps_per_epoch=10):
    """(fresh state, jitted train step, teacher params) for config `c`, built by the trainer's own builder
    (`training.state.build`). The step is jitted without donation, so tests can compare states."""
    if seed is not None:
        c.seed = seed
    parts = build_parts(c, total_steps=total_steps, steps_per_epoch=steps_per_epoch)
    teacher = teacher_weights.load_teacher_params(c.sarc.teacher, parts.modules.teacher, c.model.image_size)
    return parts.init_state(jax.random.key(c.seed)), jax.jit(parts.step_fn()), teacher


def build_parts(c, mesh=None, total_steps=100, steps_per_epoch=10):
    """`training.state.build` for `c` with a run of `total_steps` (`steps_per_epoch` of them an epoch)."""
    c = c.copy_and_resolve_references()
    c.train.num_steps = total_steps
    return state_lib.build(c, mesh or sharding.make_mesh(c.mesh),
                           epoch_size=steps_per_epoch * c.train.batch_size)


def tiny_pretrain_config(size: str = "mini"):
    """The smoke recipe at 32x32 without SARC: what the evaluation tests pre-train and export."""
    c = smoke.get_config()
    c.model.size = size
    c.model.image_size = 32
    c.model.patch_size = 8
    c.sarc.enabled = False
    return c


def write_tiny_export(directory: str, size: str = "mini", seed: int = 0) -> str:
    """A params-only export exactly as the trainer writes it (random weights: the plumbing is under test)."""
    c = tiny_pretrain_config(size)
    modules = sarmae.build(c)
    params = nn.unbox(sarmae.init_params(modules, c, jax.random.key(seed)))
    return checkpoint.export_params(directory, params, checkpoint.run_metadata(c))


def ramp_image(h, w):
    """[h, w] float in [0, 1]: a smooth ramp (resizing changes it predictably)."""
    y, x = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    return (0.25 + 0.5 * (x + y) / 2).astype(np.float32)


def save_image(path, array, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **kw)


def make_sar1m_folder(root):
    """Every image kind of the issue: PNG/JPEG/TIFF, 8/16-bit/float, 1/3/4 channels."""
    ramp = ramp_image(40, 48)
    gray8 = np.round(ramp * 255).astype(np.uint8)
    sar = {
        "gray8.png": gray8,
        "gray16.png": np.round(ramp * 4000).astype(np.uint16),  # 16-bit SAR using 12 bits of range
        "gray16.tif": np.round(ramp * 4000).astype(np.uint16),
        "float.tif": ramp * 0.01,  # float intensities far below 1
        "gray_as_rgb.png": np.repeat(gray8[..., None], 3, -1),
        "rgba.png": np.dstack([np.repeat(gray8[..., None], 3, -1), np.full_like(gray8, 7)]),
        "color.png": np.dstack([gray8, gray8 // 2, 255 - gray8]),
        "gray.jpg": gray8,
    }
    for name, array in sar.items():
        save_image(f"{root}/SAR/{name}", array)
    optical = np.dstack([gray8, gray8 // 2, 255 - gray8])
    save_image(f"{root}/OPT/o1.png", optical)
    save_image(f"{root}/OPT/o2.png", np.dstack([optical, np.full_like(gray8, 9)]))  # RGBA optical
    save_image(f"{root}/OPT/o3.tif", np.round(ramp * 60000).astype(np.uint16))  # 16-bit gray optical
    paired = [{"sar": "SAR/gray8.png", "optical": "OPT/o1.png"},  # with prefixes
              {"sar": "gray16.png", "optical": "o2.png"},  # without
              {"sar": "SAR/float.tif", "optical": "o3.tif"}]
    unpaired = ["gray16.tif", {"sar": "SAR/gray_as_rgb.png"}, "rgba.png", "color.png", "gray.jpg"]
    with open(f"{root}/paired.json", "w") as f:
        json.dump(paired, f)
    with open(f"{root}/unpaired.json", "w") as f:
        json.dump(unpaired, f)
    return sar


def timm_reference_forward(sd, images_nhwc, num_heads, prefix=""):
    """timm `VisionTransformer.forward_features` (pre-norm blocks, fused qkv, exact GELU, eps 1e-6), in torch; the
    final norm only where `sd` has one."""
    import torch  # the torch extra: only the tests that compare with PyTorch need it

    f = torch.nn.functional
    t = {k[len(prefix):]: torch.from_numpy(np.array(v)) for k, v in sd.items() if k.startswith(prefix)}
    x = f.conv2d(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy()), t["patch_embed.proj.weight"],
                 t["patch_embed.proj.bias"], stride=t["patch_embed.proj.weight"].shape[-1]).flatten(2).transpose(1, 2)
    x = torch.cat([t["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + t["pos_embed"]
    d = x.shape[-1]
    ln = lambda y, p: f.layer_norm(y, (d,), t[p + ".weight"], t[p + ".bias"], eps=1e-6)  # noqa: E731
    i = 0
    while f"blocks.{i}.norm1.weight" in t:
        p = f"blocks.{i}."
        qkv = f.linear(ln(x, p + "norm1"), t[p + "attn.qkv.weight"], t[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(x.shape[0], x.shape[1], 3, num_heads, d // num_heads).permute(2, 0, 3, 1, 4)
        a = f.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(x.shape)
        x = x + f.linear(a, t[p + "attn.proj.weight"], t[p + "attn.proj.bias"])
        h = f.gelu(f.linear(ln(x, p + "norm2"), t[p + "mlp.fc1.weight"], t[p + "mlp.fc1.bias"]))
        x = x + f.linear(h, t[p + "mlp.fc2.weight"], t[p + "mlp.fc2.bias"])
        i += 1
    return ln(x, "norm").numpy() if "norm.weight" in t else x.numpy()  # timm's average-pooling ViTs have no norm


@pytest.fixture(scope="session")
def gcs():
    """A Cloud Storage emulator on loopback for the whole session (tests/gcs_emulator.py): bucket `sarmae-test`,
    and `sarmae-readonly` whose writes get 403. Its client environment is put into os.environ, so this process
    and every subprocess it starts send gs:// requests to it (gcsfs reads one of the variables at import)."""
    if "gcsfs" in sys.modules and os.environ.get("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT") != "false":
        raise RuntimeError("gcsfs was imported before the emulator's environment was set")
    emulator = gcs_emulator.Emulator("sarmae-test", read_only_bucket="sarmae-readonly")
    with pytest.MonkeyPatch.context() as env:
        for key, value in emulator.env.items():
            env.setenv(key, value)
        yield emulator
    emulator.close()


@pytest.fixture
def gcs_dir(gcs, request):
    """A gs:// prefix of its own for one test (the bucket lives for the session)."""
    return gcs.url(f"{request.node.name}-{uuid.uuid4().hex[:8]}")
