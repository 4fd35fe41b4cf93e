"""FUSAR-Ship ship classification (10 classes): released protocol, 40-shot and 30% labelled.

    sarmae-eval --config configs/eval/fusar_ship.py --checkpoint runs/vit_b16/export \
        --workdir runs/eval_fusar --config.dataset.path=/data/FUSAR-Ship

Expect hours on one GPU for ViT-B/16 (5 seeds x 2 splits x 30 epochs of full fine-tuning).
Paper (ViT-B/16 SARMAE, last epoch, top-1): 89.30 (40-shot), 92.92 (30%); ViT-L 90.86, 92.80.
"""
from sarmae_jax.evaluate import config as config_lib


def get_config():
    return config_lib.released_protocol("/data/FUSAR-Ship", ("shots:40", "fraction:0.3"))
