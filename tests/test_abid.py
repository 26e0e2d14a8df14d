"""The dataset's key layout and metadata parsing."""

import json

import pytest

from invmon.data import abid


def test_bin_ids_are_padded_to_five_digits_then_plain():
    assert abid.format_bin_id(1) == "00001"
    assert abid.format_bin_id(99999) == "99999"
    assert abid.format_bin_id(100000) == "100000"


def test_split_key_keeps_unpadded_and_padded_ids_apart():
    assert abid.split_key("bin-images/121.jpg") == ("image", "121")
    assert abid.split_key("bin-images/00121.jpg") == ("image", "00121")
    assert abid.split_key("metadata/00121.json") == ("metadata", "00121")


@pytest.mark.parametrize(
    "key",
    [
        "bin-images/../x.jpg",
        "/bin-images/1.jpg",
        "bin-images/a/1.jpg",
        "other/1.jpg",
        "bin-images/1.png",
        "metadata/1.jpg",
        "bin-images/.jpg",
    ],
)
def test_split_key_rejects_anything_else(key):
    assert abid.split_key(key) is None


def test_expected_quantity_comes_from_the_top_level_field():
    document = {
        "BIN_FCSKU_DATA": {
            "X00ABC": {
                "asin": "B00REAL",
                "quantity": 2,
                "weight": {"unit": "pounds", "value": None},
            }
        },
        "EXPECTED_QUANTITY": 2,
    }
    assert abid.expected_quantity(json.dumps(document)) == 2
    assert abid.expected_quantity('{"BIN_FCSKU_DATA": {}, "EXPECTED_QUANTITY": 0}') == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "invalid JSON"),
        ('{"BIN_FCSKU_DATA": {}}', "no EXPECTED_QUANTITY"),
        ('{"EXPECTED_QUANTITY": -1}', "non-negative"),
        ('{"EXPECTED_QUANTITY": "3"}', "non-negative"),
        ("[1, 2]", "no EXPECTED_QUANTITY"),
    ],
)
def test_expected_quantity_names_what_is_wrong(text, message):
    with pytest.raises(abid.MetadataError, match=message):
        abid.expected_quantity(text)
