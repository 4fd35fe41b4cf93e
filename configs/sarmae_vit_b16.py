"""SARMAE ViT-B/16 pre-training on SAR-1M: the released recipe (configs/recipe.py), 300 epochs.

Command (a pod; see launch/ for TPU and SLURM launchers):

    sarmae-train --config configs/sarmae_vit_b16.py --workdir gs://my-bucket/sarmae_b16 \
        --config.data.path=/mnt/my-bucket/sar1m_shards \
        --config.sarc.teacher.checkpoint=gs://my-bucket/weights/dinov3_vitb16_pretrain_lvd1689m.pth \
        --config.train.init_from=gs://my-bucket/weights/mae_pretrain_vit_base_export

The run directory, the teacher weights and `init_from` may be local paths or gs:// URIs; the dataset is read
from a local path or a Cloud Storage FUSE mount (`gcsfuse --implicit-dirs my-bucket /mnt/my-bucket` on every
host). docs/scale.md, "Run directories on Cloud Storage", says what goes where.

What to expect: global batch 4096, 300 epochs of (paired count / 0.7) examples, AdamW (0.9, 0.95),
wd 0.05, absolute lr 1e-4 with 1 warm-up epoch and a half-cycle cosine, gradient clipping 1.0, bf16
compute. For the exact released behaviour add --config.sare.model=released --config.sarc.teacher.kind=released.
"""
from configs.recipe import pretrain_recipe


def get_config():
    c = pretrain_recipe("base", num_epochs=300.0)
    # The layout `sarmae-train --config configs/sarmae_vit_b16.py --dry_run --topology v5e:16x16 --plan` chose
    # (benchmarks/layout_plans/, docs/scale.md): data parallel over every chip, the Adam moments split over data
    # (ZeRO-1, optim.shard_over_data), no remat, one micro-batch. Compiled, tensor=2 moved more HBM bytes per chip
    # (bound 44.7 against 30.3 ms with the live teacher) and fsdp adds the gathered parameters' traffic.
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
