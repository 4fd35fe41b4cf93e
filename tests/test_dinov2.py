"""DINOv2 (with and without registers) and learned-position ViT teachers: parity with transformers and with the
official DINOv2 layout (random weights, CPU torch), position-table resampling, and the loaders' refusals."""
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
import torch
import transformers

from sarmae_jax.convert import state_dicts, teacher_weights  # noqa: E402
from sarmae_jax.models import param_trees, positions, teachers  # noqa: E402
from sarmae_jax.models.teachers import vit_teacher

WIDTH, DEPTH, HEADS, PATCH = 32, 2, 4, 14  # 4 heads: as the "mini" teacher size
CKPT_IMAGE, RUN_IMAGE = 56, 84  # checkpoint grid 4 x 4, teacher grid 6 x 6: the table must be resampled


def _randomise(model):
    """Non-trivial norms, layer scales, biases and position table, so a swapped or dropped name would show."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "layernorm.weight", "lambda1", "layernorm_before.weight")):
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith("bias") or "position_embeddings" in name or "register_tokens" in name:
                p.normal_(0, 0.5 if "position" in name else 0.1)
    return model.eval()


def _dinov2(registers: bool, seed=0):
    torch.manual_seed(seed)
    common = dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                  patch_size=PATCH, image_size=CKPT_IMAGE, layerscale_value=0.5)
    if registers:
        return _randomise(transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(num_register_tokens=4, **common)))
    return _randomise(transformers.Dinov2Model(transformers.Dinov2Config(**common)))


def _state_dict(model, directory):
    """The tensors `save_pretrained` writes (the hub's names: `encoder.layer.N.attention.attention.query`, ...)."""
    model.save_pretrained(str(directory))
    return state_dicts.load(str(directory))


def _to_official(sd):
    """A transformers DINOv2 file's state dict renamed to the official facebookresearch/dinov2 `.pth` layout."""
    out = {"cls_token": sd["embeddings.cls_token"], "pos_embed": sd["embeddings.position_embeddings"],
           "mask_token": sd["embeddings.mask_token"],
           "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
           "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"]}
    if "embeddings.register_tokens" in sd:
        out["register_tokens"] = sd["embeddings.register_tokens"]
    for i in range(DEPTH):
        h, o = f"encoder.layer.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            out[o + "attn.qkv." + part] = np.concatenate([sd[f"{h}attention.attention.{n}.{part}"]
                                                          for n in ("query", "key", "value")])
            out[o + "attn.proj." + part] = sd[f"{h}attention.output.dense.{part}"]
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[f"{o}{name}.{part}"] = sd[f"{h}{name}.{part}"]
        out[o + "ls1.gamma"], out[o + "ls2.gamma"] = sd[h + "layer_scale1.lambda1"], sd[h + "layer_scale2.lambda1"]
    return out


def _images(size, seed=0):
    return np.random.default_rng(seed).normal(size=(2, size, size, 3)).astype(np.float32)


def _torch_tokens(model, images, num_prefix, **kwargs):
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), **kwargs)
    return out.last_hidden_state[:, num_prefix:].numpy()


def _teacher(kind, checkpoint, size="mini", patch=PATCH):
    return ml_collections.ConfigDict(dict(kind=kind, size=size, patch_size=patch, checkpoint=checkpoint))


def _run_teacher(kind, sd, images):
    """Our teacher of `kind` at the images' size, with params converted from `sd`; checked against the module's tree."""
    module = vit_teacher.ViTTeacher(patch_size=PATCH, width=WIDTH, depth=DEPTH, num_heads=HEADS, layer_scale=True,
                                 num_registers=4 if kind == "dinov2_reg" else 0)
    params = teacher_weights.dinov2_from_torch(sd, "x.pth", num_heads=HEADS, patch_size=PATCH,
                                                image_size=images.shape[1], with_registers=kind == "dinov2_reg")
    shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), images[:1])["params"]))
    param_trees.check_tree_matches(params, shapes, what=f"converted {kind}")
    return np.asarray(jax.jit(module.apply)({"params": params}, images))


@pytest.mark.parametrize("how", [positions.PLAIN_BICUBIC, positions.PosResampling(antialias=True), positions.PosResampling(offset=0.1)])
@pytest.mark.parametrize("grid", [(6, 6), (3, 5)])  # up- and down-sampling a 4 x 4 table
def test_resample_pos_embed_matches_torch_interpolate(how, grid):
    table = np.random.default_rng(1).normal(size=(1, 17, 8)).astype(np.float32)
    x = torch.from_numpy(table[:, 1:].reshape(1, 4, 4, 8)).permute(0, 3, 1, 2)
    if how.offset:  # the official DINOv2: scale_factor rather than size
        scale = ((grid[0] + how.offset) / 4, (grid[1] + how.offset) / 4)
        ref = torch.nn.functional.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    else:
        ref = torch.nn.functional.interpolate(x, size=grid, mode="bicubic", align_corners=False, antialias=how.antialias)
    ref = ref.permute(0, 2, 3, 1).reshape(1, -1, 8).numpy()
    ours = positions.resample_pos_embed(table, grid, how)
    assert ours.shape == (1, 1 + grid[0] * grid[1], 8)
    np.testing.assert_array_equal(ours[:, :1], table[:, :1])
    np.testing.assert_allclose(ours[:, 1:], ref, atol=3e-6, rtol=0)  # torch rounds in float32


@pytest.mark.parametrize("kind", ["dinov2", "dinov2_reg"])
def test_dinov2_patch_tokens_match_transformers_with_resampled_positions(kind, tmp_path):
    model = _dinov2(registers=kind == "dinov2_reg")
    images = _images(RUN_IMAGE)
    ours = _run_teacher(kind, _state_dict(model, tmp_path), images)
    ref = _torch_tokens(model, images, 1 + (4 if kind == "dinov2_reg" else 0))
    assert ours.shape == (2, (RUN_IMAGE // PATCH) ** 2, WIDTH)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["dinov2", "dinov2_reg"])
def test_dinov2_official_layout_matches_the_official_forward(kind, tmp_path):
    model = _dinov2(registers=kind == "dinov2_reg", seed=1)
    sd = _state_dict(model, tmp_path / "hf")
    path = str(tmp_path / "dinov2.pth")
    state_dicts.save(path, _to_official(sd))
    images = _images(RUN_IMAGE, seed=1)
    if kind == "dinov2":
        # The official model without registers resamples with interpolate_offset=0.1 (not transformers' way):
        # emulate its forward by handing transformers the table the official code computes at this size.
        grid = RUN_IMAGE // PATCH
        x = torch.from_numpy(sd["embeddings.position_embeddings"][:, 1:].reshape(1, 4, 4, WIDTH)).permute(0, 3, 1, 2)
        x = torch.nn.functional.interpolate(x, scale_factor=((grid + 0.1) / 4,) * 2, mode="bicubic", align_corners=False)
        with torch.no_grad():
            model.embeddings.position_embeddings = torch.nn.Parameter(torch.cat(
                [model.embeddings.position_embeddings[:, :1], x.permute(0, 2, 3, 1).reshape(1, grid * grid, WIDTH)], 1))
    ref = _torch_tokens(model, images, 1 + (4 if kind == "dinov2_reg" else 0))
    np.testing.assert_allclose(_run_teacher(kind, state_dicts.load(path), images), ref, atol=1e-4, rtol=0)


def test_dinov2_kinds_load_through_the_teacher_config_and_refuse_mismatches(tmp_path):
    path = str(tmp_path / "dinov2_reg")
    # A transformers directory as on the hub: its file keeps the stored names (attention.attention.query, ...).
    _dinov2(registers=True, seed=2).save_pretrained(path)
    cfg = _teacher("dinov2_reg", path, size="mini")
    module, width = teachers.build_teacher(cfg)
    assert width == 128 and module.num_registers == 4 and module.layer_scale
    with pytest.raises(ValueError, match=r"encoder/cls_token has \(1, 1, 32\), model expects \(1, 1, 128\)"):
        teacher_weights.load_teacher_params(cfg, module, image_size=RUN_IMAGE)
    with pytest.raises(ValueError, match=r"has 4 register tokens .* set sarc.teacher.kind=dinov2_reg"):
        teacher_weights.load_teacher_checkpoint(_teacher("dinov2", path), path, RUN_IMAGE)
    with pytest.raises(ValueError, match=r"14-pixel patches, but sarc.teacher.patch_size=16.*set model.patch_size"):
        teacher_weights.load_teacher_checkpoint(_teacher("dinov2_reg", path, patch=16), path, 224)
    sd = _to_official(_state_dict(_dinov2(registers=False), tmp_path / "plain"))
    del sd["blocks.1.ls2.gamma"]
    sd["blocks.0.attn.surprise"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as e:
        teacher_weights.dinov2_from_torch(sd, "x.pth", num_heads=HEADS, patch_size=PATCH, image_size=RUN_IMAGE,
                                           with_registers=False)
    assert "missing:    blocks.1.ls2.gamma (32,)" in str(e.value)
    assert "unexpected: blocks.0.attn.surprise" in str(e.value)


def test_vit_teacher_accepts_a_learned_position_hf_vitmodel(tmp_path):
    torch.manual_seed(3)
    model = _randomise(transformers.ViTModel(transformers.ViTConfig(
        hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
        patch_size=PATCH, image_size=CKPT_IMAGE, layer_norm_eps=1e-6), add_pooling_layer=False))
    path = str(tmp_path / "vit")
    model.save_pretrained(path)
    images = _images(RUN_IMAGE, seed=3)
    params = teacher_weights.load_teacher_checkpoint(_teacher("vit", path), path, RUN_IMAGE)
    module = vit_teacher.ViTTeacher(patch_size=PATCH, width=WIDTH, depth=DEPTH, num_heads=HEADS)
    ours = np.asarray(jax.jit(module.apply)({"params": params}, images))
    ref = _torch_tokens(model, images, 1, interpolate_pos_encoding=True)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
