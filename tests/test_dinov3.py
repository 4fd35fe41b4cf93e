"""DINOv3 teacher: parity with transformers' DINOv3ViTModel and the official checkpoint layout (random weights, CPU)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers

from sarmae_jax.convert import state_dicts, teacher_weights  # noqa: E402
from sarmae_jax.models import param_trees, teachers
from sarmae_jax.models.teachers import dinov3  # noqa: E402

WIDTH, DEPTH, HEADS, REGISTERS, PATCH = 64, 2, 4, 4, 16


def _hf_model(seed=0, image_size=64):
    torch.manual_seed(seed)
    cfg = transformers.DINOv3ViTConfig(
        hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS,
        num_register_tokens=REGISTERS, patch_size=PATCH, image_size=image_size, layerscale_value=0.5,
    )
    model = transformers.DINOv3ViTModel(cfg).eval()
    with torch.no_grad():  # non-trivial norms and layer scales, so a swapped name would show
        for name, p in model.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "lambda1")):
                p.add_(0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return model


def _module():
    return dinov3.DINOv3(patch_size=PATCH, width=WIDTH, depth=DEPTH, num_heads=HEADS, num_registers=REGISTERS)


def _hf_patch_tokens(model, images_nhwc):
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy()))
    return out.last_hidden_state[:, 1 + REGISTERS:].numpy()


def _to_official(sd):
    """The transformers file's state dict (`save_pretrained` names) renamed to the official DINOv3 `.pth` layout (fused qkv + k-bias mask)."""
    out = {"cls_token": sd["embeddings.cls_token"], "storage_tokens": sd["embeddings.register_tokens"],
           "mask_token": sd["embeddings.mask_token"][0],
           "patch_embed.proj.weight": sd["embeddings.patch_embeddings.weight"],
           "patch_embed.proj.bias": sd["embeddings.patch_embeddings.bias"],
           "norm.weight": sd["norm.weight"], "norm.bias": sd["norm.bias"],
           "rope_embed.periods": (100.0 ** (2 * np.arange(WIDTH // HEADS // 4) / (WIDTH // HEADS // 2))).astype(np.float32)}
    for i in range(DEPTH):
        h, o = f"layer.{i}.", f"blocks.{i}."
        a = h + "attention."
        out[o + "attn.qkv.weight"] = np.concatenate([sd[a + f"{n}_proj.weight"] for n in "qkv"])
        garbage_k_bias = np.full((WIDTH,), 7.0, np.float32)  # masked out by bias_mask, as in the official code
        out[o + "attn.qkv.bias"] = np.concatenate([sd[a + "q_proj.bias"], garbage_k_bias, sd[a + "v_proj.bias"]])
        out[o + "attn.qkv.bias_mask"] = np.concatenate([np.ones(WIDTH), np.zeros(WIDTH), np.ones(WIDTH)]).astype(np.float32)
        out[o + "attn.proj.weight"], out[o + "attn.proj.bias"] = sd[a + "o_proj.weight"], sd[a + "o_proj.bias"]
        for ours, theirs in (("norm1", "norm1"), ("norm2", "norm2"), ("mlp.fc1", "mlp.up_proj"), ("mlp.fc2", "mlp.down_proj")):
            out[o + ours + ".weight"], out[o + ours + ".bias"] = sd[h + theirs + ".weight"], sd[h + theirs + ".bias"]
        out[o + "ls1.gamma"], out[o + "ls2.gamma"] = sd[h + "layer_scale1.lambda1"], sd[h + "layer_scale2.lambda1"]
    return out


def _hf_state_dict(model):
    """transformers 5.x in-memory names (`model.layer.N.`)."""
    return {k: v.numpy() for k, v in model.state_dict().items()}


def _hf_file(model, directory):
    """What `save_pretrained` (and the hub) stores: `layer.N.` names."""
    model.save_pretrained(str(directory))
    return str(directory)


@pytest.mark.parametrize("layout", ["hf_file", "hf_live", "official"])
def test_dinov3_patch_tokens_match_transformers(tmp_path, layout):
    model = _hf_model()
    path = _hf_file(model, tmp_path / "hf")
    if layout == "hf_live":
        path = state_dicts.save(str(tmp_path / "live.safetensors"), _hf_state_dict(model))
    elif layout == "official":
        path = state_dicts.save(str(tmp_path / "dinov3.pth"), _to_official(state_dicts.load(path)))
    params = teacher_weights.dinov3_from_torch(state_dicts.load(path), path, num_heads=HEADS)
    module = _module()
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    ours = np.asarray(jax.jit(module.apply)({"params": params}, images))
    ref = _hf_patch_tokens(model, images)
    assert ours.shape == (2, 16, WIDTH)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    shapes = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(0), images[:1])["params"]))
    param_trees.check_tree_matches(params, shapes, what="converted DINOv3")


def test_rope_tables_rotate_only_patch_tokens_and_follow_grid():
    cos, sin = dinov3.rope_tables(16, 2, 3)
    assert cos.shape == (6, 16)
    # Patch (row 0, col 0) has centre (-0.5, -2/3): the first frequency's angle is 2 pi * coord.
    # Channels [y freqs | x freqs], tiled twice; the first frequency of each axis is 1.
    for channel, coord in ((0, -0.5), (4, -2 / 3), (8, -0.5), (12, -2 / 3)):
        np.testing.assert_allclose([cos[0, channel], sin[0, channel]],
                                   [np.cos(2 * np.pi * coord), np.sin(2 * np.pi * coord)], atol=1e-6)
    x = jnp.ones((1, 3 + 6, 1, 16))
    rotated = dinov3.apply_rope(x, jnp.asarray(cos), jnp.asarray(sin), num_prefix=3)
    np.testing.assert_array_equal(rotated[:, :3], x[:, :3])
    assert not np.allclose(rotated[:, 3:], 1.0)


def test_dinov3_teacher_kind_is_registered_and_loads_through_the_config(tmp_path):
    path = _hf_file(_hf_model(seed=1, image_size=32), tmp_path / "dinov3")
    cfg = ml_collections.ConfigDict(dict(kind="dinov3", size="small", patch_size=PATCH, checkpoint=path))
    module, width = teachers.build_teacher(cfg)
    assert isinstance(module, dinov3.DINOv3) and width == 384
    # A ViT-S teacher config against a width-64 checkpoint: refused before anything is placed.
    with pytest.raises(ValueError, match=r"width 64 cannot be split into the teacher config's 6 heads"):
        teacher_weights.load_teacher_params(cfg, module, image_size=32)


def test_dinov3_checkpoint_with_missing_and_extra_keys_is_refused(tmp_path):
    sd = state_dicts.load(_hf_file(_hf_model(image_size=32), tmp_path))
    del sd["layer.1.layer_scale2.lambda1"]
    sd["layer.0.surprise"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as e:
        teacher_weights.dinov3_from_torch(sd, "x.safetensors", num_heads=HEADS)
    assert "missing:    layer.1.layer_scale2.lambda1" in str(e.value)
    assert "unexpected: layer.0.surprise" in str(e.value)


def test_unrolled_teacher_blocks_leave_no_loop_and_the_same_tokens():
    """The train step unrolls the teacher's blocks by `model.scan_unroll` (the recipes: fully), so the
    compiled program has no layer loop whose cost the compiler counts once; the tokens do not change."""
    images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    rolled = _module()
    unrolled = dinov3.DINOv3(patch_size=PATCH, width=WIDTH, depth=DEPTH, num_heads=HEADS, num_registers=REGISTERS,
                             scan_unroll=DEPTH)
    params = rolled.init(jax.random.key(1), images)
    np.testing.assert_allclose(unrolled.apply(params, images), rolled.apply(params, images), rtol=1e-6, atol=1e-6)
    assert "while" in jax.jit(rolled.apply).lower(params, images).as_text()
    assert "while" not in jax.jit(unrolled.apply).lower(params, images).as_text()
    cfg = ml_collections.ConfigDict(dict(kind="dinov3", size="small", patch_size=PATCH, checkpoint="random-init"))
    assert teachers.build_teacher(cfg, scan_unroll=32)[0].scan_unroll == 32
    from configs import sarmae_vit_b16
    from sarmae_jax.models import sarmae
    recipe = sarmae_vit_b16.get_config()
    assert sarmae.build(recipe).teacher.scan_unroll == recipe.model.scan_unroll == 32
