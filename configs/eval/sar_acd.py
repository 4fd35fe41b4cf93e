"""SAR-ACD aircraft classification (5 classes): released protocol, 30% labelled.

    sarmae-eval --config configs/eval/sar_acd.py --checkpoint runs/vit_b16/export \
        --workdir runs/eval_sar_acd --config.dataset.path=/data/SAR-ACD

Expect about an hour on one GPU for ViT-B/16 (5 seeds x 30 epochs of full fine-tuning).
Paper (ViT-B/16 SARMAE, last epoch, top-1): 95.06 (30%); ViT-L 95.63.
"""
from sarmae_jax.evaluate import config as config_lib


def get_config():
    return config_lib.released_protocol("/data/SAR-ACD", ("fraction:0.3",))
