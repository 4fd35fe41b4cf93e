"""SARMAE ViT-L/16 pre-training on SAR-1M: the released recipe at ViT-L.

Command:

    sarmae-train --config configs/sarmae_vit_l16.py --workdir gs://BUCKET/sarmae_l16 \
        --config.data.path=/data/sar1m_shards \
        --config.sarc.teacher.checkpoint=/weights/dinov3_vitb16_pretrain_lvd1689m.pth \
        --config.train.init_from=/weights/mae_pretrain_vit_large_export

What to expect: as configs/sarmae_vit_b16.py but a ViT-L/16 encoder (1024 wide, 24 blocks, 16 heads)
for 200 epochs (the release's ViT-L checkpoint names suggest 200). The teacher stays DINOv3 ViT-B/16,
so the SARC head maps 1024 -> 768. Use `--config.model.remat=dots` if activations do not fit.
"""
import importlib.util
import os


def _base_recipe():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sarmae_vit_b16.py")
    spec = importlib.util.spec_from_file_location("sarmae_vit_b16", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    c = _base_recipe()
    c.model.size = "large"
    c.train.num_epochs = 200.0
    return c
