"""SARMAE ViT-L/16 pre-training on SAR-1M: the released recipe (configs/recipe.py) at ViT-L, 200 epochs.

Command:

    sarmae-train --config configs/sarmae_vit_l16.py --workdir gs://my-bucket/sarmae_l16 \
        --config.data.path=/mnt/my-bucket/sar1m_shards \
        --config.sarc.teacher.checkpoint=gs://my-bucket/weights/dinov3_vitb16_pretrain_lvd1689m.pth \
        --config.train.init_from=gs://my-bucket/weights/mae_pretrain_vit_large_export

Paths as in configs/sarmae_vit_b16.py: gs:// for the run directory and weights, a FUSE mount for the data.

What to expect: as configs/sarmae_vit_b16.py but a ViT-L/16 encoder (1024 wide, 24 blocks, 16 heads)
for 200 epochs (the release's ViT-L checkpoint names suggest 200). The teacher stays DINOv3 ViT-B/16,
so the SARC head maps 1024 -> 768. Use `--config.model.remat=dots` if activations do not fit.
"""
from configs.recipe import pretrain_recipe


def get_config():
    return pretrain_recipe("large", num_epochs=200.0)
