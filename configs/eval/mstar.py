"""MSTAR vehicle classification (10 classes; some papers use 8): released protocol, 40-shot and 30%.

    sarmae-eval --config configs/eval/mstar.py --checkpoint runs/vit_b16/export \
        --workdir runs/eval_mstar --config.dataset.path=/data/MSTAR

Expect hours on one GPU for ViT-B/16 (5 seeds x 2 splits x 30 epochs of full fine-tuning).
Paper (ViT-B/16 SARMAE, last epoch, top-1): 96.70 (40-shot), 99.61 (30%); ViT-L 97.24, 98.92.
"""
from sarmae_jax.evaluate import config as config_lib


def get_config():
    return config_lib.released_protocol("/data/MSTAR", ("shots:40", "fraction:0.3"))
