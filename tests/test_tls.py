"""`run --scheduler tls://...` with Dask's own TLS configuration (deploy/README.md, "TLS").

A throwaway self-signed certificate serves as the CA and as every party's certificate;
a real `dask scheduler --protocol tls` and one `dask worker` (GPU=1) run on loopback,
and the client side gets its certificate through the documented DASK_* variables. The
certificate helper deploy/tls/make-certs.sh is tested the same way, with encryption
required, and its cluster refuses plain TCP and clients without its certificate.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import stat
import subprocess
from pathlib import Path

import dask
import pytest
import zarr
from cluster_helpers import (
    MAKE_CERTS,
    TINY,
    dask_processes,
    make_certs,
    self_signed,
    tiny_scene,
)
from distributed import Client
from distributed.comm import connect
from distributed.security import Security

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


def accepts(address: str, ca: str, cert: str | None = None, key: str | None = None) -> bool:
    """Whether the TLS server at ``address`` completes Dask's handshake with a client that
    trusts ``ca`` and presents ``cert``/``key`` (None: no certificate at all)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    context.check_hostname = False  # as Dask's own contexts: the chain, not host names
    if cert:
        context.load_cert_chain(cert, key)

    async def handshake() -> bool:
        try:
            comm = await connect(address, timeout=10, ssl_context=context,
                                 require_encryption=True)  # fmt: skip
        except OSError:
            return False
        await comm.close()
        return True

    return asyncio.run(handshake())


def test_make_certs_gives_an_encrypted_cluster_that_refuses_everyone_else(tmp_path, monkeypatch):
    """deploy/tls/make-certs.sh's files (private folder and key, no CA key kept) run a real
    TLS scheduler and worker with encryption required and `run --scheduler tls://...`
    through the documented variables; plain TCP, a client without a certificate and one
    with another cluster's certificate are refused."""
    certs = make_certs(tmp_path / "certs")
    folder = tmp_path / "certs"
    assert sorted(os.listdir(folder)) == ["ca.crt", "tls.crt", "tls.key"]  # no ca.key
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(Path(certs.key).stat().st_mode) == 0o600
    assert "kubectl create secret generic reattn-batch-tls" in certs.printed
    other = make_certs(tmp_path / "other", "--name", "another-cluster")
    assert "kubectl create secret generic another-cluster-tls" in other.printed
    scene = tiny_scene(tmp_path / "scene.tif")
    required = {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"}
    with dask_processes(tmp_path / "dask", 1, tls=certs.dask_options(), env=required) as procs:
        try:
            assert procs.address.startswith("tls://127.0.0.1:")
            assert accepts(procs.address, certs.ca, certs.cert, certs.key)
            assert not accepts(procs.address, certs.ca)  # no client certificate
            assert not accepts(procs.address, certs.ca, other.cert, other.key)  # another CA
            plain = "tcp://" + procs.address.removeprefix("tls://")
            with pytest.raises(OSError):
                Client(plain, security=Security(), timeout="10s")
            for name, value in certs.client_env().items():
                monkeypatch.setenv(name, value)
            dask.config.refresh()
            with Client(procs.address, timeout="60s") as client:  # TLS from the variables
                client.wait_for_workers(1, timeout=120)
                store = tmp_path / "tls.zarr"
                main(["run", scene, "--classes", "building,road", *TINY,
                      "--scheduler", procs.address, "--out", str(store)])  # fmt: skip
        except Exception:
            print(procs.log_tail())
            raise
        finally:
            monkeypatch.undo()
            dask.config.refresh()
    assert zarr.open_group(str(store), mode="r").attrs["complete"] is True


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--days", "0"], "--days must be a whole number"),
        (["--name", "Not_A_Name"], "--name must be lower-case"),
        (["--bogus"], "unknown option --bogus"),
    ],
)
def test_make_certs_refuses_bad_options_and_never_overwrites(tmp_path, args, says):
    bad = subprocess.run(["bash", str(MAKE_CERTS), *args, str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.startswith("make-certs.sh: error: "), bad.stderr
    assert says in bad.stderr and len(bad.stderr.splitlines()) == 1
    first = make_certs(tmp_path / "certs")
    before = Path(first.key).read_bytes()
    again = subprocess.run(["bash", str(MAKE_CERTS), str(tmp_path / "certs")],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert again.returncode == 1 and "exists" in again.stderr, again.stderr
    assert Path(first.key).read_bytes() == before
