"""`run --scheduler tls://...` with Dask's own TLS configuration (deploy/README.md, "TLS").

A throwaway self-signed certificate serves as the CA and as every party's certificate;
a real `dask scheduler --protocol tls` and one `dask worker` (GPU=1) run on loopback,
and the client side gets its certificate through the documented DASK_* variables.
"""

from __future__ import annotations

import dask
import pytest
import zarr
from cluster_helpers import TINY, dask_processes, self_signed, tiny_scene
from distributed import Client

from reattn_batch.cli import main


@pytest.fixture
def client_tls_env(tmp_path, monkeypatch):
    """The client's TLS settings as environment variables, read by dask.config."""
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("DASK_DISTRIBUTED__COMM__TLS__CA_FILE", cert)
    monkeypatch.setenv("DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT", cert)
    monkeypatch.setenv("DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY", key)
    monkeypatch.setenv("DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION", "True")
    dask.config.refresh()
    try:
        yield cert, key
    finally:
        monkeypatch.undo()
        dask.config.refresh()  # no TLS settings leak into later tests


def test_run_over_tls(tmp_path, client_tls_env):
    cert, key = client_tls_env
    tls = ("--tls-ca-file", cert, "--tls-cert", cert, "--tls-key", key)
    scene = tiny_scene(tmp_path / "scene.tif")
    with dask_processes(tmp_path / "dask", n_workers=1, tls=tls) as procs:
        assert procs.address.startswith("tls://127.0.0.1:")
        try:
            with Client(procs.address, timeout="60s") as client:  # TLS from the env config
                client.wait_for_workers(1, timeout=120)
                store = tmp_path / "tls.zarr"
                main(["run", scene, "--classes", "building,road", *TINY,
                      "--scheduler", procs.address, "--out", str(store)])  # fmt: skip
                worker = next(iter(client.scheduler_info()["workers"]))
                assert worker.startswith("tls://")
        except Exception:
            print(procs.log_tail())
            raise
    group = zarr.open_group(str(store), mode="r")
    assert group.attrs["complete"] is True
    labels = group["labels"][:]
    assert labels.shape == (256, 320) and labels.max() < 3


def tls_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("reattn-batch: error:")]
    assert "TLS" in line and "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT" in line
    return line


def test_tcp_address_while_encryption_is_required_gives_one_line(tmp_path, client_tls_env,
                                                                 capsys):  # fmt: skip
    scene = tiny_scene(tmp_path / "scene.tif")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", scene, "--classes", "building", *TINY,
              "--scheduler", "tcp://127.0.0.1:1", "--out", str(tmp_path / "x.zarr")])  # fmt: skip
    assert exit_info.value.code == 2
    assert "encryption required" in tls_error_line(capsys)


def test_tls_address_without_certificates_gives_one_line(tmp_path, capsys):
    scene = tiny_scene(tmp_path / "scene.tif")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", scene, "--classes", "building", *TINY,
              "--scheduler", "tls://127.0.0.1:1", "--out", str(tmp_path / "x.zarr")])  # fmt: skip
    assert exit_info.value.code == 2
    assert "tls://127.0.0.1:1" in tls_error_line(capsys)
