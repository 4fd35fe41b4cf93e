"""sarmae-import records the source model's own input normalisation (not the project's SAR rule), the model card
and the Hugging Face preprocessor config follow it, and an import of a file that does not say says so."""
import argparse
import json
import os

import pytest
import torch

from data_pipelines import normalization
from sarmae_jax.convert import cli, model_card, source_normalization
from sarmae_jax.training import checkpoint
from tests.test_released import IMAGE, mae_encoder_sd, pretraining_args, save_like_save_model

IMAGENET_MEAN, IMAGENET_STD = list(normalization.IMAGENET_MEAN), list(normalization.IMAGENET_STD)


def mae_pretrain_args():
    """The namespace MAE's main_pretrain.py pickles (ImageNet): no SARMAE argument."""
    return argparse.Namespace(batch_size=64, epochs=800, model="mae_vit_base_patch16", input_size=224, mask_ratio=0.75,
                              norm_pix_loss=True, weight_decay=0.05, blr=1.5e-4, data_path="/datasets01/imagenet_full_size/061417/")


def _import(tmp_path, name, sd, *flags, **saved):
    src = str(tmp_path / name)
    if saved:
        save_like_save_model(src, sd, **saved)
    else:
        torch.save({"model": sd}, src)
    out = str(tmp_path / (name.replace(".", "_") + "_imported"))
    assert cli.import_main([src, out, "--image-size", str(IMAGE), *flags]) == 0
    return out, checkpoint.load_export(out)[1][normalization.KEY]["sar"]


def test_an_imagenet_mae_checkpoint_records_imagenet_statistics_in_its_card_and_hf_export(tmp_path):
    out, sar = _import(tmp_path, "mae_pretrain_vit_base.pth", mae_encoder_sd(torch.Generator().manual_seed(0)),
                       args=mae_pretrain_args())
    assert (sar["mean"], sar["std"]) == (IMAGENET_MEAN, IMAGENET_STD) and "MAE pre-training" in sar["source"]
    card = open(os.path.join(out, "README.md")).read()
    assert "mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)" in card  # timm units
    assert "mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True" in card  # per-channel: RGB order
    assert "(x - 0.5)" not in card and "mean=(0.5,) * 3" not in card
    hf = cli.run_export(out, str(tmp_path / "hf_vit"), "hf-vit")
    pre = json.load(open(os.path.join(hf, "preprocessor_config.json")))
    assert (pre["image_mean"], pre["image_std"]) == (IMAGENET_MEAN, IMAGENET_STD)
    # Re-importing that HF directory reads its preprocessor_config.json.
    assert source_normalization.of_import(hf, [], {}, hf_preprocessor=source_normalization.read_hf_preprocessor(hf))[
        "mean"] == IMAGENET_MEAN


def test_a_released_sarmae_checkpoint_records_the_released_rule():
    keys = ["sar_encoder.cls_token", "sar_alignment_ffn.0.weight"]
    sar = source_normalization.of_import("ckpt.pth", keys, {"args": vars(pretraining_args())})
    assert (sar["mean"], sar["std"]) == (0.5, 0.5) and "released SARMAE" in sar["source"]
    no_sare = dict(vars(pretraining_args()), enable_sar_noise=False)  # the released no-SARE runs: ImageNet statistics
    assert source_normalization.of_import("ckpt.pth", keys, {"args": no_sare})["mean"] == IMAGENET_MEAN


def test_a_file_that_does_not_say_is_recorded_as_unknown_and_no_preprocessor_config_is_invented(tmp_path, caplog):
    sd = mae_encoder_sd(torch.Generator().manual_seed(1))
    out, sar = _import(tmp_path, "encoder.pth", sd)  # a bare encoder state dict: ImageNet MAE? SARMAE? It cannot tell
    assert sar["known"] is False and "--source-normalization" in sar["reason"]
    card = open(os.path.join(out, "README.md")).read()
    assert "**Not known.**" in card and "mean=(0.5,) * 3" not in card
    hf = cli.run_export(out, str(tmp_path / "hf_vit"), "hf-vit")
    assert not os.path.exists(os.path.join(hf, "preprocessor_config.json"))
    assert "**Not known.**" in open(os.path.join(hf, "README.md")).read()
    with pytest.raises(ValueError, match="not known"):
        source_normalization.per_channel(sar)
    # The user can state it.
    _, stated = _import(tmp_path, "encoder2.pth", sd, "--source-normalization", "imagenet")
    assert stated["mean"] == IMAGENET_MEAN and "stated by the user" in stated["source"]


def test_the_card_refuses_metadata_without_a_normalisation_instead_of_assuming_the_default():
    with pytest.raises(ValueError, match="no 'normalization' entry"):
        model_card.sar_normalization({"format": "sarmae_jax", "config": {}})
    with pytest.raises(ValueError, match="has no 'sar' rule"):
        model_card.sar_normalization({normalization.KEY: {"optical": {}}})
