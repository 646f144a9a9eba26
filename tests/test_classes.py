"""Class lists, synonyms and the background rule (one rule for every command)."""

from __future__ import annotations

import pytest

from reattn_batch.workers.classes import parse_classes
from reattn_batch.workers.errors import UserError


def test_background_is_prepended_when_no_class_names_it():
    c = parse_classes("building,road,water")
    assert c.names == ["background", "building", "road", "water"]
    assert c.background_index == 0
    assert c.queries == ["background", "building", "road", "water"]


def test_synonyms_expand_to_queries_in_order():
    c = parse_classes("road/parking lot, building ,clutter/background")
    assert c.synonyms == (("road", "parking lot"), ("building",), ("clutter", "background"))
    assert c.background_index == 2  # Potsdam: clutter/background, nothing prepended
    assert c.queries == ["road", "parking lot", "building", "clutter", "background"]
    assert c.query_class == [0, 0, 1, 2, 2]


def test_no_background_flag():
    c = parse_classes("building,road", add_background=False)
    assert c.names == ["building", "road"] and c.background_index is None


def test_classes_file_in_segearth_format(tmp_path):
    f = tmp_path / "cls_potsdam.txt"
    f.write_text("road,parking lot\nbuilding\nlow vegetation\ntree\ncar\nclutter,background\n")
    c = parse_classes(None, f)
    assert len(c.synonyms) == 6 and c.background_index == 5
    assert c.query_class == [0, 0, 1, 2, 3, 4, 5, 5]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("building,,road", "empty name"),
        ("road/", "empty name"),
        ("road,building,Road", "listed twice"),
        ("road/street,street", "listed twice"),
    ],
)
def test_bad_class_lists(text, message):
    with pytest.raises(UserError, match=message):
        parse_classes(text)


def test_too_many_classes_for_uint8():
    names = ",".join(f"c{i}" for i in range(255))
    assert len(parse_classes(names, add_background=False).synonyms) == 255
    with pytest.raises(UserError, match="uint8"):
        parse_classes(names)  # 255 + background


def test_missing_classes_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        parse_classes(None, tmp_path / "nope.txt")


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_classes_file_with_a_utf8_byte_order_mark(tmp_path, newline):
    """Windows editors start UTF-8 files with a BOM; it must not become part of a name
    (which hid the file's own 'background' and added a second one)."""
    text = newline.join(["background", "building,roof", "route,rue", "forêt", ""])
    plain, marked = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_bytes(text.encode("utf-8"))
    marked.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    got = parse_classes(None, marked)
    assert got == parse_classes(None, plain)
    assert got.names == ["background", "building", "route", "forêt"]
    assert got.background_index == 0 and got.queries[0] == "background"


def test_classes_file_not_utf8_is_one_line(tmp_path):
    f = tmp_path / "utf16.txt"
    f.write_bytes("background\nbuilding\n".encode("utf-16"))  # Notepad's "Unicode"
    with pytest.raises(UserError, match="not a readable text file") as err:
        parse_classes(None, f)
    assert str(f) in str(err.value) and "\n" not in str(err.value)
