"""The released SARMAE checkpoints, in and out.

The files are built here from the key names and shapes of the released code (github.com/MiliLab/SARMAE:
`models/models_mae.py` MaskedAutoencoderViT, `models/mae_contrastive.py` SAROpticalPatchAlignment and its
SimplifiedDINOv3 teacher, `main_finetune.py`'s timm classifier, the detection / segmentation `VisionTransformer_timm`
backbones), filled with random tensors, and saved as its trainers save them (`util/misc.py save_model`:
`torch.save({"model", "optimizer", "epoch", "scaler", "args"})`, `args` an argparse.Namespace).
"""
import argparse
import logging

import jax
import ml_collections
import numpy as np
import pytest
import torch

from sarmae_jax.convert import cli, released, state_dicts, teacher_weights
from sarmae_jax.evaluate import encoder as encoder_lib, finetune
from sarmae_jax.models import positions, sarmae, teachers, vit
from sarmae_jax.training import checkpoint
from tests.conftest import timm_reference_forward

SIZE = "mini"  # width 128, depth 4, 4 heads
WIDTH, DEPTH, HEADS = (vit.VIT_SIZES[SIZE][k] for k in ("width", "depth", "num_heads"))
TEACHER_WIDTH = 128  # the released teacher is DINOv3's width; "mini" keeps the test small
IMAGE, PATCH, DEC = 32, 16, dict(width=32, depth=1, num_heads=4)
GRID = IMAGE // PATCH
DEC_FLAGS = ["--image-size", str(IMAGE), "--decoder-width", "32", "--decoder-depth", "1", "--decoder-heads", "4"]


# ------------------------------------------------------------------------------------------ released layouts
def _rand(g, *shape):
    return 0.2 * torch.randn(*shape, generator=g)


def _timm_blocks(g, prefix, width, depth):
    """timm `Block` parameters (norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2), `depth` of them."""
    sd = {}
    for i in range(depth):
        p = f"{prefix}{i}."
        for n in ("norm1", "norm2"):
            sd[p + n + ".weight"], sd[p + n + ".bias"] = 1 + _rand(g, width), _rand(g, width)
        for n, (o, i_) in {"attn.qkv": (3 * width, width), "attn.proj": (width, width),
                           "mlp.fc1": (4 * width, width), "mlp.fc2": (width, 4 * width)}.items():
            sd[p + n + ".weight"], sd[p + n + ".bias"] = _rand(g, o, i_), _rand(g, o)
    return sd


def mae_encoder_sd(g, norm=True, learned_pos=False):
    """The encoder of MaskedAutoencoderViT (= MAE's encoder files): cls_token, pos_embed, patch_embed.proj, blocks, norm."""
    table = torch.from_numpy(positions.sincos_2d(WIDTH, GRID)[None])
    sd = {"cls_token": _rand(g, 1, 1, WIDTH), "pos_embed": table + _rand(g, *table.shape) if learned_pos else table,
          "patch_embed.proj.weight": _rand(g, WIDTH, 3, PATCH, PATCH), "patch_embed.proj.bias": _rand(g, WIDTH),
          **_timm_blocks(g, "blocks.", WIDTH, DEPTH)}
    if norm:
        sd["norm.weight"], sd["norm.bias"] = 1 + _rand(g, WIDTH), _rand(g, WIDTH)
    return sd


def mae_sd(g):
    """MaskedAutoencoderViT.state_dict(): the encoder, then mask_token, decoder_embed, decoder_pos_embed,
    decoder_blocks, decoder_norm, decoder_pred."""
    dw = DEC["width"]
    return {**mae_encoder_sd(g), "mask_token": _rand(g, 1, 1, dw),
            "decoder_pos_embed": torch.from_numpy(positions.sincos_2d(dw, GRID)[None]),
            "decoder_embed.weight": _rand(g, dw, WIDTH), "decoder_embed.bias": _rand(g, dw),
            **_timm_blocks(g, "decoder_blocks.", dw, DEC["depth"]),
            "decoder_norm.weight": 1 + _rand(g, dw), "decoder_norm.bias": _rand(g, dw),
            "decoder_pred.weight": _rand(g, PATCH * PATCH * 3, dw), "decoder_pred.bias": _rand(g, PATCH * PATCH * 3)}


def simplified_dinov3_sd(g):
    """SimplifiedDINOv3.state_dict(): the Conv2d `patch_embed`, the LayerNorm `norm`, `cls_token` (global_pool has none)."""
    return {"patch_embed.weight": _rand(g, TEACHER_WIDTH, 3, PATCH, PATCH), "patch_embed.bias": _rand(g, TEACHER_WIDTH),
            "norm.weight": 1 + _rand(g, TEACHER_WIDTH), "norm.bias": _rand(g, TEACHER_WIDTH),
            "cls_token": _rand(g, 1, 1, TEACHER_WIDTH)}


def pretraining_sd(g, teacher=None):
    """SAROpticalPatchAlignment.state_dict(): sar_encoder (the MAE), sar_alignment_ffn (Linear, ReLU, Linear,
    LayerNorm: indices 0, 2, 3), optical_encoder."""
    sd = {"sar_encoder." + k: v for k, v in mae_sd(g).items()}
    sd.update({"sar_alignment_ffn.0.weight": _rand(g, WIDTH, WIDTH), "sar_alignment_ffn.0.bias": _rand(g, WIDTH),
               "sar_alignment_ffn.2.weight": _rand(g, TEACHER_WIDTH, WIDTH), "sar_alignment_ffn.2.bias": _rand(g, TEACHER_WIDTH),
               "sar_alignment_ffn.3.weight": 1 + _rand(g, TEACHER_WIDTH), "sar_alignment_ffn.3.bias": _rand(g, TEACHER_WIDTH)})
    sd.update({"optical_encoder." + k: v for k, v in (teacher or simplified_dinov3_sd(g)).items()})
    return sd


def pretraining_args():
    """The namespace train_mae_contrastive.py pickles (its README's ViT-B command, after init_distributed_mode)."""
    return argparse.Namespace(
        batch_size=512, epochs=300, accum_iter=1, model="mae_vit_base_patch16", input_size=224, mask_ratio=0.75,
        weight_decay=0.05, lr=1e-4, blr=1e-3, min_lr=0.0, warmup_epochs=1, clip_grad=1.0, data_path="./data",
        output_dir="./output_vitb", log_dir="./output_dir", device="cuda", seed=0, resume="", world_size=8,
        local_rank=0, dist_on_itp=False, dist_url="env://", sar_pretrained="./mae_pretrain_vit_base.pth",
        optical_pretrained="", dinov3_pretrained="./dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth",
        freeze_optical_completely=True, mae_loss_weight=1.0, alignment_loss_weight=0.8, disable_alignment=False,
        loss_schedule="cosine", enable_monitoring=True, enable_sar_noise=True, noise_std=0.1, noise_schedule="fixed",
        random_noise=True, noise_min=0.0, noise_max=0.7, noise_ratio=0.5, ablation_mode="full", use_checkpoint=False,
        num_workers=0, pin_mem=False, start_epoch=0, rank=0, gpu=0, distributed=True, dist_backend="nccl")


def save_like_save_model(path, model_sd, epoch=299, args=None, prefix="", **extra):
    """torch.save of what util/misc.py save_model (and main_finetune.py, with `extra`) writes, optimizer state
    from a real AdamW step over these tensors (no-decay and decay groups) and a real GradScaler's state dict."""
    params = {k: torch.nn.Parameter(v.clone()) for k, v in model_sd.items() if not k.endswith("pos_embed")}
    groups = [{"params": [p for k, p in params.items() if p.ndim == 1 or k.endswith(".bias")], "weight_decay": 0.0},
              {"params": [p for k, p in params.items() if not (p.ndim == 1 or k.endswith(".bias"))], "weight_decay": 0.05}]
    optimizer = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95))
    for p in params.values():
        p.grad = torch.full_like(p, 1e-3)
    optimizer.step()
    torch.save({"model": {prefix + k: v for k, v in model_sd.items()}, "optimizer": optimizer.state_dict(),
                "epoch": epoch, "scaler": torch.amp.GradScaler("cpu").state_dict(),
                "args": args or pretraining_args(), **extra}, path)
    return {k: v.numpy() for k, v in model_sd.items()}


def simplified_dinov3_patches(sd, images_nchw):
    """SimplifiedDINOv3.forward(x, return_patches=True): conv -> flatten -> transpose -> LayerNorm (eps 1e-5)."""
    f = torch.nn.functional
    x = f.conv2d(images_nchw, sd["patch_embed.weight"], sd["patch_embed.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    return f.layer_norm(x, (x.shape[-1],), sd["norm.weight"], sd["norm.bias"], eps=1e-5)


def _assert_same(expected: dict, got: dict):
    assert set(got) == set(expected), (sorted(set(expected) - set(got)), sorted(set(got) - set(expected)))
    for k in expected:
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(expected[k]), err_msg=k)


def _images(b=2, seed=0):
    return np.random.default_rng(seed).normal(size=(b, IMAGE, IMAGE, 3)).astype(np.float32)


def _encoder_tokens(export_dir, images):
    params, meta = checkpoint.load_export(export_dir)
    encoder = sarmae.build_encoder(ml_collections.ConfigDict(meta["config"]["model"]))
    return np.asarray(encoder.apply({"params": params["encoder"]}, images))


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("prefix", ["", "module."])
def test_pretraining_checkpoint_imports_with_default_flags_and_round_trips_bitwise(tmp_path, caplog, prefix):
    src = str(tmp_path / "checkpoint-299.pth")
    sd = save_like_save_model(src, pretraining_sd(torch.Generator().manual_seed(0)), prefix=prefix)
    out = str(tmp_path / "imported")
    with caplog.at_level(logging.INFO, logger="sarmae_jax"):
        assert cli.import_main([src, out] + DEC_FLAGS) == 0  # no --size: read off the width
    line = next(r.getMessage() for r in caplog.records if "read past" in r.getMessage())
    for entry in ("optimizer (", "epoch=299", "scaler (", "args (argparse.Namespace: model='mae_vit_base_patch16'"):
        assert entry in line, line
    params, meta = checkpoint.load_export(out)
    assert sorted(params) == ["anchor_head", "decoder", "encoder"]
    assert meta["config"]["sarc"]["teacher"] == {"kind": "released", "size": SIZE, "patch_size": PATCH, "checkpoint": src}
    assert meta["source_checkpoint"]["args"]["alignment_loss_weight"] == 0.8
    mae = {k[len("sar_encoder."):]: v for k, v in sd.items() if k.startswith("sar_encoder.")}
    np.testing.assert_allclose(_encoder_tokens(out, _images()), timm_reference_forward(mae, _images(), HEADS),
                               atol=1e-4, rtol=0)
    # Back to the released pre-training layout: the key set of SAROpticalPatchAlignment.state_dict() (zero missing,
    # zero unexpected), teacher included, every tensor bit for bit.
    back = state_dicts.load(cli.run_export(out, str(tmp_path / "again.pth"), "sarmae-pretrain"))
    _assert_same(sd, back)
    assert "print(model.load_state_dict(state, strict=True))" in open(str(tmp_path / "again.pth.README.md")).read()


def test_released_teacher_reads_optical_encoder_and_matches_simplified_dinov3(tmp_path):
    g = torch.Generator().manual_seed(1)
    teacher_sd = simplified_dinov3_sd(g)
    src = str(tmp_path / "checkpoint-last.pth")
    save_like_save_model(src, pretraining_sd(g, teacher=teacher_sd), prefix="module.")
    cfg = ml_collections.ConfigDict(dict(kind="released", size=SIZE, patch_size=PATCH, checkpoint=src))
    module, width = teachers.build_teacher(cfg)
    params = teacher_weights.load_teacher_params(cfg, module, image_size=IMAGE)
    assert width == TEACHER_WIDTH
    images = _images(3, seed=2)
    ours = np.asarray(module.apply({"params": params}, images))
    ref = simplified_dinov3_patches(teacher_sd, torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    assert ours.shape == (3, GRID * GRID, TEACHER_WIDTH)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    _assert_same({"optical_encoder." + k: v.numpy() for k, v in teacher_sd.items()},
                 released.teacher_to_torch(jax.tree.map(np.asarray, params)))
    # From a DINOv3 file, kind=released copies what the released `_load_dinov3_direct` copies into SimplifiedDINOv3:
    # patch_embed.proj.{weight,bias} -> patch_embed.*, norm.*, cls_token.
    dinov3 = {"patch_embed.proj.weight": teacher_sd["patch_embed.weight"], "patch_embed.proj.bias": teacher_sd["patch_embed.bias"],
              "norm.weight": teacher_sd["norm.weight"], "norm.bias": teacher_sd["norm.bias"], "cls_token": teacher_sd["cls_token"],
              "storage_tokens": _rand(g, 1, 4, TEACHER_WIDTH), "blocks.0.ls1.gamma": _rand(g, TEACHER_WIDTH)}
    official = str(tmp_path / "dinov3_vitb16_pretrain.pth")
    torch.save(dinov3, official)
    from_dinov3 = teacher_weights.load_teacher_params(ml_collections.ConfigDict(dict(cfg, checkpoint=official)), module, IMAGE)
    _assert_same(released.teacher_to_torch(jax.tree.map(np.asarray, params)),
                 released.teacher_to_torch(jax.tree.map(np.asarray, from_dinov3)))
    with pytest.raises(ValueError, match="a released SARMAE pre-training checkpoint: .* sarc.teacher.kind=released"):
        teacher_weights.load_teacher_checkpoint(ml_collections.ConfigDict(dict(cfg, kind="dinov3")), src, IMAGE)
    # The released code's random fallback teachers are refused, by name.
    fallback = pretraining_sd(g, teacher={"patch_embed.weight": _rand(g, TEACHER_WIDTH, 3, PATCH, PATCH),
                                          "patch_embed.bias": _rand(g, TEACHER_WIDTH)})
    bad = str(tmp_path / "fallback.pth")
    save_like_save_model(bad, fallback)
    with pytest.raises(ValueError, match="FallbackViT, a random patch convolution"):
        teacher_weights.load_teacher_params(ml_collections.ConfigDict(dict(cfg, checkpoint=bad)), module, image_size=IMAGE)


def finetune_args():
    return argparse.Namespace(batch_size=8, epochs=30, model="vit_base_patch16", input_size=224, drop_path=0.1,
                              layer_decay=0.75, smoothing=0.1, finetune="./SARMAE_vit_Base.pth", global_pool=True,
                              dataset="fusar", nb_classes=10, cutmix_minmax=None, exp_num=5, distributed=False, lr=3.1e-5)


@pytest.mark.parametrize("pool", ["avg", "token"])
def test_finetuned_classifier_imports_with_its_trained_positions_and_exports_for_finetuning(tmp_path, caplog, pool):
    g = torch.Generator().manual_seed(3)
    # main_finetune.py: timm ViT(global_pool="avg"): no final norm, fc_norm; with --cls_token ("token"): norm, no
    # fc_norm. A 10-class head; pos_embed trained.
    model = mae_encoder_sd(g, norm=pool == "token", learned_pos=True)
    if pool == "avg":
        model.update({"fc_norm.weight": 1 + _rand(g, WIDTH), "fc_norm.bias": _rand(g, WIDTH)})
    model.update({"head.weight": _rand(g, 10, WIDTH), "head.bias": _rand(g, 10)})
    src = str(tmp_path / "best_ckpt_exp0.pth")
    sd = save_like_save_model(src, model, epoch=17, args=finetune_args(), max_accuracy=91.25)
    out = str(tmp_path / "imported")
    with caplog.at_level(logging.INFO, logger="sarmae_jax"):
        assert cli.import_main([src, out, "--image-size", str(IMAGE)]) == 0
    log_text = "\n".join(r.getMessage() for r in caplog.records)
    assert "max_accuracy=91.25" in log_text
    assert ("fc_norm.bias, fc_norm.weight, " if pool == "avg" else "") + "head.bias, head.weight" in log_text
    params, meta = checkpoint.load_export(out)
    assert meta["config"]["model"]["pos_embed"] == "learned" and meta["config"]["model"]["final_norm"] is (pool == "token")
    encoder_keys = {k: v for k, v in sd.items() if not k.startswith(("fc_norm.", "head."))}
    ref = timm_reference_forward(encoder_keys, _images(), HEADS)
    # Without a final norm the tokens reach ~40 here, so the float32 tolerance scales with them.
    np.testing.assert_allclose(_encoder_tokens(out, _images()), ref, atol=1e-5 * max(np.abs(ref).max(), 10), rtol=0)
    # Evaluation reads it as any export: the model its metadata describes, the learned table in layer 0 of lr decay.
    assert "pos_embed" in encoder_lib.load(out).params["encoder"]
    assert finetune.layer_ids({"encoder": params["encoder"]}, DEPTH)["encoder"]["pos_embed"] == 0
    back = state_dicts.load(cli.run_export(out, str(tmp_path / "encoder.pth"), "sarmae-finetune"))
    _assert_same(encoder_keys, back)  # the trained table (and the norm where there is one), bit for bit
    missing, unexpected = load_like_main_finetune(back, num_classes=5, pool=pool)
    assert missing == (["fc_norm.bias", "fc_norm.weight"] if pool == "avg" else []) + ["head.bias", "head.weight"]
    assert unexpected == []
    if pool == "avg":
        with pytest.raises(ValueError, match="no final norm .* use --format sarmae-finetune"):
            cli.run_export(out, str(tmp_path / "timm.safetensors"), "timm")


# ------------------------------------------------------------------------------------------ released loaders
def _block_shapes(width, depth):
    return {k: tuple(v.shape) for k, v in _timm_blocks(torch.Generator(), "blocks.", width, depth).items()}


def classifier_keys(num_classes, pool="avg"):
    """timm vit_*_patch16_224(global_pool=pool, num_classes=N).state_dict() shapes: with "avg" norm is an Identity and
    fc_norm a LayerNorm, with "token" the reverse."""
    norm = "fc_norm" if pool == "avg" else "norm"
    return {"cls_token": (1, 1, WIDTH), "pos_embed": (1, 1 + GRID * GRID, WIDTH),
            "patch_embed.proj.weight": (WIDTH, 3, PATCH, PATCH), "patch_embed.proj.bias": (WIDTH,),
            **_block_shapes(WIDTH, DEPTH), f"{norm}.weight": (WIDTH,), f"{norm}.bias": (WIDTH,),
            "head.weight": (num_classes, WIDTH), "head.bias": (num_classes,)}


def load_like_main_finetune(state, num_classes, pool="avg"):
    """main_finetune.py: checkpoint["model"] -> interpolate_pos_embed (no-op at the same grid) -> strict=False."""
    model = classifier_keys(num_classes, pool)
    for k in set(model) & set(state):
        assert tuple(np.shape(state[k])) == model[k], k  # load_state_dict refuses shape mismatches even non-strict
    return sorted(set(model) - set(state)), sorted(set(state) - set(model))


def backbone_keys(img_size, segmentation):
    """VisionTransformer_timm(img_size, class_token=False, global_pool="avg").state_dict() shapes: no class token,
    no final norm, ConvTranspose2d / Norm2d feature-pyramid branches; the mmseg copy keeps timm's fc_norm and head."""
    grid = img_size // PATCH
    keys = {"patch_embed.proj.weight": (WIDTH, 3, PATCH, PATCH), "patch_embed.proj.bias": (WIDTH,),
            "pos_embed": (1, grid * grid, WIDTH), **_block_shapes(WIDTH, DEPTH),
            "fpn1.0.weight": (WIDTH, WIDTH, 2, 2), "fpn1.0.bias": (WIDTH,), "fpn1.1.ln.weight": (WIDTH,),
            "fpn1.1.ln.bias": (WIDTH,), "fpn1.3.weight": (WIDTH, WIDTH, 2, 2), "fpn1.3.bias": (WIDTH,),
            "fpn2.0.weight": (WIDTH, WIDTH, 2, 2), "fpn2.0.bias": (WIDTH,)}
    if segmentation:
        keys.update({"fc_norm.weight": (WIDTH,), "fc_norm.bias": (WIDTH,), "head.weight": (1000, WIDTH), "head.bias": (1000,)})
    return keys


def load_like_backbone(state, img_size, segmentation=False):
    """VisionTransformer_timm.init_weights: drop the class row when the file has cls_token, resize the rest bicubically
    (align_corners=False) to img_size / 16, then load_state_dict(strict=False)."""
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
    extra = 1 if "cls_token" in state else 0
    table = state["pos_embed"][:, extra:]
    old, new = int(round(table.shape[1] ** 0.5)), img_size // PATCH
    if old != new:
        table = torch.nn.functional.interpolate(table.reshape(1, old, old, -1).permute(0, 3, 1, 2), size=(new, new),
                                                mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
    state["pos_embed"] = table
    model = backbone_keys(img_size, segmentation)
    for k in set(model) & set(state):
        assert tuple(state[k].shape) == model[k], k
    return sorted(set(model) - set(state)), sorted(set(state) - set(model))


def test_encoder_file_round_trips_and_loads_in_the_released_finetuning_and_backbones(tmp_path):
    g = torch.Generator().manual_seed(4)
    src = str(tmp_path / "SARMAE_vit_Base.pth")
    sd = {k: v.numpy() for k, v in mae_encoder_sd(g).items()}
    torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}}, src)  # a stripped encoder file
    out = str(tmp_path / "imported")
    assert cli.import_main([src, out, "--image-size", str(IMAGE)]) == 0
    back = state_dicts.load(cli.run_export(out, str(tmp_path / "encoder.pth"), "sarmae-finetune"))
    _assert_same(sd, back)
    assert set(torch.load(str(tmp_path / "encoder.pth"), weights_only=True)) == {"model"}
    # Every tensor the released model has from pre-training loads, with its shape; what it reports is only the parts
    # it adds (classifier, feature pyramid) and the parts it lacks (average pooling: no norm; backbones: no class token).
    missing, unexpected = load_like_main_finetune(back, num_classes=10)
    assert missing == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert unexpected == ["norm.bias", "norm.weight"]
    fpn = sorted(k for k in backbone_keys(IMAGE, False) if k.startswith("fpn"))
    for size in (512, 608):
        missing, unexpected = load_like_backbone(back, size)
        assert missing == fpn and unexpected == ["cls_token", "norm.bias", "norm.weight"]
    missing, unexpected = load_like_backbone(back, 512, segmentation=True)
    assert missing == sorted(fpn + ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"])
    # The pre-training layout of an export without a teacher or head: the released names of the parts it has.
    sd_pre = state_dicts.load(cli.run_export(out, str(tmp_path / "pre.pth"), "sarmae-pretrain"))
    _assert_same({"sar_encoder." + k: v for k, v in sd.items()}, sd_pre)


def test_old_format_name_and_unreadable_files_say_what_to_do_and_what_was_found(tmp_path):
    out = str(tmp_path / "imported")
    src = str(tmp_path / "enc.pth")
    torch.save({"model": mae_encoder_sd(torch.Generator().manual_seed(5))}, src)
    cli.run_import(src, out, image_size=IMAGE, decoder=DEC)
    with pytest.raises(ValueError, match="'sarmae-pretrain' .* and 'sarmae-finetune'"):
        cli.run_export(out, str(tmp_path / "x.pth"), "released")
    with pytest.raises(ValueError, match=r"released code reads \.pth files"):
        cli.run_export(out, str(tmp_path / "x.safetensors"), "sarmae-finetune")
    odd = tmp_path / "odd.pth"
    torch.save({"model": {}, "args": argparse.Namespace(), "when": __import__("datetime").date(2026, 1, 1)}, odd)
    with pytest.raises(ValueError, match=r"odd.pth: holds pickled objects of \['datetime.date'\] beside its tensors"):
        state_dicts.load(str(odd))
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes.pth: not a torch.save file: it starts with b'hello'"):
        state_dicts.load(str(text))
    cut = tmp_path / "cut.pth"
    cut.write_bytes(open(src, "rb").read()[:3000])
    with pytest.raises(ValueError, match="cut.pth: not a readable PyTorch checkpoint: a zip archive .* of 3000 bytes"):
        state_dicts.load(str(cut))
