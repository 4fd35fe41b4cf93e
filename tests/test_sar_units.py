"""The manifest's `sar_units` entry: legacy default, validation that names the key."""
import pytest

from data_pipelines import sar_units


def _manifest(stored_channels=1, **entry):
    m = {"features": {"sar": {"shape": [8, 8, stored_channels], "dtype": "uint8"}}}
    if entry:
        m[sar_units.KEY] = entry
    return m


def test_a_manifest_without_the_entry_is_single_channel_intensity():
    assert sar_units.read(_manifest(), "m.json") == {"domain": "intensity", "channels": ["SAR"]}


def test_a_multichannel_manifest_must_name_its_channels():
    with pytest.raises(ValueError, match="m.json: records hold 2 SAR channels"):
        sar_units.read(_manifest(2), "m.json")


def test_db_entry_needs_its_range_and_channel_names_match_the_records():
    ok = sar_units.read(_manifest(2, domain="db", channels=["VV", "VH"], db_range=[-35, 5]), "m.json")
    assert ok["db_range"] == [-35.0, 5.0]
    with pytest.raises(ValueError, match=r"sar_units.db_range=None"):
        sar_units.read(_manifest(1, domain="db", channels=["VV"]), "m.json")
    with pytest.raises(ValueError, match=r"names 1 channel\(s\) \['VV'\], but the records hold 2"):
        sar_units.read(_manifest(2, domain="amplitude", channels=["VV"]), "m.json")
    with pytest.raises(ValueError, match=r"sar_units.domain='dB'"):
        sar_units.read(_manifest(1, domain="dB", channels=["VV"]), "m.json")
