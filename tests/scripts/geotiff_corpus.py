"""A small seeded corpus of the GeoTIFF products users hold (Sentinel-1 GRD dB / linear / DN, per
polarisation or multi-band; Sentinel-2 L2A uint16 reflectance DN, 3 and 4 bands; a scene with a no-data
border; deflate / LZW / zstd / tiled variants), and a summary of what a converter made of it.

Used by tests/test_rasters.py and by hand for the before/after comparison of issue 19::

    python tests/scripts/geotiff_corpus.py make /tmp/corpus            # optional 3rd argument: pairs (12)
    # convert each dataset with the commands it prints (or with an older checkout's converter), then
    python tests/scripts/geotiff_corpus.py summary /tmp/corpus_out/pairs_db     # one line per dataset

The datasets (folders under the corpus root) and the flags they need:

=============  ================================================================================
``pairs_db``   SAR-1M layout, 12 pairs (or NUM_PAIRS) and a third as many unpaired 2-band SAR files: 2-band float32 dB SAR files (VV, VH named in GDAL_METADATA;
               uncompressed, deflate, LZW, zstd, tiled) and per-polarisation ``<patch>_VV.tif`` /
               ``<patch>_VH.tif`` files; optical uint16 3-band RGB-tagged (B04, B03, B02) and 4-band (B02, B03,
               B04, B08) Sentinel-2 L2A DN (BOA_ADD_OFFSET -1000). Flags: ``--polarisations VV,VH
               --optical_bands B04,B03,B02``
``scene``      one 2-band dB scene 192 x 256 with a 24-pixel NaN border and its co-registered 4-band
               optical scene (DN 0 border). Flags: ``--polarisations VV,VH --optical_bands
               B04,B03,B02 --tile 64``
``linear``     a plain folder: 6 float32 linear-intensity files and 6 uint16 DN amplitude files (1
               band). Flags: none (auto units; the DN files differ from the dataset's domain)
=============  ================================================================================
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

SIZE = 64
ENL = 4.4  # Sentinel-1 IW GRD


def gdal_metadata(band_names=(), **items) -> str:
    """GDAL_METADATA XML text: band descriptions and dataset items."""
    parts = [f'<Item name="{k}">{v}</Item>' for k, v in items.items()]
    parts += [f'<Item name="DESCRIPTION" sample="{i}" role="description">{n}</Item>' for i, n in enumerate(band_names)]
    return "<GDALMetadata>" + "".join(parts) + "</GDALMetadata>"


def write_tiff(path, array, *, band_names=(), nodata=None, compression=None, tile=None, planar=False,
               photometric="minisblack", **items):
    """[H, W] or [H, W, C] -> a GeoTIFF-like file (bands interleaved, or planar)."""
    import tifffile

    os.makedirs(os.path.dirname(path), exist_ok=True)
    extratags = []
    if band_names or items:
        extratags.append((42112, "s", 0, gdal_metadata(band_names, **items), True))
    if nodata is not None:
        extratags.append((42113, "s", 0, f"{nodata:g}", True))
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    data = np.moveaxis(array, -1, 0) if (planar and array.ndim == 3) else array
    tifffile.imwrite(path, data, photometric=photometric, compression=compression, tile=tile, metadata=None,
                     planarconfig=("separate" if planar else "contig") if array.ndim == 3 else None,
                     extratags=extratags)


def scene(rng, h, w):
    """A landscape: (class map [h, w] in {0 water, 1 field, 2 forest, 3 town}, smooth shade [h, w])."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    f = np.sin(6 * x + rng.uniform(0, 6)) + np.cos(5 * y + rng.uniform(0, 6)) + 0.6 * np.sin(11 * (x + y))
    classes = np.digitize(f, [-0.8, 0.3, 1.1])
    return classes, 0.5 + 0.5 * np.sin(3 * x + 2 * y)


def sar_db(rng, classes, shade):
    """[h, w, 2] float32 sigma0 in dB (VV, VH) with ENL-look speckle."""
    vv_db = np.array([-22.0, -11.0, -8.0, -2.0])[classes] + 2.0 * shade
    out = []
    for offset in (0.0, -7.0):
        intensity = 10 ** ((vv_db + offset) / 10) * rng.gamma(ENL, 1 / ENL, classes.shape)
        out.append(10 * np.log10(intensity))
    return np.stack(out, -1).astype(np.float32)


def optical_dn(rng, classes, shade, bands=("B04", "B03", "B02")):
    """[h, w, len(bands)] uint16 Sentinel-2 L2A DN (reflectance * 10000 + 1000, baseline >= 04.00)."""
    table = {"B02": [0.04, 0.05, 0.03, 0.09], "B03": [0.05, 0.08, 0.05, 0.10],
             "B04": [0.03, 0.07, 0.03, 0.11], "B08": [0.02, 0.30, 0.35, 0.20]}
    rho = [np.array(table[b])[classes] * (0.8 + 0.4 * shade) + rng.normal(0, 0.003, classes.shape) for b in bands]
    return np.clip(np.round(np.stack(rho, -1) * 10000 + 1000), 1, 65535).astype(np.uint16)


def make(root: str, seed: int = 0, num_pairs: int = 12) -> dict:
    """Writes the corpus under `root` (`num_pairs` pairs in pairs_db, 2/3 of them multi-band files);
    returns {dataset: its converter flags}."""
    rng = np.random.default_rng(seed)
    pairs, variants = [], [None, "zlib", "lzw", "zstd", "tiled"]
    for i in range(num_pairs):
        classes, shade = scene(rng, SIZE, SIZE)
        sar = sar_db(rng, classes, shade)
        if i % 3 != 2:
            variant = variants[i % len(variants)]
            comp, tile = ("zlib", (32, 32)) if variant == "tiled" else (variant, None)
            name = f"p{i}.tif"
            # Some files list their bands VH first: the stored order must still be VV, VH.
            order = (1, 0) if i % 4 == 3 else (0, 1)
            write_tiff(f"{root}/pairs_db/SAR/{name}", sar[..., order], band_names=[("VV", "VH")[k] for k in order],
                       compression=comp, tile=tile, planar=i % 2 == 1)
        else:
            name = f"q{i}_VV.tif"
            for k, pol in enumerate(("VV", "VH")):
                write_tiff(f"{root}/pairs_db/SAR/q{i}_{pol}.tif", sar[..., k], band_names=[pol])
        bands = ("B04", "B03", "B02") if i % 2 == 0 else ("B02", "B03", "B04", "B08")
        # 3-band files declare themselves RGB (as exports with PHOTOMETRIC=RGB do): Pillow then reads
        # them as 8-bit RGB, cutting the 16-bit DN (the near-black anchors of issue 19).
        write_tiff(f"{root}/pairs_db/OPT/o{i}.tif", optical_dn(rng, classes, shade, bands), band_names=bands,
                   BOA_ADD_OFFSET=-1000, compression="zlib" if i % 3 == 0 else None,
                   photometric="rgb" if len(bands) == 3 else "minisblack")
        pairs.append({"sar": f"SAR/{name}", "optical": f"OPT/o{i}.tif"})
    with open(f"{root}/pairs_db/paired.json", "w") as f:
        json.dump(pairs, f, indent=0)
    unpaired = []  # SAR without optical (a training mix needs both)
    for i in range(max(4, num_pairs // 3)):
        classes, shade = scene(rng, SIZE, SIZE)
        write_tiff(f"{root}/pairs_db/SAR/u{i}.tif", sar_db(rng, classes, shade), band_names=("VV", "VH"),
                   compression="zstd")
        unpaired.append(f"u{i}.tif")
    with open(f"{root}/pairs_db/unpaired.json", "w") as f:
        json.dump(unpaired, f, indent=0)

    h, w, border = 192, 256, 24
    classes, shade = scene(rng, h, w)
    sar = sar_db(rng, classes, shade)
    sar[:border], sar[:, :border] = np.nan, np.nan  # the scene's no-data border (top and left)
    opt = optical_dn(rng, classes, shade, ("B02", "B03", "B04", "B08"))
    opt[:border], opt[:, :border] = 0, 0
    write_tiff(f"{root}/scene/SAR/s0.tif", sar, band_names=("VV", "VH"), compression="zstd", tile=(64, 64))
    write_tiff(f"{root}/scene/OPT/s0.tif", opt, band_names=("B02", "B03", "B04", "B08"), BOA_ADD_OFFSET=-1000)
    with open(f"{root}/scene/paired.json", "w") as f:
        json.dump([{"sar": "s0.tif", "optical": "s0.tif"}], f)

    for i in range(6):
        classes, shade = scene(rng, SIZE, SIZE)
        intensity = 10 ** (sar_db(rng, classes, shade)[..., 0] / 10)
        write_tiff(f"{root}/linear/lin{i}.tif", intensity.astype(np.float32))
        write_tiff(f"{root}/linear/dn{i}.tif", np.clip(np.sqrt(intensity) * 2000, 1, 65535).astype(np.uint16))
    return {"pairs_db": ["--polarisations", "VV,VH", "--optical_bands", "B04,B03,B02"],
            "scene": ["--polarisations", "VV,VH", "--optical_bands", "B04,B03,B02", "--tile", "64"],
            "linear": []}


def summary(out_dir: str) -> dict:
    """What a converted dataset holds: SAR channels, stored optical means, tiles and the units entry."""
    sys.path.insert(0, os.getcwd())
    from data_pipelines import records, shard_io

    manifest = records.read_manifest(out_dir)
    src = shard_io.ShardedRecordSource(out_dir, "train")
    channels = manifest["features"]["sar"]["shape"][-1]
    opt = [ex["optical"].astype(np.float32) for ex in src if ex["is_paired"]]
    counts = manifest["converter"]["counts"]
    return {"dataset": out_dir, "examples": len(src), "sar_channels": int(channels),
            "optical_mean_of_255": round(float(np.mean(opt)), 1) if opt else None,
            "optical_p1_p99_span": round(float(np.mean([np.ptp(np.percentile(o, [1, 99])) for o in opt])), 1)
            if opt else None,
            "errors": counts["errors"], "tiles_skipped_nodata": counts.get("tiles_skipped_nodata", "n/a"),
            "tiles_skipped_contrast": counts.get("tiles_skipped_contrast", "n/a"),
            "sar_units": {k: v for k, v in manifest.get("sar_units", {"absent": "(legacy: intensity)"}).items()
                          if k != "files_differing"}}


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in ("make", "summary"):
        sys.exit("usage: geotiff_corpus.py make ROOT [NUM_PAIRS] | summary CONVERTED_DATASET_DIR")
    if sys.argv[1] == "make":
        for name, flags in make(sys.argv[2], num_pairs=int(sys.argv[3]) if len(sys.argv) == 4 else 12).items():
            print(f"sarmae-convert-sar1m --input {sys.argv[2]}/{name} --output {sys.argv[2]}_out/{name} "
                  f"--image_size {SIZE} --workers 1 {' '.join(flags)}")
    else:
        print(json.dumps(summary(sys.argv[2])))
