"""PyTorch interop: bitwise round trips, transformers parity (ViTModel, ViTMAEForPreTraining), timm layout, import CLI."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from data_pipelines import normalization  # noqa: E402
from sarmae_jax.convert import cli, released, state_dicts, teacher_weights, torch_export, torch_import, vit_layout  # noqa: E402
from sarmae_jax.models import anchor, mae, param_trees, patches, positions, sarmae, teachers, vit  # noqa: E402
from sarmae_jax.training import checkpoint  # noqa: E402
from tests.conftest import timm_reference_forward  # noqa: E402

W, DEPTH, HEADS, DEC = 64, 2, 4, dict(width=32, depth=1, num_heads=4)
IMAGE, PATCH, TEACHER_W = 32, 16, 48


def _perturb(params, seed):
    """Random values everywhere (norm scales and biases included), so a swapped or transposed tensor shows."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: (np.asarray(x) + 0.2 * rng.normal(size=np.shape(x))).astype(np.float32), params)


def _modules(scan=True):
    opts = vit.StackOptions(scan=scan)
    enc = vit.ViTEncoder(patch_size=PATCH, width=W, depth=DEPTH, num_heads=HEADS, stack=opts)
    dec = mae.MAEDecoder(patch_size=PATCH, stack=opts, **DEC)
    return enc, dec, anchor.AnchorHead(TEACHER_W)


def _params(scan=True, seed=0):
    enc, dec, head = _modules(scan)
    k = jax.random.key(seed)
    n = (IMAGE // PATCH) ** 2
    # Shapes only (no init compile): the values are all drawn by `_perturb`.
    params = jax.eval_shape(lambda: nn.unbox({
        "encoder": enc.init(k, jnp.zeros((1, IMAGE, IMAGE, 3)))["params"],
        "decoder": dec.init(k, jnp.zeros((1, 2, W)), jnp.zeros((1, n), jnp.int32))["params"],
        "anchor_head": head.init(k, jnp.zeros((1, 1, W)))["params"]}))
    return _perturb(jax.tree.map(lambda s: np.zeros(s.shape, np.float32), params), seed)


def _images(b=2, seed=0):
    return np.random.default_rng(seed).normal(size=(b, IMAGE, IMAGE, 3)).astype(np.float32)


def _assert_trees_equal(a, b):
    fa, fb = (dict(jax.tree_util.tree_flatten_with_path(t)[0]) for t in (a, b))
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


def timm_vit_keys(depth):
    """The state-dict keys of timm `vit_base_patch16_224(num_classes=0)` (from timm's VisionTransformer), any depth."""
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
             "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"]
    return set(keys + [f"blocks.{i}.{b}" for i in range(depth) for b in block])


@pytest.mark.parametrize("scan", [True, False])
def test_released_format_round_trip_is_bitwise_lossless(tmp_path, scan):
    params = _params(scan)
    path = state_dicts.save(str(tmp_path / "sarmae.pth"), released.to_pretraining(params, IMAGE), wrap_key="model")
    back = torch_import.import_mae_family(state_dicts.load(path), path, num_heads=HEADS, image_size=IMAGE,
                                          decoder=DEC, scan=scan)
    _assert_trees_equal(params, back)


def test_timm_export_has_timm_keys_and_matches_a_timm_forward(tmp_path):
    params = _params()
    sd = torch_export.to_timm(params, IMAGE)
    assert set(sd) == timm_vit_keys(DEPTH)
    assert sd["pos_embed"].shape == (1, 1 + (IMAGE // PATCH) ** 2, W) and not sd["pos_embed"][0, 0].any()
    images = _images()
    ours = _modules()[0].apply({"params": params["encoder"]}, images)
    np.testing.assert_allclose(np.asarray(ours), timm_reference_forward(sd, images, HEADS), atol=1e-4, rtol=0)
    for name in ("vit.safetensors", "vit.pth"):  # both files hold the same bits
        path = cli._save(str(tmp_path / name), sd)
        _assert_trees_equal(sd, state_dicts.load(path))


def _file_keys(directory):
    return set(state_dicts.load(str(directory)))


def test_hf_vitmodel_export_loads_strictly_and_matches(tmp_path):
    params = _params(seed=1)
    sd, config = torch_export.to_hf_vit(params, IMAGE)
    out = tmp_path / "hf_vit"
    out.mkdir()
    (out / "config.json").write_text(__import__("json").dumps(config))
    state_dicts.save(str(out / "model.safetensors"), sd)
    model, info = transformers.ViTModel.from_pretrained(str(out), add_pooling_layer=False, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    images = _images()
    with torch.no_grad():
        ref = model.eval()(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).last_hidden_state.numpy()
    ours = _modules()[0].apply({"params": params["encoder"]}, images)
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=0)
    # What transformers itself writes for this model: exactly our key set, and it imports back bit for bit
    # (a pooler, which `ViTModel` has by default, is a classifier part and is read past).
    resaved = tmp_path / "resaved"
    model.save_pretrained(str(resaved))
    assert set(sd) == _file_keys(resaved)
    back = torch_import.import_mae_family(state_dicts.load(str(resaved)), str(resaved), num_heads=HEADS, image_size=IMAGE)
    _assert_trees_equal(params["encoder"], back["encoder"])
    pooled = tmp_path / "pooled"
    transformers.ViTModel.from_pretrained(str(out)).save_pretrained(str(pooled))
    assert "pooler.dense.weight" in _file_keys(pooled)
    back = torch_import.import_mae_family(state_dicts.load(str(pooled)), str(pooled), num_heads=HEADS, image_size=IMAGE)
    _assert_trees_equal(params["encoder"], back["encoder"])


def test_hf_vitmae_reconstruction_and_loss_match_with_the_same_noise(tmp_path):
    params = _params(seed=2)
    export_dir = checkpoint.export_params(str(tmp_path / "export"), params, {
        normalization.KEY: normalization.NORMALIZATION,  # every export records one (the card refuses to guess it)
        "config": {"model": {"image_size": IMAGE, "mask_ratio": 0.75, "norm_pix_loss": False}}})
    out = cli.run_export(export_dir, str(tmp_path / "hf_mae"), "hf-vitmae")
    model, info = transformers.ViTMAEForPreTraining.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    images = _images(b=3, seed=3)
    noise = np.random.default_rng(4).uniform(size=(3, (IMAGE // PATCH) ** 2)).astype(np.float32)
    with torch.no_grad():
        ref = model.eval()(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), noise=torch.from_numpy(noise))
    enc, dec, _ = _modules()
    m = mae.masking_from_noise(jnp.asarray(noise), 0.75)
    latent = enc.apply({"params": params["encoder"]}, images, m.ids_keep)
    pred = dec.apply({"params": params["decoder"]}, latent, m.ids_restore)
    np.testing.assert_array_equal(np.asarray(m.mask), ref.mask.numpy())
    np.testing.assert_allclose(np.asarray(pred), ref.logits.numpy(), atol=1e-4, rtol=0)
    loss = mae.reconstruction_loss(pred, patches.patchify(jnp.asarray(images), PATCH), m.mask)
    np.testing.assert_allclose(float(loss), float(ref.loss), atol=1e-4, rtol=0)
    # The torch model's own files (`save_pretrained`: `vit.encoder.layer.N.attention.attention.query`,
    # `decoder.decoder_encoder.layer.N...`) hold exactly our key set and import back bit for bit; so does its
    # transformers 5.x in-memory state dict (`vit.layers.N.attention.q_proj`, `decoder.decoder_layers.N...`).
    resaved = tmp_path / "resaved"
    model.save_pretrained(str(resaved))
    assert _file_keys(out) == _file_keys(resaved)
    for source in (state_dicts.load(str(resaved)), {k: v.numpy() for k, v in model.state_dict().items()}):
        back = torch_import.import_mae_family(source, str(resaved), num_heads=HEADS, image_size=IMAGE, decoder=DEC)
        _assert_trees_equal({p: params[p] for p in ("encoder", "decoder")}, back)


@pytest.mark.parametrize("family", ["vit", "vitmae", "dinov2", "dinov2_reg", "dinov3"])
def test_hf_live_names_map_to_the_file_names_save_pretrained_writes(tmp_path, family):
    small = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=32,
                 patch_size=16)
    model = {"vit": lambda: transformers.ViTModel(transformers.ViTConfig(**small)),
             "vitmae": lambda: transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(
                 **small, decoder_hidden_size=8, decoder_num_hidden_layers=2, decoder_num_attention_heads=2,
                 decoder_intermediate_size=16)),
             "dinov2": lambda: transformers.Dinov2Model(transformers.Dinov2Config(**small)),
             "dinov2_reg": lambda: transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(**small)),
             "dinov3": lambda: transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(**small))}[family]()
    model.save_pretrained(str(tmp_path))
    files = state_dicts.load(str(tmp_path))
    live = {k: v.numpy() for k, v in model.state_dict().items()}
    assert set(live) != set(files)  # transformers 5.x renames on load: otherwise this test checks nothing
    assert vit_layout.hf_live_naming(live) == {"vitmae": "vit", "dinov2_reg": "dinov2"}.get(family, family)
    assert vit_layout.hf_live_naming(files) is None
    renamed = vit_layout.hf_live_names_to_file(live)
    _assert_trees_equal(files, renamed)
    _assert_trees_equal(files, vit_layout.hf_live_names_to_file(files))


def _fake_released_checkpoint(path, size="tiny", seed=0):
    """A released-format SARMAE `.pth` from random torch weights: `{"model": {"module.sar_encoder.*": ...}}`, with the
    SARC head under this project's earlier name `align_head.` (still read)."""
    arch = vit.VIT_SIZES[size]
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: 0.2 * torch.randn(*s, generator=g)  # noqa: E731
    d, dw, grid = arch["width"], DEC["width"], IMAGE // PATCH
    sd = {"cls_token": rnd(1, 1, d), "pos_embed": torch.from_numpy(positions.sincos_2d(d, grid)[None]),
          "patch_embed.proj.weight": rnd(d, 3, PATCH, PATCH), "patch_embed.proj.bias": rnd(d),
          "norm.weight": 1 + rnd(d), "norm.bias": rnd(d), "mask_token": rnd(1, 1, dw),
          "decoder_pos_embed": torch.from_numpy(positions.sincos_2d(dw, grid)[None]),
          "decoder_embed.weight": rnd(dw, d), "decoder_embed.bias": rnd(dw), "decoder_norm.weight": 1 + rnd(dw),
          "decoder_norm.bias": rnd(dw), "decoder_pred.weight": rnd(PATCH * PATCH * 3, dw), "decoder_pred.bias": rnd(PATCH * PATCH * 3),
          "align_head.0.weight": rnd(d, d), "align_head.0.bias": rnd(d), "align_head.2.weight": rnd(TEACHER_W, d),
          "align_head.2.bias": rnd(TEACHER_W), "align_head.3.weight": 1 + rnd(TEACHER_W), "align_head.3.bias": rnd(TEACHER_W)}
    for prefix, width, depth in (("blocks", d, arch["depth"]), ("decoder_blocks", dw, DEC["depth"])):
        for i in range(depth):
            p = f"{prefix}.{i}."
            for n in ("norm1", "norm2"):
                sd[p + n + ".weight"], sd[p + n + ".bias"] = 1 + rnd(width), rnd(width)
            for n, (o, i_) in {"attn.qkv": (3 * width, width), "attn.proj": (width, width),
                               "mlp.fc1": (4 * width, width), "mlp.fc2": (width, 4 * width)}.items():
                sd[p + n + ".weight"], sd[p + n + ".bias"] = rnd(o, i_), rnd(o)
    torch.save({"model": {"module.sar_encoder." + k: v for k, v in sd.items()}, "epoch": 299}, path)
    return {k: v.numpy() for k, v in sd.items()}


def test_import_cli_released_checkpoint_reproduces_its_encoder_and_feeds_init_from(tmp_path):
    src = str(tmp_path / "sarmae_vit_tiny.pth")
    sd = _fake_released_checkpoint(src)
    out = str(tmp_path / "imported")
    args = [src, out, "--size", "tiny", "--image-size", str(IMAGE), "--decoder-width", "32", "--decoder-depth", "1",
            "--decoder-heads", "4"]
    assert cli.import_main(args) == 0
    params, meta = checkpoint.load_export(out)
    assert sorted(params) == ["anchor_head", "decoder", "encoder"] and meta["teacher_width"] == TEACHER_W
    config = cli.import_config("tiny", IMAGE, PATCH, DEC, True)
    encoder = sarmae.build_encoder(config.model)
    images = _images()
    ours = encoder.apply({"params": params["encoder"]}, images)
    np.testing.assert_allclose(np.asarray(ours), timm_reference_forward(sd, images, vit.VIT_SIZES["tiny"]["num_heads"]),
                               atol=1e-4, rtol=0)
    # What the trainer's init_from checks: every part matches a model of this config, name by name and shape by shape.
    shapes = cli.model_shapes(cli.import_config("tiny", IMAGE, PATCH, DEC, True, TEACHER_W))
    for part in params:
        param_trees.check_tree_matches(params[part], shapes[part], what=part)
    enc_only = str(tmp_path / "enc_only")
    assert cli.import_main(args[:1] + [enc_only] + args[2:] + ["--parts", "encoder"]) == 0
    encoder_only, meta = checkpoint.load_export(enc_only)
    assert sorted(encoder_only) == ["encoder"] and meta["imported_parts"] == ["encoder"]
    _assert_trees_equal(encoder_only["encoder"], params["encoder"])
    # Export back to the released pre-training layout: the same tensors, under the released names.
    back = state_dicts.load(cli.run_export(out, str(tmp_path / "again.pth"), "sarmae-pretrain"))
    renamed = {(k.replace("align_head.", released.HEAD) if k.startswith("align_head.") else released.STUDENT + k): v
               for k, v in sd.items()}
    _assert_trees_equal(renamed, back)


def test_import_refuses_wrong_size_truncated_and_foreign_files(tmp_path, capsys):
    src = str(tmp_path / "tiny.pth")
    _fake_released_checkpoint(src)
    args = ["--image-size", str(IMAGE), "--decoder-width", "32", "--decoder-depth", "1", "--decoder-heads", "4"]
    assert cli.import_main([src, str(tmp_path / "o1"), "--size", "small"] + args) == 1
    err = capsys.readouterr().err
    assert "the encoder is 192 wide, a ViT-tiny, not the ViT-small --size asks for" in err
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(open(src, "rb").read()[:5000])
    with pytest.raises(ValueError, match="truncated.pth: not a readable PyTorch checkpoint"):
        state_dicts.load(str(truncated))
    foreign = tmp_path / "notes.safetensors"
    foreign.write_text("not weights")
    with pytest.raises(ValueError, match="notes.safetensors: not a readable .safetensors"):
        state_dicts.load(str(foreign))
    sd = torch_import.student_state_dict(state_dicts.load(src))[0]
    sd["pos_embed"] = sd["pos_embed"] + 0.01  # a learned table cannot live in a fixed sin-cos model
    del sd["blocks.3.mlp.fc2.bias"]
    with pytest.raises(ValueError, match="pos_embed differs from the fixed 2-D sin-cos table"):
        torch_import.import_mae_family(sd, "x.pth", num_heads=3, image_size=IMAGE, decoder=DEC)
    sd["pos_embed"] = positions.sincos_2d(192, IMAGE // PATCH)[None]
    with pytest.raises(ValueError, match=r"missing:    blocks.3.mlp.fc2.bias \(192,\)"):
        torch_import.import_mae_family(sd, "x.pth", num_heads=3, image_size=IMAGE, decoder=DEC)


def test_vit_teacher_loads_a_timm_export_through_the_teacher_config(tmp_path):
    import ml_collections

    path = str(tmp_path / "vit_mini.safetensors")
    cfg = ml_collections.ConfigDict(dict(kind="vit", size="mini", patch_size=PATCH, checkpoint=path))
    module, _ = teachers.build_teacher(cfg)
    shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), jnp.zeros((1, IMAGE, IMAGE, 3)))["params"]))
    params = _perturb(jax.tree.map(lambda s: np.zeros(s.shape, np.float32), shapes), seed=5)
    # The export writes the sin-cos table; the teacher keeps whatever table it loads as its `pos_embed` parameter.
    params["encoder"]["pos_embed"] = positions.sincos_2d(params["encoder"]["cls_token"].shape[-1], IMAGE // PATCH)[None]
    state_dicts.save(path, torch_export.to_timm(params, IMAGE))
    _assert_trees_equal(params, teacher_weights.load_teacher_params(cfg, module, image_size=IMAGE))
