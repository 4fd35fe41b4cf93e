"""FUSAR-Ship classification (10 classes), the released protocol: 40-shot and 30% labelled.

Command:

    sarmae-eval --config configs/eval/fusar_ship.py --checkpoint runs/vit_b16/export \
        --workdir runs/eval_fusar --config.dataset.path=/data/FUSAR-Ship

Layout: `<path>/Train/<class>/*.png|tif`, `<path>/Val/<class>/...` (as distributed with SARMAE's
evaluation; `Val/` is the reported test split). Images are resized to the checkpoint's input size
(224) with a plain resize, as released. Full fine-tuning: 30 epochs, 5 seeds, batch 64, layer decay
0.75, drop path 0.1, label smoothing 0.1 -- hours on one GPU for ViT-B.
Expected (paper, ViT-B/16 SARMAE): 89.30 (40-shot), 92.92 (30%) top-1, last epoch.
"""
from sarmae_jax.evaluate import config as config_lib


def get_config():
    c = config_lib.default_config()
    c.dataset.kind = "image_folder"
    c.dataset.path = "/data/FUSAR-Ship"
    c.dataset.train_split = "Train"
    c.dataset.test_split = "Val"
    c.dataset.val_split = ""  # the release has none; "holdout:0.1" adds one carved from Train
    c.splits = ("shots:40", "fraction:0.3")
    c.protocols = ("finetune", "linear_probe", "knn")
    return c
