"""sarmae-jax: SAR masked-autoencoder pre-training (SARMAE) in JAX/Flax."""
from setuptools import find_packages, setup

RUNTIME = [
    "jax>=0.6",
    "flax>=0.10",
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11",
    "grain>=0.2.10",
    "array-record>=0.7",
    "tensorflow-datasets>=4.9.8",
    "ml-collections>=1.0",
    "numpy>=1.26",
    "absl-py>=2.0",
    "tqdm>=4.66",        # progress bars
    "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
    "pillow>=10.0",      # PNG grids and image decoding in the converters
    # GeoTIFF products (bands, pages, uint16/float/complex, tiles) read with their true dtype; imagecodecs
    # decodes deflate/LZW/zstd/JPEG tiles. Lighter than rasterio/GDAL (docs/data.md says why).
    "tifffile>=2023.7",
    "imagecodecs>=2023.7",
    "safetensors>=0.4",  # PyTorch-interop weight files without importing torch
    # gs:// run directories, exports and weights: etils.epath over gcsfs; tensorboardX's gs:// event
    # writer uses google-cloud-storage (Orbax's arrays go through tensorstore, already a dependency).
    "etils[epath]>=1.7",
    "gcsfs>=2024.2",
    "google-cloud-storage>=2.10",
]

# PyTorch interop (.pth files, parity tests, the PyTorch benchmark). torch is pinned to the CPU
# build: an unpinned `torch` pulls a multi-GB CUDA build.
TORCH = ["torch==2.13.0", "transformers>=5.0"]

# The TPU compiler (libtpu, 684 MB installed) beside the CPU jaxlib, for `sarmae-train --dry_run --topology
# v5e:16x16` and benchmarks/pod_plan.py on a machine without a TPU. libtpu must match jaxlib: jax's own
# `tpu` extra pins the pair; this is the jax the pod plan in docs/scale.md was compiled with. libtpu is
# built for Linux x86_64 only.
TPU = ['jax[tpu]==0.10.2; sys_platform == "linux" and platform_machine == "x86_64"']

TEST = [
    "pytest>=8",
    "scipy>=1.11",       # Kolmogorov-Smirnov tests of the speckle laws
    # Cloud Storage JSON API on loopback for the gs:// tests (tests/gcs_emulator.py uses its handlers).
    "gcp-storage-emulator>=2026.7.19,<2027",
] + TORCH + TPU          # parity tests against transformers' ViT, ViTMAE and DINOv3; TPU compiles (test_tpu_plan)

setup(
    name="sarmae-jax",
    version="0.1.0",
    description="SARMAE pre-training of SAR foundation models in JAX/Flax: MAE + speckle (SARE) + optical anchors (SARC).",
    python_requires=">=3.10",
    packages=find_packages(include=["sarmae_jax", "sarmae_jax.*", "data_pipelines", "data_pipelines.*", "configs", "configs.*"]),
    install_requires=RUNTIME,
    extras_require={"test": TEST, "torch": TORCH, "tpu": TPU},
    entry_points={
        "console_scripts": [
            "sarmae-train=sarmae_jax.main:run",
            "sarmae-import=sarmae_jax.convert.cli:import_main",
            "sarmae-export=sarmae_jax.convert.cli:export_main",
            "sarmae-convert-sar1m=data_pipelines.sar1m:main",
            "sarmae-precompute-teacher=sarmae_jax.training.teacher_tokens:main",
            "sarmae-eval=sarmae_jax.evaluate.cli:run",
        ],
    },
)
