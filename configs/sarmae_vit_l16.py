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
    c = pretrain_recipe("large", num_epochs=200.0)
    # Data parallel over every chip, the Adam moments split over data (ZeRO-1), no remat, one micro-batch: of the
    # layouts compiled for v5e:16x16 with the live teacher, the faster (bound 59.0 ms against 67.9 ms for
    # data=128 tensor=2, which the plan's analytic model had ranked first; docs/scale.md, "Layout plans").
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, 1, 1
    c.model.remat, c.train.grad_accum_steps = "none", 1
    # Evaluation while pre-training (config.evals, sarmae_jax/evaluate/in_loop.py; docs/evaluate.md): k-NN and a
    # linear probe on the public labelled sets (ImageFolder Train/ and Val/, built at the model's input size
    # into dataset.build_dir on first use), every 10,000 steps and at the end, as eval/<name>/top1 in the
    # metrics. Uncomment and point the paths at your copies (local paths: every host reads them):
    #
    # from sarmae_jax.evaluate import in_loop
    #
    # for name, path in (("fusar_ship", "/data/FUSAR-Ship"), ("mstar", "/data/MSTAR")):
    #     for kind in ("knn", "linear_probe"):
    #         e = in_loop.evaluator_config(kind, every_steps=10_000, split="fraction:0.3")
    #         e.dataset.kind, e.dataset.path = "image_folder", path
    #         e.dataset.train_split, e.dataset.test_split = "Train", "Val"
    #         e.dataset.build_dir = "/data/tfds"
    #         c.evals[f"{name}_{kind}"] = e
    return c
