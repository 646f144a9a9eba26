"""workers.checkpoint on crafted input: bounded time and memory, same result on normal files.

The bounds (a few seconds) are generous for a shared, noisy machine; the quadratic code
these tests guard against took minutes to hours on the same inputs.
"""

from __future__ import annotations

import ast
import re
import time
import zipfile
from pathlib import Path

import pytest
from test_checkpoint import assert_same, jit_save, tiny_clip

from reattn_batch.workers.checkpoint import class_declarations, read_clip_state_dict
from reattn_batch.workers.errors import UserError

BOUND_S = 5.0


def old_regex_declarations(source: str, name: str) -> list[str] | None:
    """The regular-expression reading the linear parser replaced (a reference for normal
    headers only: it backtracks quadratically over runs of blank lines)."""
    for body in re.split(r"^class ", source, flags=re.M)[1:]:
        if not body.startswith(f"{name}("):
            continue
        found = [
            re.search(rf"^\s+{k} = (\[.*\])$", body, re.M)
            for k in ("__parameters__", "__buffers__")
        ]
        if all(found):
            return [n for m in found for n in ast.literal_eval(m.group(1))]
    return None


def parsed(source: str, name: str) -> list[str] | None:
    literals = class_declarations(source).get(name)
    return None if literals is None else [n for lit in literals for n in ast.literal_eval(lit)]


def code_files(archive_path: Path) -> dict[str, str]:
    with zipfile.ZipFile(archive_path) as archive:
        return {
            n: archive.read(n).decode()
            for n in archive.namelist()
            if "/code/" in n and n.endswith(".py")
        }


@pytest.mark.parametrize("trace", [False, True], ids=["scripted", "traced"])
def test_parser_reads_real_torchscript_headers_as_the_regex_did(
    tmp_path: Path, trace: bool
) -> None:
    path = jit_save(tiny_clip(), tmp_path / "model.pt", trace=trace)
    checked = 0
    for source in code_files(path).values():
        names = [line[6:].partition("(")[0] for line in source.split("\n") if line[:6] == "class "]
        for name in [*names, "NoSuchClass"]:
            assert parsed(source, name) == old_regex_declarations(source, name), name
            checked += name != "NoSuchClass"
    assert checked >= 3  # CLIP, the vision and text towers, their blocks...


def test_parser_on_hand_written_headers() -> None:
    source = (
        "class A(Module):\n"
        '  __parameters__ = ["weight", "bias", ]\n'
        '  __buffers__ = ["running_mean", ]\n'
        "  weight : Tensor\n"
        "class B(Module):\n"  # declares only one of the two: not counted
        '  __parameters__ = ["w", ]\n'
        "class A(Module):\n"  # the first class of a name wins
        '  __parameters__ = ["other", ]\n'
        "  __buffers__ = []\n"
        "class C(Module):\n"
        '\t__buffers__ = ["b"]\n'
        "\t__parameters__ = []\n"
        '\t__parameters__ = ["ignored"]\n'  # the first declaration of a kind wins
        "__buffers__ = []\n"  # not indented: not part of a class body
    )
    for name in ("A", "B", "C", "D"):
        assert parsed(source, name) == old_regex_declarations(source, name), name
    assert parsed(source, "A") == ["weight", "bias", "running_mean"]
    assert parsed(source, "C") == ["b"]


def _rewrite(src: Path, dst: Path, edit: dict[str, bytes], first: dict[str, bytes]) -> Path:
    """``src`` with the entries in ``edit`` replaced and those in ``first`` put before all."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        for name, data in first.items():
            new.writestr(name, data)
        for info in old.infolist():
            new.writestr(info, edit.get(info.filename, old.read(info)))
    return dst


def test_blank_line_flood_in_archived_code_reads_in_bounded_time(tmp_path: Path) -> None:
    good = jit_save(tiny_clip(seed=4), tmp_path / "good.pt")
    sources = code_files(good)
    # the file holding the root class CLIP: 200k blank (whitespace) lines in its body
    name = next(n for n, s in sources.items() if "class CLIP(" in s)
    header = "class CLIP(Module):\n"
    source = sources[name].replace(header, header + " \n" * 200_000)
    crafted = _rewrite(good, tmp_path / "crafted.pt", {name: source.encode()}, {})

    start = time.perf_counter()
    state = read_clip_state_dict(crafted)
    elapsed = time.perf_counter() - start
    assert elapsed < BOUND_S, f"{elapsed:.1f} s"
    assert_same(state, read_clip_state_dict(good))


def test_many_entries_archive_reads_in_bounded_time(tmp_path: Path) -> None:
    good = jit_save(tiny_clip(seed=5), tmp_path / "good.pt")
    junk = {f"j{i}/data.pkl": b"" for i in range(20_000)}  # 20k candidate roots, first
    crafted = _rewrite(good, tmp_path / "crafted.pt", {}, junk)

    start = time.perf_counter()
    state = read_clip_state_dict(crafted)
    elapsed = time.perf_counter() - start
    assert elapsed < BOUND_S, f"{elapsed:.1f} s"
    assert_same(state, read_clip_state_dict(good))


def test_zip_bomb_is_refused_before_unpacking(tmp_path: Path) -> None:
    good = jit_save(tiny_clip(seed=6), tmp_path / "good.pt")
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(good) as old, zipfile.ZipFile(bomb, "w") as new:
        for info in old.infolist():
            new.writestr(info, old.read(info))
        # 64 MiB of zeros deflate to about 64 kB
        info = zipfile.ZipInfo("bomb/data/9")
        info.compress_type = zipfile.ZIP_DEFLATED
        with new.open(info, "w") as f:
            for _ in range(4):
                f.write(bytes(1 << 24))
    assert bomb.stat().st_size < good.stat().st_size + (1 << 20)

    start = time.perf_counter()
    with pytest.raises(UserError, match="corrupt or truncated") as err:
        read_clip_state_dict(bomb)
    assert time.perf_counter() - start < BOUND_S
    assert "unpacked" in str(err.value) and "\n" not in str(err.value)
