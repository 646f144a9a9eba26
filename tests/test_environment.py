"""The environment variables are fields of one settings model: each is read in one place,
a bad value is refused with one line naming the variable, and the README lists them all."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from reattn_batch.run.cluster import connect_timeout
from reattn_batch.run.progress import progress_interval
from reattn_batch.workers import text
from reattn_batch.workers.environment import EnvironmentSettings, cache_root
from reattn_batch.workers.errors import UserError
from reattn_batch.workers.upsampler import conv as upsampler
from reattn_batch.workers.upsampler import weights as weights_module

ROOT = Path(__file__).resolve().parents[1]
VARIABLES = [EnvironmentSettings.variable(f) for f in EnvironmentSettings.model_fields]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Each test starts with none of the variables set (conftest sets the cache)."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("REATTN_BATCH_PROGRESS_INTERVAL", "0", "expected a positive number of seconds"),
        ("REATTN_BATCH_PROGRESS_INTERVAL", "inf", "expected a positive number of seconds"),
        ("REATTN_BATCH_PROGRESS_INTERVAL", "ten", "expected a positive number of seconds"),
        ("REATTN_BATCH_CONNECT_TIMEOUT", "soon", "expected a positive number of seconds (or inf)"),
        ("REATTN_BATCH_CONNECT_TIMEOUT", "-3", "expected a positive number of seconds (or inf)"),
        ("REATTN_BATCH_CONNECT_TIMEOUT", "nan", "expected a positive number of seconds (or inf)"),
        ("REATTN_BATCH_READ_BACKOFF", "-1", "expected a number of seconds, 0 or more"),
        ("REATTN_BATCH_READ_BACKOFF", "inf", "expected a number of seconds, 0 or more"),
        ("REATTN_BATCH_FUSED_CONV", "maybe", "choose one of auto, on, off"),
        ("REATTN_BATCH_STAC_TIMEOUT", "0", "expected a positive number of seconds"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(monkeypatch, name, value, expected):
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError) as err:
        EnvironmentSettings.from_env()
    assert str(err.value) == f"{name}={value!r}: {expected}"


def test_the_readers_use_the_environment(monkeypatch):
    assert (progress_interval(), connect_timeout()) == (10.0, 15.0)  # the defaults
    monkeypatch.setenv("REATTN_BATCH_PROGRESS_INTERVAL", " 2.5 ")
    monkeypatch.setenv("REATTN_BATCH_CONNECT_TIMEOUT", "inf")
    assert (progress_interval(), connect_timeout()) == (2.5, float("inf"))
    monkeypatch.setenv("REATTN_BATCH_CONNECT_TIMEOUT", "")  # blank: the default
    assert connect_timeout() == 15.0
    monkeypatch.setenv("REATTN_BATCH_FUSED_CONV", " ON ")
    assert upsampler.fused_conv_wanted(torch.device("cpu"))
    monkeypatch.setenv("REATTN_BATCH_FUSED_CONV", "off")
    assert not upsampler.fused_conv_wanted(torch.device("cuda"))
    monkeypatch.setenv("REATTN_BATCH_READ_BACKOFF", "0")
    assert EnvironmentSettings.from_env("read_backoff").read_backoff == 0.0


def test_each_reader_reads_only_its_variable(monkeypatch):
    """A bad variable stops the run where it is used, not in unrelated code."""
    monkeypatch.setenv("REATTN_BATCH_CONNECT_TIMEOUT", "soon")
    assert progress_interval() == 10.0
    with pytest.raises(UserError, match="^REATTN_BATCH_CONNECT_TIMEOUT='soon': "):
        connect_timeout()


def test_one_cache_folder_for_text_and_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "reattn-batch"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "reattn-batch"
    monkeypatch.setenv("REATTN_BATCH_CACHE", "~/cache")
    assert cache_root() == tmp_path / "home" / "cache"
    assert text.cache_root() == cache_root()
    weights = weights_module.default_weights_path("jbu_one")
    assert weights == tmp_path / "home" / "cache" / "upsampler" / weights_module.JBU_ONE.filename


def readme_rows() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Environment variables", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows]


def test_the_readme_lists_every_variable_its_field_and_default():
    fields = EnvironmentSettings.model_fields
    listed = {row[0]: row for row in readme_rows()}
    assert sorted(listed) == sorted(VARIABLES)
    for field, info in fields.items():
        name, field_in_readme, default, meaning = listed[info.alias]
        assert field_in_readme == field and meaning
        if info.default is None:
            assert default == "unset", name
        elif isinstance(info.default, bool):  # written as the variable takes it: 0 or 1
            assert default == str(int(info.default)), name
        elif isinstance(info.default, float):
            assert float(default) == info.default, name
        else:
            assert default == info.default, name


def test_the_program_reads_these_variables_nowhere_else():
    """Every REATTN_BATCH_* name the package's code mentions is a field of the model,
    and os.environ is read for one only in workers/environment.py."""
    code = {
        path: path.read_text()
        for folder in ("pipeline", "workers")
        for path in (ROOT / folder).rglob("*.py")
    }
    mentioned = {m for source in code.values() for m in re.findall(r"REATTN_BATCH_\w+", source)}
    assert mentioned <= set(VARIABLES), mentioned - set(VARIABLES)
    readers = [
        path.relative_to(ROOT).as_posix()
        for path, source in code.items()
        if re.search(r"os\.environ(\.get|\[)|os\.getenv|environ\.get\(", source)
    ]
    assert readers == ["workers/environment.py"], readers
