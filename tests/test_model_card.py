"""Model cards with every export, and the Hugging Face preprocessor config that reproduces the pre-training input."""
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import transformers
from PIL import Image

from sarmae_jax.convert import cli, model_card
from sarmae_jax.data import host_transforms, preprocess
from sarmae_jax.models import sarmae, vit
from sarmae_jax.training import checkpoint
from tests.conftest import tiny_pretrain_config

IMAGE = 32


def _run_export(tmp_path):
    """A params-only export whose metadata is a training run's (config, dataset facts, steps), random weights."""
    config = tiny_pretrain_config("mini")  # 32 x 32 images, patch 8
    config.sarc.enabled = True
    config.sarc.teacher.update(kind="released", size="mini", patch_size=8,
                               checkpoint="/weights/dinov3_vitb16_pretrain_lvd1689m.pth")
    config.train.batch_size = 4096
    params = nn.unbox(sarmae.init_params(sarmae.build(config), config, jax.random.key(0)))
    dataset = {"path": "/data/sar1m_shards", "split": "train", "num_examples": 1_000_000, "num_paired": 750_000,
               "epoch_size": 1_071_429}
    meta = checkpoint.run_metadata(config, dataset=dataset, total_steps=78_500)
    return checkpoint.export_params(str(tmp_path / "export"), jax.tree.map(np.asarray, params), meta)


def test_every_export_has_a_card_with_normalisation_positions_and_loading_lines(tmp_path):
    export = _run_export(tmp_path)
    card = open(os.path.join(export, "README.md")).read()
    for fact in ("1000000 SAR images, 750000 of them with an optical pair", "Steps: 78500 at global batch 4096",
                 "SARE: speckle model `gamma_intensity`, looks in (1.0, 16.0)", "teacher `released`",
                 "mean=(0.5,) * 3, std=(0.5,) * 3",  # timm units
                 "mean=[127.5] * 3, std=[127.5] * 3, bgr_to_rgb=False",  # mmdet 3.x / mmseg data_preprocessor
                 "mean=[127.5] * 3, std=[127.5] * 3, to_rgb=False",  # mmcv 1.x img_norm_cfg
                 "mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True",  # the released det configs
                 "| 512 | 64 x 64 |", "| 608 | 76 x 76 |", "| 800 | 100 x 100 |", "| 1024 | 128 x 128 |",  # patch 8
                 "checkpoint.load_export("):
        assert fact in card, fact
    lines = {"vit.safetensors": ("timm", 'model.load_state_dict(load_file("vit.safetensors"), strict=True)'),
             "encoder.pth": ("sarmae-finetune",
                             'assert set(missing) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}')}
    for name, (fmt, line) in lines.items():
        cli.run_export(export, str(tmp_path / name), fmt)
        text = open(str(tmp_path / name) + ".README.md").read()  # beside the file
        assert line in text and "mean=[127.5] * 3" in text and "| 608 | 76 x 76 |" in text, (fmt, text)
    # The run's released teacher file is not where the metadata says: the pre-training export names the flag.
    with pytest.raises(ValueError, match="/weights/dinov3_vitb16_pretrain_lvd1689m.pth', which is not there; "
                                         "pass --teacher-checkpoint PATH"):
        cli.run_export(export, str(tmp_path / "pretrain.pth"), "sarmae-pretrain")
    hf = cli.run_export(export, str(tmp_path / "hf_vit"), "hf-vit")
    text = open(os.path.join(hf, "README.md")).read()
    assert 'ViTModel.from_pretrained("hf_vit", add_pooling_layer=False, output_loading_info=True)' in text


def test_card_architecture_table_is_the_models():
    assert model_card._DEPTH_HEADS == {k: (v["width"], v["depth"], v["num_heads"]) for k, v in vit.VIT_SIZES.items()}


def test_card_layer_norm_eps_is_the_models(monkeypatch):
    assert f"LayerNorm eps {vit.LAYER_NORM_EPS:g}," in model_card._architecture({}, "mini", 192, 12, 3, 8, 32)
    monkeypatch.setattr(vit, "LAYER_NORM_EPS", 1e-5)  # one definition: the card follows the model's constant
    assert "LayerNorm eps 1e-05," in model_card._architecture({}, "mini", 192, 12, 3, 8, 32)


def test_auto_image_processor_reproduces_the_pretraining_resize_and_normalisation(tmp_path):
    export = _run_export(tmp_path)
    out = cli.run_export(export, str(tmp_path / "hf_vit"), "hf-vit")
    assert json.load(open(os.path.join(out, "preprocessor_config.json")))["image_mean"] == [0.5] * 3
    processor = transformers.AutoImageProcessor.from_pretrained(out, backend="pil")
    rng = np.random.default_rng(0)
    for h, w in ((45, 70), (IMAGE, IMAGE), (200, 90)):
        gray = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
        got = processor(images=Image.fromarray(gray, "L"), return_tensors="np")["pixel_values"][0]  # [3, S, S]
        # The pre-training path: host resize (Pillow bilinear) of the uint8 image, then on device [0, 1] and mean/std.
        resized = host_transforms.resize_image(gray[:, :, None], (IMAGE, IMAGE))
        x = preprocess.normalize_sar(preprocess.to_unit_interval(jnp.asarray(resized[None])), 3)[0]
        np.testing.assert_allclose(got.transpose(1, 2, 0), np.asarray(x), atol=1e-6, rtol=0)
    cfg = ml_collections.ConfigDict(json.load(open(os.path.join(out, "preprocessor_config.json"))))
    assert cfg.size.height == cfg.size.width == IMAGE and cfg.do_convert_rgb
