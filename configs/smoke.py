"""Smoke pre-training: a small ViT on the embedded synthetic SAR scenes, on one CPU.

Command:

    sarmae-train --config configs/smoke.py --workdir runs/smoke

What to expect (2-core CPU): the synthetic dataset (2,048 train + 512 test 64x64 scenes, 75% paired
with an optical rendering) is generated into runs/smoke/data in a few seconds, then 300 steps of
batch 32 in about 2 minutes; the MAE loss falls visibly (from ~1 towards ~0.1) and the alignment
loss from ~1 downwards. Outputs: runs/smoke/metrics.jsonl, runs/smoke/tensorboard/,
runs/smoke/images/step_*.png (clean | speckled | visible | reconstruction), runs/smoke/checkpoints/,
runs/smoke/export/ (params-only, for sarmae-eval and sarmae-export).
"""
from sarmae_jax import config as config_lib
from sarmae_jax.evaluate import in_loop


def get_config():
    c = config_lib.default_config()
    c.seed = 0

    c.model.size = "mini"
    c.model.image_size = 64
    c.model.patch_size = 8
    c.model.decoder.width = 128
    c.model.decoder.depth = 2
    c.model.decoder.num_heads = 4

    c.sarc.teacher.kind = "vit"  # a small frozen ViT stands in for DINOv3 (no weights can be downloaded)
    c.sarc.teacher.size = "mini"
    c.sarc.teacher.patch_size = 8
    c.sarc.teacher.checkpoint = "random-init"  # explicit: an untrained teacher, for the smoke run only

    c.data.path = None  # generate the synthetic set into <workdir>/data
    c.data.paired_share = 0.7

    c.optim.lr = 1e-3  # absolute; a small model on a short run takes larger steps than ViT-B
    c.optim.warmup_steps = 20

    c.train.batch_size = 32
    c.train.num_steps = 300
    c.train.log_every = 10
    c.train.image_every = 100
    c.train.checkpoint_every = 100

    # k-NN on the run's own labelled synthetic scenes (40 per class of the train split -> the 512 test scenes):
    # representation quality next to the loss, as eval/knn/top1 in metrics.jsonl, TensorBoard and the
    # progress bar. 40-shot keeps each evaluation to a few seconds of the smoke run (docs/evaluate.md).
    c.evals.knn = in_loop.evaluator_config("knn", every_steps=100, split="shots:40")
    return c
