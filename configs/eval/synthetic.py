"""Evaluation on the embedded synthetic SAR scenes (5 classes): the default, no download needed.

Command (after `sarmae-train --config configs/smoke.py --workdir runs/smoke`):

    sarmae-eval --config configs/eval/synthetic.py --checkpoint runs/smoke/export --workdir runs/eval_smoke
    sarmae-eval --config configs/eval/synthetic.py --checkpoint runs/smoke/export --random_init \
        --workdir runs/eval_random          # the random-init baseline, same architecture

What to expect (2-core CPU, smoke `mini` ViT at 64x64): the dataset (2,048 train + 512 test scenes,
seed 0, identical to the smoke pre-training set) is generated into /tmp/sarmae_eval/synthetic in
seconds; features + linear probe + k-NN for 40-shot and 30% (5 seeds each) take about a minute;
fine-tuning takes about 3.5 minutes per seed on the 30% split (240 steps + 30 evaluations), so the
full 5 seeds x 2 splits is about half an hour on CPU (minutes on a GPU); reconstruction seconds. A
validation set (10% of train, stratified) is held out, so tables also show the test accuracy at
the best validation epoch. The smoke-pretrained encoder should beat the random-init one clearly on
the linear probe and k-NN (numbers in docs/evaluate.md).
Probe only: add `--config.protocols="('linear_probe','knn')"`.
"""
from sarmae_jax.evaluate import config as config_lib


def get_config():
    c = config_lib.default_config()
    c.dataset.kind = "synthetic"
    c.dataset.path = "/tmp/sarmae_eval/synthetic"
    c.dataset.val_split = "holdout:0.1"
    c.splits = ("shots:40", "fraction:0.3")
    c.finetune.batch_size = 64
    return c
