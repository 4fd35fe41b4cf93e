"""GeoTIFF products as users hold them (issue 19): the raster reader, SAR units, polarisations as
channels, multispectral optical, tiles and no-data, and the bad inputs of each; 8/16-bit PNG records
stay bitwise as they were."""

import hashlib
import json
import os

import numpy as np
import pytest
import tifffile
from PIL import Image

from data_pipelines import images, raster_plan, rasters, records, sar1m, sar_units, shard_io
from tests.scripts import geotiff_corpus as corpus

SIZE = corpus.SIZE


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("corpus"))
    return root, corpus.make(root)


def _convert(root, out, flags, size=SIZE):
    args = sar1m.arg_parser().parse_args(["--input", root, "--output", out, *flags])
    settings = sar1m.Settings(image_size=size, **raster_plan.settings_kwargs(args))
    return sar1m.convert(root, out, settings=settings, workers=1, progress=False, max_error_share=1.0)


def _rank_corr(a, b):
    ra, rb = np.argsort(np.argsort(a.ravel())), np.argsort(np.argsort(b.ravel()))
    return float(np.corrcoef(ra, rb)[0, 1])


def _examples(out):
    return {ex["source"].decode(): ex for ex in shard_io.ShardedRecordSource(out, "train")}


# ----------------------------------------------------------------------------- the reader


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.complex64])
@pytest.mark.parametrize("layout", ["single", "contig", "planar", "pages", "zlib", "lzw", "zstd", "tiled", "cog"])
def test_reader_reads_every_layout_and_dtype_exactly(tmp_path, dtype, layout):
    rng = np.random.default_rng(1)
    bands = 1 if layout == "single" else 3
    x = (rng.normal(size=(40, 48, bands)) * 1000).astype(dtype)
    if dtype == np.complex64:
        x = x + 1j * (rng.normal(size=x.shape) * 100).astype(np.float32)
    path = str(tmp_path / "x.tif")
    if layout == "pages":
        tifffile.imwrite(path, np.moveaxis(x, -1, 0), photometric="minisblack", metadata=None)  # 3 pages
    elif layout == "cog":  # tiled, compressed, with two reduced-resolution overviews after the image
        kw = dict(tile=(16, 16), compression="zlib", photometric="minisblack", planarconfig="contig", metadata=None)
        with tifffile.TiffWriter(path) as w:
            w.write(x, **kw)
            w.write(x[::2, ::2], subfiletype=1, **kw)
            w.write(x[::4, ::4], subfiletype=1, **kw)
    else:
        comp = {"zlib": "zlib", "lzw": "lzw", "zstd": "zstd", "tiled": "zlib"}.get(layout)
        corpus.write_tiff(path, x if bands > 1 else x[..., 0], compression=comp, planar=layout == "planar",
                          tile=(16, 16) if layout == "tiled" else None)
    r = rasters.read_raster(path)
    assert r.pixels.dtype == x.dtype and r.pixels.shape == x.shape and r.kind == "tiff"
    np.testing.assert_array_equal(r.pixels, x)


def test_palette_tiff_reads_as_its_colours(tmp_path):
    gray = np.arange(40 * 48, dtype=np.uint32).reshape(40, 48) % 256
    Image.fromarray(gray.astype(np.uint8)).convert("P").save(str(tmp_path / "p.tif"))
    Image.fromarray(gray.astype(np.uint8)).convert("P").save(str(tmp_path / "p.png"))
    tif, png = rasters.read_raster(str(tmp_path / "p.tif")), rasters.read_raster(str(tmp_path / "p.png"))
    assert tif.rgb and tif.pixels.shape == (40, 48, 3)
    np.testing.assert_array_equal(tif.pixels, png.pixels)


def test_reader_band_names_nodata_and_metadata(tmp_path):
    path = str(tmp_path / "s2.tif")
    corpus.write_tiff(path, np.ones((20, 20, 2), np.uint16), band_names=("B04", "B08"), nodata=0,
                      BOA_ADD_OFFSET=-1000)
    r = rasters.read_raster(path)
    assert r.band_names == ("B04", "B08") and r.nodata == 0 and r.metadata["BOA_ADD_OFFSET"] == "-1000"


def _break_compression(path):
    """Rewrites a file's compression tag (259, SHORT) to 60001, a codec nobody has."""
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].tags["Compression"].valueoffset
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write((60001).to_bytes(2, "little"))


def test_reader_errors_name_what_was_found(tmp_path):
    path = str(tmp_path / "odd.tif")
    corpus.write_tiff(path, np.ones((32, 32), np.float32), compression="zlib")
    _break_compression(path)
    with pytest.raises(images.BadImage, match=r"unreadable TIFF data \(dtype float32, shape \(32, 32\).*60001"):
        rasters.read_raster(path)
    with tifffile.TiffWriter(str(tmp_path / "two.tif")) as w:  # two rasters of different shapes in one file
        w.write(np.ones((20, 20), np.uint8), metadata=None)
        w.write(np.ones((10, 30), np.uint8), metadata=None)
    with pytest.raises(images.BadImage, match=r"ambiguous TIFF layout: 2 image series.*\(20, 20\).*\(10, 30\)"):
        rasters.read_raster(str(tmp_path / "two.tif"))


def test_decompression_bomb_limit_is_a_setting(tmp_path):
    path = str(tmp_path / "big.png")
    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(path)
    try:
        rasters.set_max_image_pixels(500)  # Pillow refuses > 2 x 500 pixels, as it refuses > ~179 Mpx by default
        with pytest.raises(images.BadImage, match="DecompressionBombError.*--max_image_pixels 0"):
            rasters.read_raster(path)
        rasters.set_max_image_pixels(0)
        assert rasters.read_raster(path).pixels.shape == (40, 40, 1)
    finally:
        rasters.set_max_image_pixels(rasters.DEFAULT_MAX_IMAGE_PIXELS)


# ----------------------------------------------------------------------------- the converter on the corpus


def test_db_pairs_polarisations_and_sentinel2_optical(made, tmp_path):
    root, flags = made
    out = str(tmp_path / "out")
    manifest = _convert(f"{root}/pairs_db", out, flags["pairs_db"])
    assert manifest["converter"]["counts"]["errors"] == 0 and manifest["splits"]["train"]["num_paired"] == 12
    assert manifest["splits"]["train"]["num_examples"] == 16  # and 4 unpaired
    units = sar_units.read(manifest, out)  # the schema 19B reads
    assert units["domain"] == "db" and units["channels"] == ["VV", "VH"] and units["db_range"] == [-35.0, 10.0]
    assert manifest["features"]["sar"]["shape"] == [SIZE, SIZE, 2]
    assert manifest["optical_units"]["boa_add_offset_sources"] == {"-1000 (metadata)": 12}
    got = _examples(out)
    lo, hi = units["db_range"]
    for i in range(12):
        name = f"SAR/p{i}.tif" if i % 3 != 2 else f"SAR/q{i}_VV.tif"
        ex = got[name]
        if i % 3 != 2:
            src = rasters.read_raster(f"{root}/pairs_db/{name}")
            vv, vh = (src.pixels[..., src.band_names.index(p)] for p in ("VV", "VH"))
        else:
            vv = rasters.read_raster(f"{root}/pairs_db/SAR/q{i}_VV.tif").pixels[..., 0]
            vh = rasters.read_raster(f"{root}/pairs_db/SAR/q{i}_VH.tif").pixels[..., 0]
        # Stored dB follow the documented linear map exactly (no resize at this size), VV first.
        for k, band in enumerate((vv, vh)):
            want = np.round(np.clip((band - lo) / (hi - lo), 0, 1) * 255)
            assert np.abs(ex["sar"][..., k].astype(int) - want).max() <= 1, (name, k)
        assert _rank_corr(ex["sar"][..., 0], vv) > 0.99 and _rank_corr(ex["sar"][..., 1], vh) > 0.99
        assert ex["sar"][..., 0].mean() > ex["sar"][..., 1].mean()  # VH is weaker than VV: order held
        # Optical: B04, B03, B02 by name from 3- and 4-band files; (DN - 1000) / 10000 / 0.3; not near-black.
        opt = rasters.read_raster(f"{root}/pairs_db/OPT/o{i}.tif")
        red = opt.pixels[..., opt.band_names.index("B04")].astype(float)
        want_red = np.round(np.clip((red - 1000) / 10000 / 0.3, 0, 1) * 255)
        assert np.abs(ex["optical"][..., 0].astype(int) - want_red).max() <= 1
        assert ex["optical"].mean() > 25 and np.ptp(np.percentile(ex["optical"], [1, 99])) > 40


def test_optical_from_one_file_per_band(tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "in"
    pairs = []
    for i in range(3):
        classes, shade = corpus.scene(rng, SIZE, SIZE)
        corpus.write_tiff(str(root / f"SAR/p{i}.tif"), corpus.sar_db(rng, classes, shade)[..., 0])
        dn = corpus.optical_dn(rng, classes, shade, ("B02", "B03", "B04"))
        for k, band in enumerate(("B02", "B03", "B04")):
            if not (i == 2 and band == "B03"):  # p2 lacks its B03 file
                corpus.write_tiff(str(root / f"OPT/p{i}_{band}.tif"), dn[..., k], BOA_ADD_OFFSET=-1000)
        pairs.append({"sar": f"p{i}.tif", "optical": f"p{i}_B04.tif"})
    with open(root / "paired.json", "w") as f:
        json.dump(pairs, f)
    out = str(tmp_path / "out")
    manifest = _convert(str(root), out, ["--optical_bands", "B04,B03,B02"])
    assert manifest["converter"]["counts"]["written"] == 2
    error = json.loads(open(os.path.join(out, sar1m.ERROR_LOG)).read())
    assert error["file"].endswith("OPT/p2_B03.tif") and error["reason"].startswith("missing band file of p2.tif")
    for i in range(2):
        ex = _examples(out)[f"SAR/p{i}.tif"]
        for k, band in enumerate(("B04", "B03", "B02")):
            dn = rasters.read_raster(str(root / f"OPT/p{i}_{band}.tif")).pixels[..., 0].astype(float)
            want = np.round(np.clip((dn - 1000) / 10000 / 0.3, 0, 1) * 255)
            assert np.abs(ex["optical"][..., k].astype(int) - want).max() <= 1, (i, band)


def test_scene_tiles_skip_no_data_and_keep_windows(made, tmp_path):
    root, flags = made
    out = str(tmp_path / "out")
    manifest = _convert(f"{root}/scene", out, flags["scene"])
    counts = manifest["converter"]["counts"]
    # 192 x 256 in 64-pixel tiles: 3 x 4 = 12 windows; the first row and column touch the 24-px border.
    assert counts["written"] == 6 and counts["tiles_skipped_nodata"] == 6 and counts["errors"] == 0
    sar = rasters.read_raster(f"{root}/scene/SAR/s0.tif").pixels
    opt = rasters.read_raster(f"{root}/scene/OPT/s0.tif").pixels
    got = _examples(out)
    assert sorted(got) == sorted(f"SAR/s0.tif#row={r},col={c}" for r in (64, 128) for c in (64, 128, 192))
    for source, ex in got.items():
        r, c = (int(v.split("=")[1]) for v in source.split("#")[1].split(","))
        window = np.s_[r:r + 64, c:c + 64]
        assert tuple(ex["original_size"]) == (64, 64)
        assert (ex["sar"] == 0).mean() < 0.1  # no tile is mostly no-data
        assert _rank_corr(ex["sar"][..., 0], sar[window][..., 0]) > 0.99
        assert _rank_corr(ex["optical"][..., 0], opt[window][..., 2]) > 0.95  # B04 is band 3 of B02,B03,B04,B08


def test_linear_and_dn_files_share_one_domain(made, tmp_path):
    root, _ = made
    out = str(tmp_path / "out")
    manifest = _convert(f"{root}/linear", out, [])
    units = manifest["sar_units"]
    assert units["decision"] == "auto" and units["votes"] == {"amplitude": 6, "intensity": 6}
    other = "intensity" if units["domain"] == "amplitude" else "amplitude"
    assert units["num_files_differing"] == 6 and {f["units"] for f in units["files_differing"]} == {other}
    logged = [json.loads(line) for line in open(os.path.join(out, units["files_differing_log"]))]
    assert logged == units["files_differing"]
    got = _examples(out)
    for i in range(6):
        lin = rasters.read_raster(f"{root}/linear/lin{i}.tif").pixels[..., 0]
        assert _rank_corr(got[f"lin{i}.tif"]["sar"][..., 0], lin) > 0.98
        stored = got[f"lin{i}.tif"]["sar"][..., 0].astype(float) / 255
        mapped = np.sqrt(lin) if units["domain"] == "amplitude" else lin
        ok = stored < 1  # below the percentile clip: proportional to the domain's value
        ratio = stored[ok & (stored > 0.2)] / mapped[ok & (stored > 0.2)]
        assert ratio.std() / ratio.mean() < 0.05


def test_units_from_tags_and_colour_tiffs_in_an_image_dataset(tmp_path):
    from data_pipelines import sar_values

    rng = np.random.default_rng(6)
    positive_db = rng.uniform(1, 8, (SIZE, SIZE)).astype(np.float32)  # only strong targets: no negative value
    for names, units in ((("Sigma0_VV_db",), "db"), (("Amplitude_VV",), "amplitude"), (("Sigma0_VV",), "intensity"),
                         (("dbz",), "intensity")):
        corpus.write_tiff(str(tmp_path / "t.tif"), positive_db, band_names=names)
        assert sar_values.detect_units(rasters.read_raster(str(tmp_path / "t.tif")))[0] == units, names
    # Linear sigma0 with thermal-noise residues (small negatives) is intensity; dB stated as linear is refused.
    linear = rng.gamma(1.0, 0.05, (SIZE, SIZE)).astype(np.float32)
    linear[::7, ::5] = -0.002
    corpus.write_tiff(str(tmp_path / "lin.tif"), linear)
    raster = rasters.read_raster(str(tmp_path / "lin.tif"))
    assert sar_values.detect_units(raster)[0] == "intensity"
    stored = sar_values.to_stored(sar_values.physical(raster.pixels, "intensity"), np.ones((SIZE, SIZE), bool),
                                  "intensity")
    assert stored.min() == 0 and (stored[::7, ::5] == 0).all()
    corpus.write_tiff(str(tmp_path / "db.tif"), 10 * np.log10(linear.clip(1e-4)))
    with pytest.raises(images.BadImage, match=r"--sar_units intensity but the pixels hold negative values"):
        sar_values.detect_units(rasters.read_raster(str(tmp_path / "db.tif")), "intensity")
    # An 8-bit colour TIFF among PNGs: the released reading (grey-as-RGB -> one channel), not integer DN.
    root = tmp_path / "in"
    gray = rng.integers(20, 240, (SIZE, SIZE), dtype=np.uint8)
    Image.fromarray(gray).save(str(tmp_path / "g.png"))
    os.makedirs(root)
    Image.fromarray(gray).save(str(root / "a.png"))
    tifffile.imwrite(str(root / "b.tif"), np.repeat(gray[..., None], 3, -1), photometric="rgb")
    manifest = _convert(str(root), str(tmp_path / "out"), [])
    got = _examples(str(tmp_path / "out"))
    assert manifest["sar_units"]["num_files_differing"] == 0
    np.testing.assert_array_equal(got["a.png"]["sar"], got["b.tif"]["sar"])


def test_slc_needs_units_and_stores_the_stated_detection(tmp_path):
    rng = np.random.default_rng(3)
    z = (rng.normal(size=(SIZE, SIZE)) + 1j * rng.normal(size=(SIZE, SIZE))).astype(np.complex64) * 100
    corpus.write_tiff(str(tmp_path / "in/slc.tif"), z)
    with pytest.raises(sar1m.ConversionError, match=r"complex \(SLC\) pixels \(dtype complex64.*--sar_units"):
        _convert(str(tmp_path / "in"), str(tmp_path / "auto"), [])
    manifest = _convert(str(tmp_path / "in"), str(tmp_path / "out"), ["--sar_units", "intensity"])
    assert manifest["sar_units"]["domain"] == "intensity" and manifest["sar_units"]["decision"] == "stated"
    stored = _examples(str(tmp_path / "out"))["slc.tif"]["sar"][..., 0].astype(float) / 255
    power = np.abs(z.astype(np.complex128)) ** 2
    want = np.clip(power / np.percentile(power, 99.9), 0, 1)
    assert np.abs(stored - want).max() <= 1 / 255 + 1e-9


def test_bad_inputs_of_rasters_are_listed(made, tmp_path):
    root = str(tmp_path / "in")
    rng = np.random.default_rng(4)
    classes, shade = corpus.scene(rng, SIZE, SIZE)
    db = corpus.sar_db(rng, classes, shade)
    dn = corpus.optical_dn(rng, classes, shade)
    pairs = []

    def pair(name, sar, opt, **kw):
        corpus.write_tiff(f"{root}/SAR/{name}", sar, band_names=("VV", "VH")[:sar.shape[-1]] if sar.ndim == 3 else ())
        corpus.write_tiff(f"{root}/OPT/{name}", opt, band_names=("B04", "B03", "B02")[:opt.shape[-1]], **kw)
        pairs.append({"sar": name, "optical": name})

    pair("good.tif", db, dn)
    nan = db.copy()
    nan[: SIZE // 2] = np.nan
    pair("nan.tif", nan, dn)                                     # half no-data (NaN), no tiles: an error
    pair("small_opt.tif", db, dn[:32, :32])                      # different grids (tiles): error, both sizes
    pair("dark.tif", db, np.full_like(dn, 1000) + (dn % 7), BOA_ADD_OFFSET=-1000)  # reflectance ~0: near-black
    pair("one_band.tif", db[..., :1].copy(), dn)                 # 1 band but --polarisations VV,VH
    pair("four_band_opt.tif", db, np.dstack([dn, dn[..., :1]]))  # bands picked by number: fine
    corpus.write_tiff(f"{root}/SAR/lonely_VV.tif", db[..., 0])   # its VH file is missing
    pairs.append({"sar": "lonely_VV.tif", "optical": "good.tif"})
    slc = (rng.normal(size=(SIZE, SIZE, 2)) + 1j * rng.normal(size=(SIZE, SIZE, 2))).astype(np.complex64)
    pair("slc.tif", slc, dn)                                     # complex without --sar_units
    blank = dn.copy()
    blank[:, : SIZE // 2] = 0                                     # Sentinel-2 DN 0: no-data (left half)
    pair("opt_nodata.tif", db, blank)
    pair("codec.tif", db, dn)
    _break_compression(f"{root}/SAR/codec.tif")                  # a codec nobody has
    with open(f"{root}/paired.json", "w") as f:
        json.dump(pairs, f)
    out = str(tmp_path / "out")
    manifest = _convert(root, out, ["--polarisations", "VV,VH", "--optical_bands", "1,2,3", "--tile", "32"])
    reasons = {}
    for line in open(os.path.join(out, sar1m.ERROR_LOG)):
        e = json.loads(line)
        reasons.setdefault(os.path.basename(e["file"]).split("#")[0], []).append(e["reason"])
    assert "optical grid 32x32 differs from its SAR grid 64x64" in reasons["small_opt.tif"][0]
    assert all("near-black optical" in r for r in reasons["dark.tif"]) and len(reasons["dark.tif"]) == 4
    assert reasons["one_band.tif"][0].startswith("1 bands (dtype float32, 1 band, shape (64, 64, 1)), but "
                                                 "--polarisations names 2 (VV,VH)")
    assert reasons["lonely_VH.tif"][0].startswith("missing polarisation file of lonely.tif")
    assert reasons["slc.tif"][0].startswith("complex (SLC) pixels (dtype complex64, 2 bands, shape (64, 64, 2)): "
                                            "pass --sar_units")
    assert reasons["codec.tif"][0].startswith("unreadable TIFF data (dtype float32, shape (64, 64, 2)")
    counts = manifest["converter"]["counts"]
    assert counts["skipped_by_reason"] == {"band count or selection": 1, "complex without units": 1,
                                           "different grids": 1, "missing file": 1, "near-black": 4, "unreadable": 1}
    assert manifest["optical_units"]["boa_add_offset_sources"] == {
        "0 (assumed 0 (no BOA_ADD_OFFSET in metadata))": 4, "-1000 (metadata)": 1}  # good, nan, four_band_opt,
    # opt_nodata; dark
    # nan.tif in 32-px tiles: the top two tiles are all NaN (skipped, counted), the bottom two kept.
    assert counts["tiles_skipped_nodata"] == 4 and counts["tiles_skipped_contrast"] == 4
    assert sorted(s for s in _examples(out) if s.startswith("SAR/opt_nodata")) == [
        "SAR/opt_nodata.tif#row=0,col=32", "SAR/opt_nodata.tif#row=32,col=32"]
    sources = sorted(_examples(out))
    assert sum(s.startswith("SAR/nan.tif#row=32") for s in sources) == 2
    assert sum(s.startswith("SAR/four_band_opt.tif") for s in sources) == 4
    # Without tiles a mostly-NaN image is one error naming the share; the grids may then differ (resized).
    manifest = _convert(root, str(tmp_path / "whole"), ["--polarisations", "VV,VH", "--optical_bands", "1,2,3"])
    whole = {os.path.basename(json.loads(line)["file"]): json.loads(line)["reason"]
             for line in open(os.path.join(str(tmp_path / "whole"), sar1m.ERROR_LOG))}
    assert whole["nan.tif"].startswith("no-data share 0.50 (NaN/Inf")
    assert "small_opt.tif" not in whole and "near-black optical" in whole["dark.tif"]
    opt_errors = [json.loads(line) for line in open(os.path.join(str(tmp_path / "whole"), sar1m.ERROR_LOG))
                  if "opt_nodata" in line]
    assert opt_errors[0]["file"].endswith("OPT/opt_nodata.tif") and opt_errors[0]["reason"].startswith(
        "no-data share 0.50")


def test_cli_reports_units_and_refuses_bad_flags(made, tmp_path, capsys):
    root, flags = made
    sar1m.main(["--input", f"{root}/scene", "--output", str(tmp_path / "o"), "--image_size", "32", "--workers", "1",
                *flags["scene"]])
    printed = capsys.readouterr().out
    assert "tiles skipped: 6 mostly no-data" in printed and "SAR units: db (auto: float pixels with negative" in printed
    with pytest.raises(SystemExit, match="boa_add_offset='x'"):
        sar1m.main(["--input", f"{root}/scene", "--output", str(tmp_path / "p"), "--boa_add_offset", "x"])
    with pytest.raises(SystemExit, match="1 of 1 inputs"):
        sar1m.main(["--input", f"{root}/scene", "--output", str(tmp_path / "q"), "--workers", "1",
                    "--max_error_share", "0"])
    error = json.loads(open(tmp_path / "q" / sar1m.ERROR_LOG).read())
    assert error["file"].endswith("scene/SAR/s0.tif") and error["reason"] == (
        "2 bands (dtype float32, 2 bands, shape (192, 256, 2)), but 1 SAR channel is stored without "
        "--polarisations (e.g. --polarisations VV,VH)")


# ----------------------------------------------------------------------------- the released PNG path


def _content_sha256(out):
    digest = hashlib.sha256()
    for ex in shard_io.ShardedRecordSource(out, "train"):
        for k in sorted(ex):
            v = np.asarray(ex[k])
            digest.update(f"{k}{v.dtype}{v.shape}".encode())
            digest.update(v.tobytes())
    return digest.hexdigest()


# Decoded-record checksums of the PNG corpus below, converted by the converter before the raster reader
# existed (commit 9e2e1d9). Shard files themselves are not bitwise reproducible across processes
# (protobuf map order), so the records' decoded contents are compared.
LEGACY_SHA256 = {"uint8": "2ff6d304dfbeba67c8d940ea186889f03be0a296c70bc9adc5783eb992e70905",
                 "uint16": "e04197b9982f2782348a569a77f92108d2f4e6c90a937f83bf468bc0edfeb49d"}


@pytest.mark.parametrize("sar_dtype", ["uint8", "uint16"])
def test_png_records_are_bitwise_as_before(tmp_path, sar_dtype):
    from data_pipelines.synthetic_scenes import generate_scenes

    root = str(tmp_path / "in")
    sar, opt = generate_scenes(np.random.default_rng(0), np.arange(12) % 5, 48)
    os.makedirs(f"{root}/SAR")
    os.makedirs(f"{root}/OPT")
    paired, unpaired = [], []
    for i in range(12):
        pixels = np.round(sar[i] * 4000).astype(np.uint16) if i % 3 == 2 else np.round(sar[i] * 255).astype(np.uint8)
        Image.fromarray(pixels).save(f"{root}/SAR/s{i}.png")
        if i < 8:
            Image.fromarray(opt[i]).save(f"{root}/OPT/o{i}.png")
            paired.append({"sar": f"s{i}.png", "optical": f"o{i}.png"})
        else:
            unpaired.append(f"s{i}.png")
    json.dump(paired, open(f"{root}/paired.json", "w"))
    json.dump(unpaired, open(f"{root}/unpaired.json", "w"))
    out = str(tmp_path / "out")
    manifest = sar1m.convert(root, out, settings=sar1m.Settings(image_size=32, sar_dtype=sar_dtype),
                             examples_per_shard=5, workers=1, progress=False)
    assert _content_sha256(out) == LEGACY_SHA256[sar_dtype]
    assert manifest["sar_units"]["domain"] == "intensity" and manifest["sar_units"]["channels"] == ["SAR"]
    assert records.RecordSpec.from_json(manifest["features"]).sar_channels == 1


# ----------------------------------------------------------------------------- evaluation sets


def test_db_chip_classification_set_reads_as_the_converter_stores(tmp_path):
    from sarmae_jax.evaluate import datasets

    rng = np.random.default_rng(5)
    root = tmp_path / "chips"
    for split, n in (("Train", 3), ("Val", 2)):
        for cls in ("ship", "sea"):
            for i in range(n):
                classes, shade = corpus.scene(rng, 32, 32)
                db = corpus.sar_db(rng, classes, shade)
                if i % 2:  # per-polarisation files, as BigEarthNet writes them
                    for k, pol in enumerate(("VV", "VH")):
                        corpus.write_tiff(str(root / split / cls / f"c{i}_{pol}.tif"), db[..., k])
                else:
                    corpus.write_tiff(str(root / split / cls / f"c{i}.tif"), db[..., ::-1], band_names=("VH", "VV"))
    cfg = datasets.default_config()
    cfg.kind, cfg.path, cfg.polarisations = "image_folder", str(root), "VV,VH"
    train = datasets.load_split(cfg, "Train", 32, workdir=str(tmp_path / "eval"))
    assert train.images.shape == (6, 32, 32, 2) and sorted(train.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert train.sar_units["domain"] == "db" and train.sar_units["channels"] == ["VV", "VH"]
    # The converter on the same chips (a plain folder) stores the same pixels and the same units entry.
    out = str(tmp_path / "converted")
    manifest = _convert(str(root / "Train"), out, ["--polarisations", "VV,VH"], size=32)
    assert {k: manifest["sar_units"][k] for k in ("domain", "channels", "db_range")} == {
        k: train.sar_units[k] for k in ("domain", "channels", "db_range")}
    converted = sorted(ex["sar"].tobytes() for ex in shard_io.ShardedRecordSource(out, "train"))
    assert converted == sorted(image.tobytes() for image in train.images)
    # A 2-band chip without the polarisations flag is an error naming the file and what was found.
    cfg.polarisations, cfg.build_dir = "", str(tmp_path / "other")
    with pytest.raises(ValueError, match=r"c0.tif: 2 bands \(dtype float32, 2 bands, shape \(32, 32, 2\)\)"):
        datasets.load_split(cfg, "Train", 32, workdir=str(tmp_path / "eval"))
