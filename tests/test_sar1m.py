"""SAR-1M converter: every image kind round-trips by the documented rules; bad inputs are logged
and left out; the error limit, resume and dry run work."""

import json
import os

import numpy as np
import pytest

from data_pipelines import images, records, sar1m, shard_io
from tests.conftest import make_sar1m_folder, ramp_image, save_image

SIZE = 32
SETTINGS = sar1m.Settings(image_size=SIZE, min_size=16)


def _resized(intensity):
    return images.quantise(images.resize_intensity(intensity[..., None].astype(np.float32), (SIZE, SIZE)), np.uint8)[..., 0]


def test_round_trip_of_every_image_kind(tmp_path):
    root, out = str(tmp_path / "in"), str(tmp_path / "out")
    sar = make_sar1m_folder(root)
    manifest = sar1m.convert(root, out, settings=SETTINGS, examples_per_shard=3, workers=1, progress=False)
    split = manifest["splits"]["train"]
    assert split["num_examples"] == 8 and split["num_paired"] == 3
    assert [s["num_examples"] for s in split["shards"]] == [3, 3, 2]
    conv = manifest["converter"]
    assert conv["counts"]["errors"] == 0 and conv["counts"]["color_sar_averaged"] == 1
    units = manifest["sar_units"]
    assert units["domain"] == "intensity" and units["decision"] == "auto" and units["channels"] == ["SAR"]
    assert [(f["file"], f["units"]) for f in units["files_differing"]] == [("SAR/gray16.tif", "amplitude")]
    assert "P99.9" in conv["intensity_rule"] and f"{SIZE}x{SIZE}" in manifest["resize_rule"]
    shard_io.verify_shards(out, "train")

    source = shard_io.ShardedRecordSource(out, "train")
    got = {source.example(i)["source"].decode(): source.example(i) for i in range(len(source))}
    assert [source.example(i)["source"].decode() for i in range(3)] == [
        "SAR/gray8.png", "SAR/gray16.png", "SAR/float.tif"]  # paired first, in list order
    ramp = ramp_image(40, 48)
    # 8-bit: v / 255; grey saved as RGB and RGBA: one channel, alpha dropped; JPEG: lossy.
    want8 = _resized(np.round(ramp * 255) / 255)
    for name in ("gray8.png", "gray_as_rgb.png", "rgba.png"):
        np.testing.assert_array_equal(got[f"SAR/{name}"]["sar"][..., 0], want8)
        assert int(got[f"SAR/{name}"]["bit_depth"]) == 8
    assert np.abs(got["SAR/gray.jpg"]["sar"][..., 0].astype(int) - want8).max() <= 3
    # 16-bit and float: percentile stretch, so the image spans [~0.33, 1] instead of staying black.
    # gray16.tif: integer TIFF DN are amplitude (sar_values); the dataset's domain is the intensity of
    # its PNG images, so that file is squared to intensity and listed as differing.
    for name, raw in (("gray16.png", sar["gray16.png"]), ("gray16.tif", sar["gray16.tif"].astype(np.float64) ** 2),
                      ("float.tif", sar["float.tif"])):
        x = raw.astype(np.float32)
        want = _resized(np.clip(x / np.percentile(x, 99.9), 0, 1))
        assert np.abs(got[f"SAR/{name}"]["sar"][..., 0].astype(int) - want).max() <= 1, name
        assert got[f"SAR/{name}"]["sar"].max() == 255
    assert int(got["SAR/gray16.png"]["bit_depth"]) == 16 and int(got["SAR/float.tif"]["bit_depth"]) == 32
    # Colour SAR: channel mean of intensities.
    color = sar["color.png"].astype(np.float32) / 255
    np.testing.assert_array_equal(got["SAR/color.png"]["sar"][..., 0], _resized(color.mean(-1)))
    # Optical: RGB kept, RGBA alpha dropped, 16-bit grey stretched and repeated to RGB.
    assert got["SAR/gray8.png"]["optical"].shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(got["SAR/gray8.png"]["optical"], got["SAR/gray16.png"]["optical"])
    opt3 = got["SAR/float.tif"]["optical"]
    assert (opt3[..., 0] == opt3[..., 2]).all() and opt3.max() == 255
    assert tuple(got["SAR/gray8.png"]["original_size"]) == (40, 48)
    assert not got["SAR/color.png"]["optical"].any() and not got["SAR/color.png"]["is_paired"]


def _bad_inputs(root):
    ramp8 = np.round(ramp_image(40, 40) * 255).astype(np.uint8)
    for i in range(4):
        save_image(f"{root}/SAR/good{i}.png", ramp8)
    save_image(f"{root}/OPT/o.png", np.repeat(ramp8[..., None], 3, -1))
    save_image(f"{root}/SAR/tiny.png", ramp8[:8, :40])
    save_image(f"{root}/SAR/nan.tif", np.where(ramp_image(40, 40) > 0.5, np.nan, 0.1).astype(np.float32))
    save_image(f"{root}/SAR/full.png", ramp8)
    with open(f"{root}/SAR/full.png", "rb") as f:
        data = f.read()
    with open(f"{root}/SAR/truncated.png", "wb") as f:
        f.write(data[: len(data) // 2])
    with open(f"{root}/SAR/not_an_image.png", "w") as f:
        f.write("hello")
    json.dump([{"sar": "good0.png", "optical": "o.png"}, {"sar": "good1.png", "optical": "missing.png"},
               {"sar": "good2.png"}], open(f"{root}/paired.json", "w"))
    json.dump(["good3.png", "tiny.png", "nan.tif", "truncated.png", "not_an_image.png", "gone.png", 17],
              open(f"{root}/unpaired.json", "w"))


def test_bad_inputs_are_logged_and_left_out(tmp_path):
    root, out = str(tmp_path / "in"), str(tmp_path / "out")
    _bad_inputs(root)
    manifest = sar1m.convert(root, out, settings=SETTINGS, examples_per_shard=4, max_error_share=0.9,
                             progress=False)
    assert manifest["splits"]["train"]["num_examples"] == 2  # good0 (paired) and good3
    assert manifest["converter"]["counts"]["errors"] == 8 and manifest["converter"]["counts"]["planned"] == 10
    errors = [json.loads(line) for line in open(os.path.join(out, sar1m.ERROR_LOG))]
    reasons = {os.path.basename(e["file"]): e["reason"] for e in errors}
    assert reasons["missing.png"] == "missing file named in paired.json[1]"
    assert reasons["paired.json[2]"].startswith("malformed entry {'sar': 'good2.png'}")
    assert reasons["gone.png"] == "missing file named in unpaired.json[5]"
    assert reasons["unpaired.json[6]"].startswith("malformed entry 17")
    assert reasons["tiny.png"] == "image 8x40 is smaller than one 16x16 patch"
    assert "NaN/Inf" in reasons["nan.tif"]
    assert reasons["truncated.png"].startswith("unreadable image") and "truncated" in reasons["truncated.png"]
    assert reasons["not_an_image.png"].startswith("unreadable image (UnidentifiedImageError")
    sources = [ex["source"].decode() for ex in shard_io.ShardedRecordSource(out, "train")]
    assert sources == ["SAR/good0.png", "SAR/good3.png"]


def test_error_share_above_the_limit_fails_without_a_manifest(tmp_path):
    root, out = str(tmp_path / "in"), str(tmp_path / "out")
    _bad_inputs(root)
    with pytest.raises(sar1m.ConversionError, match=r"8 of 10 inputs \(80.00%\) are bad, above max_error_share=50.00%"):
        sar1m.convert(root, out, settings=SETTINGS, max_error_share=0.5, progress=False)
    assert os.path.exists(os.path.join(out, sar1m.ERROR_LOG))
    assert not os.path.exists(os.path.join(out, records.MANIFEST_FILENAME))


def test_malformed_json_fails_naming_file_and_position(tmp_path):
    root = tmp_path / "in"
    (root / "SAR").mkdir(parents=True)
    (root / "paired.json").write_text('[{"sar": "a.png", "optical": "b.png"},\n {"sar": ')
    with pytest.raises(sar1m.ConversionError, match=r"paired.json: malformed JSON \(line 2, column"):
        sar1m.convert(str(root), str(tmp_path / "out"), settings=SETTINGS, progress=False)
    with pytest.raises(sar1m.ConversionError, match="has OPT/ but no paired.json"):
        (root / "paired.json").unlink()
        (root / "OPT").mkdir()
        sar1m.convert(str(root), str(tmp_path / "out"), settings=SETTINGS, progress=False)


def test_plain_folder_resume_dry_run_and_workers(tmp_path):
    root, out = str(tmp_path / "in"), str(tmp_path / "out")
    rng = np.random.default_rng(0)
    for i in range(6):
        save_image(f"{root}/{'ab'[i % 2]}/img{i}.png", rng.integers(0, 255, (20 + i, 30), dtype=np.uint8))
    summary = sar1m.convert(root, out, settings=SETTINGS, dry_run=True, progress=False)
    assert summary["counts"]["written"] == 6 and summary["layout"] == "folder" and not os.path.exists(out)

    manifest = sar1m.convert(root, out, settings=SETTINGS, examples_per_shard=2, workers=2, progress=False)
    assert manifest["splits"]["train"]["num_paired"] == 0 and manifest["converter"]["layout"] == "folder"
    shards = manifest["splits"]["train"]["shards"]
    # Resume: a run killed after two shards leaves those two; the rerun keeps them and redoes the third.
    os.remove(os.path.join(out, records.MANIFEST_FILENAME))
    os.remove(os.path.join(out, shards[2]["file"]))
    mtime = os.path.getmtime(os.path.join(out, shards[0]["file"]))
    again = sar1m.convert(root, out, settings=SETTINGS, examples_per_shard=2, workers=1, progress=False)
    assert again["converter"]["counts"]["kept_from_earlier_run"] == 2
    assert os.path.getmtime(os.path.join(out, shards[0]["file"])) == mtime
    # (sha256 may differ for the redone shard: protobuf's map field order depends on the process.)
    assert [s["num_examples"] for s in again["splits"]["train"]["shards"]] == [2, 2, 2]
    assert again["splits"]["train"]["shards"][:2] == shards[:2]
    assert [ex["source"].decode() for ex in shard_io.ShardedRecordSource(out, "train")] == [
        f"{'ab'[i % 2]}/img{i}.png" for i in (0, 2, 4, 1, 3, 5)]
    # Other settings invalidate every receipt.
    other = sar1m.convert(root, out, settings=sar1m.Settings(image_size=16), examples_per_shard=2, progress=False)
    assert other["converter"]["counts"]["kept_from_earlier_run"] == 0


def test_cli_main(tmp_path, capsys):
    root, out = str(tmp_path / "in"), str(tmp_path / "out")
    make_sar1m_folder(root)
    sar1m.main(["--input", root, "--output", out, "--image_size", "32", "--workers", "1", "--sar_dtype", "uint16"])
    assert "8 examples (3 paired) of 8 planned; 0 errors; 1 colour SAR" in capsys.readouterr().out
    assert records.read_manifest(out)["features"]["sar"]["dtype"] == "uint16"
    _bad_inputs(str(tmp_path / "bad"))
    with pytest.raises(SystemExit, match="above max_error_share"):
        sar1m.main(["--input", str(tmp_path / "bad"), "--output", str(tmp_path / "bad_out"), "--workers", "1",
                    "--image_size", "32"])
