"""Multi-channel SAR (polarisations) through training: `model.in_channels` and `data.sar_units` from the
manifest (training/dataset_config.py), the pipeline, SARE in the stored domain inside the step, pictures,
checkpoint metadata, export / import (timm `in_chans`, Hugging Face `num_channels`), model cards and the
evaluation's inputs. The single-channel path's exactness is covered by the existing tests and the smoke
comparison in docs/speckle.md."""
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers

from data_pipelines import ownership, records, synthetic_dualpol
from sarmae_jax.convert import cli, state_dicts, torch_import
from sarmae_jax.data import pipeline, preprocess
from sarmae_jax.evaluate import encoder as encoder_lib
from sarmae_jax.models import vit
from sarmae_jax.sare import domains
from sarmae_jax.training import checkpoint, dataset_config, dry_run, flops, loop, objective
from tests.conftest import timm_reference_forward, tiny_config

LEGACY_INFO = {"path": "legacy", "sar_channels": 1, "sar_units": {"domain": "intensity", "channels": ["SAR"]}}
DUAL_UNITS = {"domain": "db", "channels": ["VV", "VH"], "db_range": [-35.0, 5.0],
              "decision": "synthetic: sigma0 in dB by construction (data_pipelines/synthetic_dualpol.py)"}


@pytest.fixture(scope="module")
def dualpol(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dualpol"))
    synthetic_dualpol.write_dualpol_dataset(out, num_examples=32, num_test_examples=16, image_size=32,
                                            examples_per_shard=16)
    return out


def _dual_config(path):
    c = tiny_config()
    c.data.path = path
    return c


@pytest.fixture(scope="module")
def dual_run(tmp_path_factory, dualpol):
    workdir = str(tmp_path_factory.mktemp("dual_run"))
    final = loop.train_and_evaluate(_dual_config(dualpol), workdir)
    return workdir, final


# ----------------------------------------------------------------------------------- dataset facts
def test_in_channels_follows_the_data_unless_set():
    assert dataset_config.in_channels_for(None, 1, "d") == 3  # grey repeated to 3, as always
    assert dataset_config.in_channels_for(1, 1, "d") == 1
    assert dataset_config.in_channels_for(None, 2, "d") == 2
    assert dataset_config.in_channels_for(2, 2, "d") == 2
    with pytest.raises(ValueError, match=r"config.model.in_channels=3: dataset d holds 2 SAR channels; expected 2"):
        dataset_config.in_channels_for(3, 2, "dataset d")
    with pytest.raises(ValueError, match=r"config.model.in_channels=2: .* holds 1 SAR channel"):
        dataset_config.in_channels_for(2, 1, "d")


def test_resolve_copies_the_manifest_units_and_refuses_a_contradicting_setting():
    c = tiny_config()
    resolved = dataset_config.resolve(c, LEGACY_INFO)
    assert resolved.model.in_channels == 3 and c.model.in_channels is None  # a copy: the caller's config is untouched
    assert dataset_config.stored_domain(resolved) == domains.LEGACY
    assert dataset_config.data_channels(resolved) == 1 and dataset_config.data_channels(c) == 1
    info = {"path": "dual", "sar_channels": 2, "sar_units": DUAL_UNITS}
    resolved = dataset_config.resolve(c, info)
    assert resolved.model.in_channels == 2 and dataset_config.data_channels(resolved) == 2
    assert dataset_config.stored_domain(resolved) == domains.StoredDomain("db", (-35.0, 5.0))
    c.data.sar_units = {"domain": "intensity", "channels": ["VV", "VH"]}
    with pytest.raises(ValueError, match="config.data.sar_units=.*dataset dual stores"):
        dataset_config.resolve(c, info)


def test_pipeline_reports_and_reads_two_channels(dualpol):
    c = _dual_config(dualpol)
    info = pipeline.dataset_info(c.data)
    assert info["sar_channels"] == 2 and info["sar_units"] == DUAL_UNITS
    data_cfg = pipeline.prepare(c.data, c.model, dualpol)
    batch = next(pipeline.make_train_iterator(data_cfg, global_batch_size=4, seed=0))
    assert batch["sar"].shape == (4, 32, 32, 2) and batch["sar"].dtype == np.uint16
    assert not np.array_equal(batch["sar"][..., 0], batch["sar"][..., 1])
    data_cfg.image_size = 16  # host resize, channel by channel
    small = next(pipeline.make_train_iterator(data_cfg, global_batch_size=4, seed=0))["sar"]
    assert small.shape == (4, 16, 16, 2)
    np.testing.assert_allclose(small[..., 1].mean(), batch["sar"][..., 1].mean(), rtol=0.02)


# ----------------------------------------------------------------------------------- step inputs
def test_normalize_sar_repeats_one_channel_and_refuses_other_counts():
    one = jnp.full((1, 4, 4, 1), 0.25)
    assert preprocess.normalize_sar(one, 3).shape == (1, 4, 4, 3)
    two = jnp.stack([jnp.full((1, 4, 4), 0.25), jnp.full((1, 4, 4), 0.75)], -1)
    np.testing.assert_allclose(preprocess.normalize_sar(two, 2)[0, 0, 0], [-0.5, 0.5])
    with pytest.raises(ValueError, match="SAR images have 2 channels .* the model takes 3"):
        preprocess.normalize_sar(two, 3)
    # Pictures: the channels one above the other.
    pictures = preprocess.denormalize_sar(preprocess.normalize_sar(two, 2), 2)
    assert pictures.shape == (1, 8, 4, 1)
    np.testing.assert_allclose(pictures[0, :4], 0.25)
    np.testing.assert_allclose(pictures[0, 4:], 0.75)


def test_prepare_inputs_speckles_db_records_in_the_db_domain_one_field_per_image():
    c = dataset_config.resolve(tiny_config(), {"path": "dual", "sar_channels": 2, "sar_units": DUAL_UNITS})
    c.sare.prob, c.sare.looks = 1.0, (1.0, 1.0)
    sar = np.zeros((4, 32, 32, 2), np.uint16)
    sar[..., 0], sar[..., 1] = 40000, 30000  # a flat region: about -10.6 and -16.7 dB
    batch = {"sar": jnp.asarray(sar), "optical": jnp.zeros((4, 32, 32, 3), jnp.uint8),
             "is_paired": jnp.ones((4,), bool)}
    inputs = objective.prepare_inputs(batch, jax.random.key(0), c)
    assert inputs["noisy"].shape == (4, 32, 32, 2) and bool(inputs["speckled"].all())
    shift_db = np.asarray(inputs["noisy"] - inputs["clean"]) * preprocess.SAR_STD * 40.0  # normalised -> dB
    np.testing.assert_allclose(shift_db[..., 0], shift_db[..., 1], atol=1e-3)  # shared by VV and VH
    # Additive in dB with the single-look moments: mean -2.51 dB, standard deviation 5.57 dB (4,096 samples).
    assert shift_db[..., 0].mean() == pytest.approx(-2.51, abs=5 * 5.57 / 64)
    assert shift_db[..., 0].std() == pytest.approx(5.57, rel=0.06)


def test_flops_count_the_input_channels():
    c = tiny_config()
    three = flops.train_step_flops_per_image(c)
    c.model.in_channels = 2
    assert flops.train_step_flops_per_image(c) < three


def test_dry_run_lowers_the_step_for_the_datasets_channels(dualpol):
    step = dry_run.lower_train_step(_dual_config(dualpol))
    assert step.abstract_batch["sar"].shape[-1] == 2 and step.config.model.in_channels == 2
    assert step.abstract_state.params["encoder"]["patch_embed"]["proj"]["kernel"].shape[2] == 2


# ----------------------------------------------------------------------------------- a training run
def test_a_two_channel_run_trains_and_records_its_channels_and_units(dual_run):
    workdir, final = dual_run
    assert np.isfinite(final["loss"])
    params, meta = checkpoint.load_export(f"{workdir}/export")
    assert params["encoder"]["patch_embed"]["proj"]["kernel"].shape[2] == 2
    assert params["decoder"]["pred"]["kernel"].shape[-1] == 8 * 8 * 2
    assert meta["config"]["model"]["in_channels"] == 2 and meta["config"]["data"]["sar_units"] == DUAL_UNITS
    # The picture grid shows both channels, one above the other (2 x 32 rows per example).
    from PIL import Image
    (picture,) = (epath for epath in __import__("pathlib").Path(workdir, "images").glob("*.png"))
    assert Image.open(picture).size[1] >= 8 * 64


def test_a_set_in_channels_that_contradicts_the_data_fails_before_compiling(dualpol, tmp_path):
    c = _dual_config(dualpol)
    c.model.in_channels = 3
    with pytest.raises(ValueError, match="config.model.in_channels=3: dataset .* holds 2 SAR channels"):
        loop.train_and_evaluate(c, str(tmp_path / "run"))


# ----------------------------------------------------------------------------------- export / import
def test_two_channel_encoder_exports_to_timm_and_hugging_face_strictly_and_imports_back(dual_run, tmp_path):
    workdir, _ = dual_run
    export = f"{workdir}/export"
    params, meta = checkpoint.load_export(export)
    heads = vit.VIT_SIZES["mini"]["num_heads"]
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 2)).astype(np.float32)
    encoder = encoder_lib.load(export)
    from sarmae_jax.models import sarmae
    ours = np.asarray(sarmae.build_encoder(encoder.model_cfg).apply({"params": params["encoder"]}, images))

    timm_file = cli.run_export(export, str(tmp_path / "vit.safetensors"), "timm")
    sd = state_dicts.load(timm_file)
    assert sd["patch_embed.proj.weight"].shape == (128, 2, 8, 8)  # timm VisionTransformer(in_chans=2)
    np.testing.assert_allclose(ours, timm_reference_forward(sd, images, heads), atol=1e-4, rtol=0)
    card = open(str(tmp_path / "vit.safetensors") + ".md").read() if (tmp_path / "vit.safetensors.md").exists() else \
        next(p.read_text() for p in tmp_path.glob("*.md"))
    assert "in_chans=2" in card and "VV, VH" in card and "repeated to 3" not in card

    hf_dir = cli.run_export(export, str(tmp_path / "hf"), "hf-vit")
    config = json.load(open(f"{hf_dir}/config.json"))
    preprocessor = json.load(open(f"{hf_dir}/preprocessor_config.json"))
    assert config["num_channels"] == 2
    assert preprocessor["image_mean"] == [0.5, 0.5] and preprocessor["do_convert_rgb"] is False
    model, info = transformers.ViTModel.from_pretrained(hf_dir, add_pooling_layer=False, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    with torch.no_grad():
        ref = model.eval()(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).last_hidden_state.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    # Strict: a 3-channel ViTModel refuses these weights.
    with pytest.raises(Exception, match="size mismatch|mismatched|shape"):
        transformers.ViTModel.from_pretrained(hf_dir, num_channels=3, add_pooling_layer=False)

    # sarmae-import reads the 2-channel file back into a 2-channel model, bit for bit.
    out = cli.run_import(timm_file, str(tmp_path / "imported"), image_size=32, decoder=dict(width=32, depth=1, num_heads=2))
    back, back_meta = checkpoint.load_export(out)
    assert back_meta["config"]["model"]["in_channels"] == 2
    for a, b in zip(jax.tree.leaves(back["encoder"]), jax.tree.leaves(params["encoder"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # ... and the encoder part alone, through the converter.
    direct = torch_import.import_mae_family(sd, timm_file, num_heads=heads, image_size=32)
    assert direct["encoder"]["patch_embed"]["proj"]["kernel"].shape[2] == 2


# ----------------------------------------------------------------------------------- evaluation inputs
def test_evaluation_feeds_c_channel_pixels_as_pre_training_did():
    two = jnp.asarray(np.random.default_rng(0).integers(0, 65535, (2, 8, 8, 2)), jnp.uint16)
    np.testing.assert_array_equal(encoder_lib.normalised_inputs(two, 2),
                                  preprocess.normalize_sar(preprocess.to_unit_interval(two), 2))
    grey = jnp.zeros((2, 8, 8, 1), jnp.uint8)
    assert encoder_lib.normalised_inputs(grey, 3).shape == (2, 8, 8, 3)
    assert encoder_lib.normalised_inputs(grey, None).shape == (2, 8, 8, 3)
    with pytest.raises(ValueError, match="SAR images have 2 channels .* the encoder takes 3"):
        encoder_lib.normalised_inputs(two, 3)


def test_dualpol_generator_refuses_to_replace_what_it_did_not_write(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # --overwrite replaces an earlier dual-pol set only, never a user's folder
        with pytest.raises(ownership.OutputError, match=r"did not write \(notes.txt\)"):
            synthetic_dualpol.write_dualpol_dataset(str(tmp_path), overwrite=overwrite, num_examples=4,
                                                    num_test_examples=0, image_size=16)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    manifest = records.read_manifest(
        synthetic_dualpol.write_dualpol_dataset(str(tmp_path / "new"), num_examples=4, num_test_examples=0,
                                                image_size=16) and str(tmp_path / "new"))
    assert manifest["features"]["sar"]["shape"] == [16, 16, 2] and manifest["sar_units"]["domain"] == "db"
    assert isinstance(ml_collections.ConfigDict(manifest).sar_units.db_range, (list, tuple))


def test_evaluation_refuses_data_whose_channels_differ_from_pre_training(dual_run):
    workdir, _ = dual_run
    encoder = encoder_lib.load(f"{workdir}/export")
    assert encoder_lib.data_channels(encoder.metadata) == (2, ["VV", "VH"])
    encoder_lib.check_data_channels(encoder, np.zeros((2, 32, 32, 2), np.uint16), "dual")
    with pytest.raises(ValueError, match=r"grey: SAR images have 1 channel\(s\).*pre-trained on 2 \(VV, VH\)"):
        encoder_lib.check_data_channels(encoder, np.zeros((2, 32, 32, 1), np.uint16), "grey")


def test_teacher_tokens_precompute_keeps_the_channels_and_units(dualpol, tmp_path):
    from data_pipelines import shard_io
    from sarmae_jax.training import teacher_tokens

    out = str(tmp_path / "with_tokens")
    manifest = teacher_tokens.precompute(dualpol, out, tiny_config().sarc.teacher, batch_size=16, splits=["test"])
    assert manifest["features"]["sar"]["shape"] == [32, 32, 2] and manifest["sar_units"] == DUAL_UNITS
    src, dst = shard_io.ShardedRecordSource(dualpol, "test"), shard_io.ShardedRecordSource(out, "test")
    np.testing.assert_array_equal(dst.read_batch(range(len(dst)))[0]["sar"], src.read_batch(range(len(src)))[0]["sar"])


def test_reconstruction_metrics_on_a_two_channel_db_encoder(dual_run, dualpol, tmp_path):
    from data_pipelines import shard_io
    from sarmae_jax.evaluate import reconstruction

    workdir, _ = dual_run
    encoder = encoder_lib.load(f"{workdir}/export")
    source = shard_io.ShardedRecordSource(dualpol, "test")
    clean = source.read_batch(range(len(source)))[0]["sar"]
    cfg = reconstruction.default_config()
    cfg.looks, cfg.num_images, cfg.batch_size, cfg.figure_images = (1.0,), 16, 16, 2
    out = reconstruction.evaluate(encoder, clean, cfg, str(tmp_path / "figure.png"))
    (level,) = out["levels"]
    assert all(np.isfinite(level[k]) for k in ("psnr_noisy", "psnr_recon", "ssim_noisy", "ssim_recon"))
    # ENL of the one-look input, in linear intensity of VV over the flat windows: about 1 when there are any.
    if out["flat_windows"]:
        assert 0.5 < level["enl_noisy"] < 2.0
    assert (tmp_path / "figure.png").exists()


def test_evaluation_refuses_db_data_of_another_range_or_domain(dual_run):
    workdir, _ = dual_run
    encoder = encoder_lib.load(f"{workdir}/export")
    encoder_lib.check_data_units(encoder, DUAL_UNITS, "same")
    encoder_lib.check_data_units(encoder, None, "unknown")
    with pytest.raises(ValueError, match=r"other: SAR stored as db \[-30.0, 10.0\].*pre-trained on db \[-35.0, 5.0\]"):
        encoder_lib.check_data_units(encoder, dict(DUAL_UNITS, db_range=[-30.0, 10.0]), "other")
    with pytest.raises(ValueError, match="linear: SAR stored as intensity"):
        encoder_lib.check_data_units(encoder, {"domain": "intensity", "channels": ["VV", "VH"]}, "linear")
