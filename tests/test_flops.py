"""Analytic FLOPs of a training step against a hand count (ViT-B/16 MAE at 224 px, 75 % masking)."""
import pytest

from configs import sarmae_vit_b16
from sarmae_jax.training import flops


def _block(tokens, width):
    """One pre-norm block by hand: qkv 3 D^2, output D^2, MLP 8 D^2 multiply-adds per token, then T^2 D twice."""
    return 2 * (tokens * width * (3 * width + width + 8 * width) + 2 * tokens * tokens * width)


# ViT-B/16 at 224 px: N = 196 patches, K = 49 visible; encoder width 768 x 12, decoder 512 x 8, patch 16*16*3 = 768.
ENCODER = 2 * 196 * 768 * 768 + 12 * _block(50, 768)  # patch embed of all patches; blocks over K + class token
DECODER = 2 * 50 * 768 * 512 + 8 * _block(197, 512) + 2 * 196 * 512 * 768  # embed, blocks over N + class, predict
HEAD = 2 * 49 * 768 * 768 + 2 * 49 * 768 * 768  # anchor head on the K visible tokens, teacher width 768
TEACHER_EMBED = 2 * 196 * 768 * 768


@pytest.mark.parametrize("kind, teacher", [
    ("dinov3", TEACHER_EMBED + 12 * _block(1 + 4 + 196, 768)),  # class + 4 registers + patches
    ("dinov2_reg", TEACHER_EMBED + 12 * _block(1 + 4 + 196, 768)),
    ("dinov2", TEACHER_EMBED + 12 * _block(1 + 196, 768)),
    ("vit", TEACHER_EMBED + 12 * _block(1 + 196, 768)),
    ("released", TEACHER_EMBED),  # patch embedding only
])
def test_vit_b16_step_flops_match_a_hand_count(kind, teacher):
    config = sarmae_vit_b16.get_config()
    config.sarc.teacher.kind = kind
    # Trained parts count forward + backward (3x), the frozen teacher its forward only.
    assert flops.train_step_flops_per_image(config) == pytest.approx(3 * (ENCODER + DECODER + HEAD) + teacher, rel=1e-12)
    config.sarc.enabled = False
    assert flops.train_step_flops_per_image(config) == pytest.approx(3 * (ENCODER + DECODER), rel=1e-12)


def test_a_single_channel_student_leaves_the_rgb_teacher_embedding_unchanged():
    config = sarmae_vit_b16.get_config()
    config.sarc.teacher.kind = "released"
    three = flops.train_step_flops_per_image(config)
    config.model.in_channels = 1
    # Only the student's patch embedding and the decoder's prediction shrink (768 -> 256 pixel values per patch).
    # Both are products with 196 patches x (encoder width 768 + decoder width 512), trained (3x).
    saved = 3 * 2 * 196 * (768 + 512) * (768 - 256)
    assert three - flops.train_step_flops_per_image(config) == pytest.approx(saved, rel=1e-12)


@pytest.mark.parametrize("kind", ["dinov3", "released"])
def test_precomputed_teacher_tokens_count_no_teacher_forward(kind):
    """The trainer passes live_teacher=False when the dataset's stored tokens replace the teacher: the
    teacher does not run, so it counts 0; the anchor head still trains on the stored tokens (3x)."""
    config = sarmae_vit_b16.get_config()
    config.sarc.teacher.kind = kind
    stored = flops.train_step_flops_per_image(config, live_teacher=False)
    assert stored == pytest.approx(3 * (ENCODER + DECODER + HEAD), rel=1e-12)
    assert flops.train_step_flops_per_image(config) > stored
