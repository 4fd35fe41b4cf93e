"""ViT / MAE / SARC model pieces: shapes, masking invariants, losses, parameter counts."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sarmae_jax import config as config_lib
from sarmae_jax.models import anchor, attention, mae, param_trees, patches, positions, sarmae, vit


def test_patchify_roundtrip_and_order():
    x = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
    p = patches.patchify(x, 4)
    assert p.shape == (2, 4, 48)
    # Patch 1 is the top-right 4x4 block; its first pixel is (row 0, col 4), channels contiguous.
    np.testing.assert_array_equal(p[0, 1, :3], x[0, 0, 4])
    np.testing.assert_array_equal(p[0, 1, 3:6], x[0, 0, 5])
    np.testing.assert_array_equal(patches.unpatchify(p, 4, 3), x)


def test_sincos_table_matches_mae_layout():
    table = positions.sincos_2d(8, 3)
    assert table.shape == (10, 8)
    np.testing.assert_array_equal(table[0], 0.0)  # class token row
    # MAE: first half encodes the column (w), second half the row (h). Patch 1 = (row 0, col 1).
    col1 = positions.sincos_1d(4, np.array([1.0]))[0]
    row0 = positions.sincos_1d(4, np.array([0.0]))[0]
    np.testing.assert_allclose(table[2], np.concatenate([col1, row0]), rtol=1e-6)


@pytest.mark.parametrize("ratio", [0.75, 0.5, 0.9])
def test_random_masking_invariants(ratio):
    b, n = 6, 64
    m = mae.random_masking(jax.random.key(0), b, n, ratio)
    k = mae.num_kept(n, ratio)
    assert m.ids_keep.shape == (b, k) and m.ids_restore.shape == (b, n) and m.mask.shape == (b, n)
    mask = np.asarray(m.mask)
    np.testing.assert_array_equal(mask.sum(1), n - k)  # same count per sample
    for i in range(b):
        kept = np.asarray(m.ids_keep[i])
        assert len(set(kept.tolist())) == k  # no duplicates
        np.testing.assert_array_equal(mask[i, kept], 0.0)  # kept patches are exactly the unmasked ones
        # ids_restore inverts the shuffle: it is a permutation.
        np.testing.assert_array_equal(np.sort(np.asarray(m.ids_restore[i])), np.arange(n))
    assert not np.array_equal(mask[0], mask[1])  # per-sample, not one mask for the batch


def test_masking_from_noise_keeps_smallest_noise():
    noise = jnp.array([[0.9, 0.1, 0.5, 0.3]])
    m = mae.masking_from_noise(noise, 0.5)
    np.testing.assert_array_equal(m.ids_keep, [[1, 3]])
    np.testing.assert_array_equal(m.mask, [[1, 0, 1, 0]])


def test_reconstruction_loss_counts_masked_patches_only():
    target = jnp.zeros((1, 4, 3))
    pred = jnp.array([[[1.0] * 3, [2.0] * 3, [100.0] * 3, [100.0] * 3]])
    mask = jnp.array([[1.0, 1.0, 0.0, 0.0]])
    # Visible patches (huge errors) must not count: mean of 1 and 4.
    assert float(mae.reconstruction_loss(pred, target, mask)) == pytest.approx(2.5)
    # Gradient flows only into masked patches.
    g = jax.grad(lambda p: mae.reconstruction_loss(p, target, mask))(pred)
    np.testing.assert_array_equal(g[0, 2:], 0.0)
    assert np.all(np.asarray(g[0, :2]) != 0)


def test_norm_pix_loss_normalises_targets():
    t = jnp.array([[[1.0, 3.0], [10.0, 30.0]]])
    normed = (t - t.mean(-1, keepdims=True)) / jnp.sqrt(t.var(-1, keepdims=True) + 1e-6)
    mask = jnp.ones((1, 2))
    assert float(mae.reconstruction_loss(normed, t, mask, norm_pix=True)) == pytest.approx(0.0, abs=1e-10)


def test_encoder_runs_on_visible_patches_only():
    enc = vit.ViTEncoder(patch_size=4, width=32, depth=2, num_heads=4)
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    m = mae.random_masking(jax.random.key(1), 2, 16, 0.75)
    params = enc.init(jax.random.key(2), x, m.ids_keep)
    out = enc.apply(params, x, m.ids_keep)
    assert out.shape == (2, 1 + 4, 32)
    # Changing a masked patch's pixels does not change the output.
    masked_patch = int(np.nonzero(np.asarray(m.mask[0]))[0][0])
    r, c = divmod(masked_patch, 4)
    x2 = x.at[0, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4].add(5.0)
    np.testing.assert_allclose(enc.apply(params, x2, m.ids_keep)[0], out[0], atol=1e-6)


def test_scan_and_unrolled_blocks_compute_the_same():
    kw = dict(patch_size=4, width=32, depth=3, num_heads=4)
    scanned = vit.ViTEncoder(**kw, stack=vit.StackOptions(scan=True))
    unrolled = vit.ViTEncoder(**kw, stack=vit.StackOptions(scan=False, remat="full"))
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    p = nn.unbox(scanned.init(jax.random.key(1), x)["params"])
    blocks = p["stack"]["blocks"]
    p_unrolled = dict(p, stack={f"blocks_{i}": jax.tree.map(lambda a: a[i], blocks) for i in range(3)})
    np.testing.assert_allclose(unrolled.apply({"params": p_unrolled}, x), scanned.apply({"params": p}, x), atol=1e-5)


def test_flattened_and_multi_axis_projections_compute_the_same(monkeypatch):
    # One device takes the flattened 2-D matmul; a tensor-parallel mesh contracts the [embed, 3, heads, kv]
    # kernel as it is. Same outputs and gradients either way.
    attn = vit.Attention(num_heads=4)
    x = jax.random.normal(jax.random.key(0), (2, 5, 32))
    p = attn.init(jax.random.key(1), x)
    loss = lambda p, x: jnp.sum(jnp.sin(attn.apply(p, x)))
    flat = jax.value_and_grad(loss, argnums=(0, 1))(p, x)
    monkeypatch.setattr(vit, "_split_across_devices", lambda axes: True)
    multi_axis = jax.value_and_grad(loss, argnums=(0, 1))(p, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), flat, multi_axis)


def test_gelu_is_the_exact_gelu_with_its_gradient():
    """vit.gelu (erf form) against jax.nn.gelu(approximate=False) (erfc form), tails included."""
    x = jnp.linspace(-12.0, 12.0, 20001, dtype=jnp.float32)
    np.testing.assert_allclose(vit.gelu(x), jax.nn.gelu(x, approximate=False), rtol=0, atol=1e-6)
    grad = jax.vmap(jax.grad(vit.gelu))(x)
    np.testing.assert_allclose(grad, jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x), atol=1e-6)
    assert float(vit.gelu(jnp.float32(1.0))) == pytest.approx(0.8413447, abs=1e-6)  # Phi(1)
    assert vit.gelu(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_decoder_output_shape_and_mask_token_use():
    dec = mae.MAEDecoder(patch_size=4, width=32, depth=1, num_heads=4)
    m = mae.random_masking(jax.random.key(1), 2, 16, 0.75)
    latent = jax.random.normal(jax.random.key(0), (2, 5, 48))
    params = dec.init(jax.random.key(2), latent, m.ids_restore)
    pred = dec.apply(params, latent, m.ids_restore)
    assert pred.shape == (2, 16, 4 * 4 * 3) and pred.dtype == jnp.float32


def test_vit_b16_mae_parameter_count_matches_reference():
    c = config_lib.default_config()
    c.sarc.enabled = False
    modules = sarmae.build(c)
    shapes = jax.eval_shape(lambda: sarmae.init_params(modules, c, jax.random.key(0)))
    trainable = param_trees.count_params(shapes)
    assert trainable == 111_655_680  # PyTorch MAE ViT-B/16 with a 512x8 decoder, requires_grad only
    assert trainable + _fixed_position_embedding_count(c) == 111_907_840  # plus the frozen pos_embeds


def _fixed_position_embedding_count(config) -> int:
    """Entries of the fixed sin-cos tables (encoder and decoder, class position included): constants here, frozen
    parameters in PyTorch MAE, so what to add to compare parameter counts with it."""
    m = config.model
    tokens = patches.num_patches(m.image_size, m.patch_size) + 1
    return tokens * (vit.VIT_SIZES[m.size]["width"] + m.decoder.width)


def test_anchor_head_init_and_shapes():
    head = anchor.AnchorHead(teacher_width=24)
    params = nn.unbox(head.init(jax.random.key(0), jnp.zeros((2, 5, 16)))["params"])
    assert head.apply({"params": params}, jnp.ones((2, 5, 16))).shape == (2, 5, 24)
    w = np.asarray(params["fc1"]["kernel"])
    assert abs(w.std() - 0.01) < 0.003
    np.testing.assert_array_equal(params["fc1"]["bias"], 0.0)
    np.testing.assert_array_equal(params["fc2"]["bias"], 0.0)


def test_alignment_loss_range_and_pairing_mask():
    key = jax.random.key(0)
    s = jax.random.normal(key, (3, 4, 8))
    t = jax.random.normal(jax.random.key(1), (3, 4, 8))
    paired = jnp.array([True, False, True])
    loss, n = anchor.alignment_loss(s, t, paired)
    assert 0.0 <= float(loss) <= 2.0 and float(n) == 2
    # Identical -> 0, opposite -> 2.
    assert float(anchor.alignment_loss(t, t, paired)[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(anchor.alignment_loss(-t, t, paired)[0]) == pytest.approx(2.0, abs=1e-6)
    # The unpaired sample does not count, even with garbage (NaN) values in it.
    s_nan = s.at[1].set(jnp.nan)
    assert float(anchor.alignment_loss(s_nan, t, paired)[0]) == pytest.approx(float(loss), rel=1e-6)
    g = jax.grad(lambda x: anchor.alignment_loss(x, t, paired)[0])(s_nan)
    np.testing.assert_array_equal(g[1], 0.0)
    assert np.all(np.isfinite(np.asarray(g)))


def test_alignment_loss_no_paired_sample_is_exactly_zero():
    s = jax.random.normal(jax.random.key(0), (2, 4, 8))
    loss, n = anchor.alignment_loss(s, jnp.zeros((2, 4, 8)), jnp.array([False, False]))
    assert float(loss) == 0.0 and float(n) == 0.0
    g = jax.grad(lambda x: anchor.alignment_loss(x, jnp.zeros((2, 4, 8)), jnp.array([False, False]))[0])(s)
    assert np.all(np.asarray(g) == 0.0)


def test_alignment_teacher_gets_no_gradient():
    s = jax.random.normal(jax.random.key(0), (2, 4, 8))
    t = jax.random.normal(jax.random.key(1), (2, 4, 8))
    g = jax.grad(lambda tt: anchor.alignment_loss(s, tt, jnp.array([True, True]))[0])(t)
    np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_explicit_attention_matches_jax_attention_and_its_gradients(dtype, tol):
    q, k, v, w = (jax.random.normal(key, (2, 13, 3, 8)) for key in jax.random.split(jax.random.key(0), 4))
    q = 3 * q  # peaked softmax rows, so the backward's row term matters

    def loss(impl, q, k, v):
        out = attention.dot_product_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), impl)
        return jnp.sum(out.astype(jnp.float32) * w)

    with jax.default_matmul_precision("highest"):  # no TF32 on GPUs: compare the maths, not the matmul unit
        explicit = jax.value_and_grad(lambda *a: loss("explicit", *a), argnums=(0, 1, 2))(q, k, v)
        reference = jax.value_and_grad(lambda *a: loss("xla", *a), argnums=(0, 1, 2))(q, k, v)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                                                         rtol=tol, atol=tol), explicit, reference)
    low = q.astype(dtype)
    assert jax.grad(lambda q: jnp.sum(attention.explicit_attention(q, low, low)))(low).dtype == dtype
    # The default is the explicit path; an unknown name is an error, not a silent fallback.
    np.testing.assert_array_equal(attention.dot_product_attention(q, k, v), attention.explicit_attention(q, k, v))
    with pytest.raises(ValueError, match="'flash'"):
        attention.dot_product_attention(q, k, v, "flash")


def test_padded_attention_masks_the_padding_out_of_values_and_gradients():
    """The "cudnn" path pads 197 tokens to 256 with sequence lengths (cuDNN refused 197); the padding must
    change nothing. cuDNN needs a GPU, so the same padding runs here through the XLA implementation."""
    q, k, v, w = (jax.random.normal(key, (2, 197, 2, 8)) for key in jax.random.split(jax.random.key(1), 4))

    def loss(fn, q, k, v):
        return jnp.sum(fn(q, k, v) * w)

    with jax.default_matmul_precision("highest"):
        padded = jax.value_and_grad(lambda *a: loss(lambda *x: attention.padded_attention(
            *x, "xla", attention.CUDNN_SEQUENCE_MULTIPLE), *a), argnums=(0, 1, 2))(q, k, v)
        plain = jax.value_and_grad(lambda *a: loss(attention.explicit_attention, *a), argnums=(0, 1, 2))(q, k, v)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), padded, plain)
    # Without the lengths the zero keys would take weight: the padding is visible, so the check above can fail.
    unmasked = jax.nn.dot_product_attention(*(jnp.pad(x, ((0, 0), (0, 59), (0, 0), (0, 0))) for x in (q, k, v)))
    assert not np.allclose(unmasked[:, :197], attention.explicit_attention(q, k, v), atol=1e-3)
