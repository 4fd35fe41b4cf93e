"""The one config schema: every key, its default and why, plus validation that runs before compilation.

Config files in `configs/` start from `default_config()` and override what their recipe changes;
any key can be overridden on the command line (`--config.optim.lr=2e-4`).
"""
from __future__ import annotations

import ml_collections

from sarmae_jax.data import pipeline
from sarmae_jax.models import attention, patches, sarmae, teachers, vit
from sarmae_jax.runtime import compilation_cache, sharding
from sarmae_jax.sare import speckle


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # one seed: parameter init, masking, speckle and data order all derive from it

    # ---------------------------------------------------------------------------------------- model
    c.model = m = ml_collections.ConfigDict()
    m.size = "base"  # encoder size: tiny | small | base | large | huge (see vit.VIT_SIZES)
    m.patch_size = 16
    m.image_size = 224  # square input; the released recipe resizes everything to 224 (aspect not kept)
    # Encoder input channels. None follows the dataset (training/dataset_config.py): 3 for single-channel SAR
    # (grey repeated to 3 channels so ImageNet MAE weights load unchanged), C for C polarisation channels.
    m.in_channels = ml_collections.FieldReference(None, field_type=int)
    m.mask_ratio = 0.75
    m.norm_pix_loss = False  # per-patch normalised targets; off in the released SARMAE recipe
    m.drop_path_rate = 0.0  # stochastic depth in the encoder; MAE pre-training uses none
    # Encoder positions: "sincos" (MAE's fixed 2-D table, not a parameter) | "learned" (a `pos_embed`
    # parameter initialised to that table; set by `sarmae-import` for fine-tuned timm classifiers, whose table
    # was trained). Pre-training keeps "sincos": MAE fixes its positions.
    m.pos_embed = "sincos"
    # LayerNorm after the last encoder block. False only for encoders imported from timm's average-pooling
    # classifiers (released main_finetune.py checkpoints), which have none.
    m.final_norm = True
    m.decoder = ml_collections.ConfigDict(dict(width=512, depth=8, num_heads=16))
    m.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay in param_dtype)
    m.param_dtype = "float32"  # bf16 parameters lose AdamW updates below their precision: keep f32
    m.scan_layers = True  # one compiled block scanned over depth: fast compiles, stacked [depth, ...] params
    # Scan iterations unrolled per loop trip (1 = rolled; a large value unrolls fully, keeping stacked params).
    m.scan_unroll = 1
    m.remat = "none"  # none | full | dots | dots_no_batch: activation recomputation per block
    m.attention_impl = ""  # "" = "explicit" (models/attention.py, fastest measured on CPU and H200) | "xla" | "cudnn"
    # (cuDNN's flash attention refused the decoder's 197-token sequences on an H200 with jax 0.11.)

    # ----------------------------------------------------------------------- SARE: speckle injection
    c.sare = speckle.default_config()

    # ------------------------------------------------------------ SARC: cross-modal anchor to optical
    c.sarc = s = ml_collections.ConfigDict()
    s.enabled = True
    s.weight = 0.8  # total loss = mae_weight * MAE + sarc.weight * alignment
    s.teacher = ml_collections.ConfigDict()
    # dinov3 (the paper's frozen DINOv3) | released (patch embedding + norm only, what the public code ran)
    # | vit | dinov2 | dinov2_reg; see sarmae_jax/models/teachers/
    s.teacher.kind = "dinov3"
    s.teacher.size = "base"  # teacher width/depth from vit.VIT_SIZES
    s.teacher.patch_size = 16  # must equal model.patch_size: teacher and student patches are the same pixels
    # Path to the teacher's weights, or "random-init" to ask explicitly for an untrained teacher
    # (tests, smoke runs). There is no silent fallback: None fails at start-up.
    # A typed None, so that `--config.sarc.teacher.checkpoint=PATH` can set it from the command line.
    s.teacher.checkpoint = ml_collections.FieldReference(None, field_type=str)

    c.loss = ml_collections.ConfigDict(dict(mae_weight=1.0))

    # ----------------------------------------------------------------------------------------- data
    c.data = pipeline.default_config()

    # ---------------------------------------------------------------------------------- optimisation
    c.optim = o = ml_collections.ConfigDict()
    # Learning rate: absolute `lr` if set, else `base_lr * global_batch / 256` (the MAE convention).
    o.lr = ml_collections.FieldReference(None, field_type=float)
    o.base_lr = 1.5e-4
    o.min_lr = 0.0  # end of the half-cycle cosine
    o.warmup_steps = ml_collections.FieldReference(None, field_type=int)  # or warmup_epochs
    o.warmup_epochs = 1.0
    o.b1 = 0.9
    o.b2 = 0.95  # MAE's 0.95: 0.999 is unstable for MAE pre-training at large batch
    o.weight_decay = 0.05  # not on biases, norms, class/mask tokens
    o.clip_norm = 1.0  # global gradient norm; 0 disables
    # Adam's first moment dtype: None keeps the parameters' (float32); "bfloat16" halves its memory
    # (2 bytes less per parameter), as big_vision offers. The second moment stays float32.
    o.mu_dtype = ml_collections.FieldReference(None, field_type=str)
    # ZeRO-1: Adam moments also split over the mesh's `data` axis (each data-parallel chip keeps and
    # updates 1/data of them; runtime/sharding.py: optimizer_shardings). False keeps them like the parameters.
    o.shard_over_data = True

    # ------------------------------------------------------------------------------------- training
    c.train = t = ml_collections.ConfigDict()
    t.batch_size = 4096  # global batch, over all devices and hosts
    t.num_steps = ml_collections.FieldReference(None, field_type=int)  # or num_epochs
    t.num_epochs = 300.0
    t.log_every = 50  # steps between metric writes
    t.image_every = 1000  # steps between PNG grids of clean / speckled / masked / reconstructed
    t.checkpoint_every = 1000  # steps between checkpoints (and always at the end)
    t.keep_checkpoints = 3  # the last K are kept
    # Also keep every checkpoint whose step is a multiple of this (0 = none): long-lived snapshots
    # for later analysis, never deleted by the keep-last-K rule.
    t.keep_period = 0
    # Micro-batches per update: the global batch is split into this many slices that run one after
    # another (lax.scan) and whose gradients are summed, weighted so that the update equals the
    # full-batch one. Trades step time for activation memory; batch_size / grad_accum_steps must
    # still split evenly over the data x fsdp devices.
    t.grad_accum_steps = 1
    # bf16 dense peak TFLOP/s of one device for MFU; None looks `device_kind` up in flops.PEAK_TFLOPS
    # (no MFU is logged for an unknown device unless this is set).
    t.peak_tflops_per_device = ml_collections.FieldReference(None, field_type=float)
    t.max_consecutive_skips = 10  # non-finite steps in a row before the run stops with an error
    # How a non-finite step keeps the old state: "cond" runs the update only when kept (cheapest on CPU and
    # TPU); "where" always runs it and selects per leaf (no host round trip for the predicate on GPU).
    t.nonfinite_guard = "cond"
    # (first step, number of steps) to trace with jax.profiler into <workdir>/profile/ (TensorBoard's profile
    # plugin or Perfetto; training/profiling.py). (0, 0): no trace. Skip the first step: it compiles.
    t.profile = (0, 0)
    t.profile_all_processes = False  # False: process 0 traces; True: each into <workdir>/profile/process_<i>/
    t.init_from = ""  # params-only checkpoint (or imported weights) to start from; "" = random init
    # JAX's persistent compilation cache on local disk: a restart loads the compiled step from it
    # (runtime/compilation_cache.py). None leaves JAX's own setting (JAX_COMPILATION_CACHE_DIR).
    t.compilation_cache_dir = ml_collections.FieldReference(compilation_cache.DEFAULT_DIR, field_type=str)

    # ----------------------------------------------------------------------------------------- mesh
    # Mesh axis sizes; -1 takes all remaining devices. The global batch is split over data x fsdp.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # (logical axis name, mesh axis / axes / None) pairs; see sharding.py for what each axis does.
    c.mesh.rules = sharding.DEFAULT_RULES

    # ---------------------------------------------------------------------------------------- evals
    # Named evaluators run inside the loop on the run's mesh (k-NN, linear probe, reconstruction every N
    # steps), each `sarmae_jax.evaluate.in_loop.evaluator_config(kind, ...)`; results in the metrics as
    # eval/<name>/<metric>. Empty: none. See docs/evaluate.md.
    c.evals = ml_collections.ConfigDict()
    return c


# ------------------------------------------------------------------------------------ validation
def _fail(key: str, value, expected: str):
    raise ValueError(f"config.{key}={value!r}: expected {expected}")


def _check(cond: bool, key: str, value, expected: str):
    if not cond:
        _fail(key, value, expected)


def validate(c: ml_collections.ConfigDict) -> None:
    """Raise ValueError naming the key, its value and what is allowed. Runs before any compilation."""
    m = c.model
    _check(m.size in vit.VIT_SIZES, "model.size", m.size, f"one of {list(vit.VIT_SIZES)}")
    _check(isinstance(m.patch_size, int) and m.patch_size > 0, "model.patch_size", m.patch_size, "a positive integer")
    _check(isinstance(m.image_size, int) and m.image_size > 0 and m.image_size % m.patch_size == 0,
           "model.image_size", m.image_size, f"a positive multiple of model.patch_size={m.patch_size}")
    _check(m.in_channels is None or (isinstance(m.in_channels, int) and m.in_channels >= 1), "model.in_channels",
           m.in_channels, "None (follow the dataset) or a positive channel count")
    _check(m.pos_embed in ("sincos", "learned"), "model.pos_embed", m.pos_embed, "'sincos' or 'learned'")
    _check(isinstance(m.final_norm, bool), "model.final_norm", m.final_norm, "True or False")
    _check(0.0 < m.mask_ratio < 1.0, "model.mask_ratio", m.mask_ratio, "a value in (0, 1)")
    n = patches.num_patches(m.image_size, m.patch_size)
    _check(int(n * (1 - m.mask_ratio)) >= 1, "model.mask_ratio", m.mask_ratio,
           f"a ratio that keeps at least one of the {n} patches visible")
    _check(0.0 <= m.drop_path_rate < 1.0, "model.drop_path_rate", m.drop_path_rate, "a value in [0, 1)")
    for key in ("dtype", "param_dtype"):
        _check(m[key] in sarmae.DTYPES, f"model.{key}", m[key], f"one of {list(sarmae.DTYPES)}"
               + (" (float16 would need loss scaling, which this trainer does not do; bfloat16 has float32's "
                  "range)" if m[key] == "float16" else ""))
    _check(isinstance(m.scan_unroll, int) and m.scan_unroll >= 1, "model.scan_unroll", m.scan_unroll,
           "a positive integer (iterations per loop trip; >= depth unrolls fully)")
    _check(m.remat in vit.REMAT_POLICIES, "model.remat", m.remat, f"one of {list(vit.REMAT_POLICIES)}")
    _check(m.attention_impl in attention.IMPLEMENTATIONS, "model.attention_impl", m.attention_impl,
           f"one of {list(attention.IMPLEMENTATIONS)}")
    width, heads = vit.VIT_SIZES[m.size]["width"], vit.VIT_SIZES[m.size]["num_heads"]
    _check(width % heads == 0, "model.size", m.size, "a width divisible by its head count")
    d = m.decoder
    for key in ("width", "depth", "num_heads"):
        _check(isinstance(d[key], int) and d[key] > 0, f"model.decoder.{key}", d[key], "a positive integer")
    _check(d.width % d.num_heads == 0 and d.width % 4 == 0, "model.decoder.width", d.width,
           f"a multiple of 4 and of model.decoder.num_heads={d.num_heads}")

    speckle.validate_config(c.sare)

    s = c.sarc
    if s.enabled:
        _check(s.weight >= 0, "sarc.weight", s.weight, "a non-negative number")
        _check(s.teacher.kind in teachers.TEACHERS, "sarc.teacher.kind", s.teacher.kind, f"one of {sorted(teachers.TEACHERS)}")
        _check(s.teacher.size in vit.VIT_SIZES, "sarc.teacher.size", s.teacher.size, f"one of {list(vit.VIT_SIZES)}")
        _check(s.teacher.patch_size == m.patch_size, "sarc.teacher.patch_size", s.teacher.patch_size,
               f"model.patch_size={m.patch_size} (teacher and student tokens must cover the same pixels)")
        _check(bool(s.teacher.checkpoint), "sarc.teacher.checkpoint", s.teacher.checkpoint,
               f"a path to the teacher's weights, or {teachers.RANDOM_INIT!r} to ask for an untrained teacher")
    _check(c.loss.mae_weight >= 0, "loss.mae_weight", c.loss.mae_weight, "a non-negative number")

    pipeline.validate_config(c.data)

    o = c.optim
    if o.lr is not None:
        _check(o.lr > 0, "optim.lr", o.lr, "a positive learning rate (or None to use base_lr)")
    else:
        _check(o.base_lr > 0, "optim.base_lr", o.base_lr, "a positive learning rate")
    _check(o.min_lr >= 0, "optim.min_lr", o.min_lr, "a non-negative learning rate")
    _check(0 <= o.b1 < 1, "optim.b1", o.b1, "a value in [0, 1)")
    _check(0 <= o.b2 < 1, "optim.b2", o.b2, "a value in [0, 1)")
    _check(o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "a non-negative number")
    _check(o.clip_norm >= 0, "optim.clip_norm", o.clip_norm, "a non-negative norm (0 disables clipping)")
    # .get: configs saved before these keys existed (checkpoint metadata) still validate
    guard = c.train.get("nonfinite_guard", "cond")
    _check(guard in ("cond", "where"), "train.nonfinite_guard", guard, "'cond' or 'where'")
    _check(o.get("mu_dtype") in (None, "float32", "bfloat16"), "optim.mu_dtype", o.get("mu_dtype"),
           "None (the parameters' dtype), 'float32' or 'bfloat16'")
    if o.warmup_steps is not None:
        _check(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, "a non-negative step count")
    else:
        _check(o.warmup_epochs >= 0, "optim.warmup_epochs", o.warmup_epochs, "a non-negative number of epochs")

    t = c.train
    _check(isinstance(t.batch_size, int) and t.batch_size > 0, "train.batch_size", t.batch_size, "a positive integer")
    if t.num_steps is not None:
        _check(t.num_steps > 0, "train.num_steps", t.num_steps, "a positive step count (or None to use num_epochs)")
    else:
        _check(t.num_epochs > 0, "train.num_epochs", t.num_epochs, "a positive number of epochs")
    for key in ("log_every", "image_every", "checkpoint_every", "keep_checkpoints", "max_consecutive_skips",
                "grad_accum_steps"):
        _check(isinstance(t[key], int) and t[key] > 0, f"train.{key}", t[key], "a positive integer")
    _check(t.batch_size % t.grad_accum_steps == 0, "train.grad_accum_steps", t.grad_accum_steps,
           f"a divisor of train.batch_size={t.batch_size}")
    _check(isinstance(t.keep_period, int) and t.keep_period >= 0, "train.keep_period", t.keep_period,
           "a non-negative integer (0 keeps no extra checkpoints)")
    p = t.profile
    _check(isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(v, int) for v in p) and p[1] >= 0
           and (p[1] == 0 or p[0] >= 1), "train.profile", p,
           "(first step >= 1, number of steps >= 0), e.g. (10, 3) traces steps 10-12; (0, 0) traces nothing")
    _check(isinstance(t.profile_all_processes, bool), "train.profile_all_processes", t.profile_all_processes,
           "True or False")
    if t.peak_tflops_per_device is not None:
        _check(t.peak_tflops_per_device > 0, "train.peak_tflops_per_device", t.peak_tflops_per_device,
               "a positive TFLOP/s figure (or None to look the device up)")

    for axis in ("data", "fsdp", "tensor"):
        v = c.mesh[axis]
        _check(isinstance(v, int) and (v == -1 or v >= 1), f"mesh.{axis}", v, "a positive axis size or -1")
    _check(sum(c.mesh[a] == -1 for a in ("data", "fsdp", "tensor")) <= 1, "mesh", dict(c.mesh),
           "at most one axis set to -1")
