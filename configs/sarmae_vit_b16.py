"""SARMAE ViT-B/16 pre-training on SAR-1M: the released recipe (configs/recipe.py), 300 epochs.

Command (a pod; see launch/ for TPU and SLURM launchers):

    sarmae-train --config configs/sarmae_vit_b16.py --workdir gs://BUCKET/sarmae_b16 \
        --config.data.path=/data/sar1m_shards \
        --config.sarc.teacher.checkpoint=/weights/dinov3_vitb16_pretrain_lvd1689m.pth \
        --config.train.init_from=/weights/mae_pretrain_vit_base_export

What to expect: global batch 4096, 300 epochs of (paired count / 0.7) examples, AdamW (0.9, 0.95),
wd 0.05, absolute lr 1e-4 with 1 warm-up epoch and a half-cycle cosine, gradient clipping 1.0, bf16
compute. For the exact released behaviour add --config.sare.model=released --config.sarc.teacher.kind=released.
"""
from configs.recipe import pretrain_recipe


def get_config():
    return pretrain_recipe("base", num_epochs=300.0)
