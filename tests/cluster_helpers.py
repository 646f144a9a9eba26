"""For the cluster tests: real `dask scheduler` / `dask worker` processes on loopback,
a task recorder on the scheduler, TLS certificates (throwaway self-signed ones, and the
set deploy/tls/make-certs.sh makes), a tiny scene.

Each process runs in a session of its own, so that teardown can end it (and the
worker process its nanny started) by process group id, and nothing else.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

DASK = [sys.executable, "-m", "dask"]  # the `dask` command of this environment
MAKE_CERTS = Path(__file__).resolve().parents[1] / "deploy" / "tls" / "make-certs.sh"

# The tiny test model, on the CPU everywhere, so that runs compare on any machine
TINY = ["--clip-weights", "random", "--set", "clip_model=ViT-T-16-test",
        "--upsampler", "bilinear", "--device", "cpu"]  # fmt: skip


@dataclass
class DaskProcesses:
    scheduler_file: Path
    address: str
    logs: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def log_tail(self, chars: int = 3000) -> str:
        text = []
        for log in sorted(self.logs.glob("*.log")):
            text.append(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(text)


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@contextlib.contextmanager
def process(cmd: list[str], log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """``cmd`` in a session of its own, its output in ``log``; ended (with the processes
    it started) on leaving."""
    proc = _start(cmd, log, env)
    try:
        yield proc
    finally:
        _stop(proc)


@contextlib.contextmanager
def dask_processes(
    workdir: Path,
    n_workers: int,
    *,
    worker_args: tuple[str, ...] = ("--nthreads", "1", "--resources", "GPU=1"),
    tls: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    start_timeout: float = 60.0,
) -> Iterator[DaskProcesses]:
    """A scheduler on 127.0.0.1 (a free port; ``tls``: its --tls-* options and
    ``--protocol tls``) and ``n_workers`` workers named gpu-0.. that join it through
    the scheduler file. The caller waits for the workers with a Client."""
    workdir.mkdir(parents=True, exist_ok=True)
    scheduler_file = workdir / "scheduler.json"
    scheduler_file.unlink(missing_ok=True)
    environ = os.environ | {"DASK_LOGGING__DISTRIBUTED": "info"} | (env or {})
    protocol = ("--protocol", "tls") if tls else ()
    procs: list[subprocess.Popen] = []
    try:
        procs.append(
            _start(
                [*DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                 "--scheduler-file", str(scheduler_file), *protocol, *tls],
                workdir / "scheduler.log",
                environ,
            )
        )  # fmt: skip
        deadline = time.monotonic() + start_timeout
        while not scheduler_file.is_file() or not scheduler_file.read_text().strip():
            if procs[0].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "dask scheduler did not start:\n"
                    + (workdir / "scheduler.log").read_text(errors="replace")[-3000:]
                )
            time.sleep(0.2)
        time.sleep(0.2)  # the file is written whole, but be safe against a partial read
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(n_workers):
            procs.append(
                _start(
                    [*DASK, "worker", "--scheduler-file", str(scheduler_file),
                     "--host", "127.0.0.1", "--no-dashboard", "--name", f"gpu-{i}",
                     "--local-directory", str(workdir / f"worker-{i}"), *worker_args, *tls],
                    workdir / f"worker-{i}.log",
                    environ,
                )
            )  # fmt: skip
        yield DaskProcesses(scheduler_file, address, workdir, procs)
    finally:
        for proc in reversed(procs):  # workers first, then the scheduler
            _stop(proc)


def install_task_recorder(dask_scheduler) -> None:
    """Run on the scheduler (``client.run_on_scheduler``): record, for every task that
    starts processing, its resource restrictions and the worker it went to.

    Tasks are forgotten once their results are released, so the restrictions must be
    caught while the task is known. Defined here but pickled by value (see
    ``register_by_value``), so the scheduler need not import the tests.
    """
    from distributed.diagnostics.plugin import SchedulerPlugin

    class TaskRecorder(SchedulerPlugin):
        name = "reattn-test-task-recorder"

        def __init__(self, scheduler):
            self.scheduler = scheduler
            self.seen: dict[str, tuple[dict, str]] = {}

        def transition(self, key, start, finish, *args, **kwargs):
            if finish != "processing":
                return
            ts = self.scheduler.tasks.get(key)
            if ts is not None and ts.processing_on is not None:
                self.seen[str(key)] = (
                    dict(ts.resource_restrictions or {}),
                    ts.processing_on.address,
                )

    if TaskRecorder.name not in dask_scheduler.plugins:
        dask_scheduler.add_plugin(TaskRecorder(dask_scheduler))


def recorded_tasks(dask_scheduler, clear: bool = False) -> dict[str, tuple[dict, str]]:
    """Run on the scheduler: what ``install_task_recorder``'s plugin saw."""
    plugin = dask_scheduler.plugins["reattn-test-task-recorder"]
    seen = dict(plugin.seen)
    if clear:
        plugin.seen.clear()
    return seen


def install_task_timeline(dask_scheduler) -> None:
    """Run on the scheduler: record ``(key, state, time)`` whenever a task starts or stops
    processing (pickled by value like ``install_task_recorder``)."""
    import time as _time

    from distributed.diagnostics.plugin import SchedulerPlugin

    class TaskTimeline(SchedulerPlugin):
        name = "reattn-test-task-timeline"

        def __init__(self):
            self.events: list[tuple[str, str, float]] = []

        def transition(self, key, start, finish, *args, **kwargs):
            if "processing" in (start, finish):
                self.events.append((str(key), finish, _time.time()))

    if TaskTimeline.name not in dask_scheduler.plugins:
        dask_scheduler.add_plugin(TaskTimeline())


def task_timeline(dask_scheduler) -> list[tuple[str, str, float]]:
    """Run on the scheduler: what ``install_task_timeline``'s plugin saw, in order."""
    return list(dask_scheduler.plugins["reattn-test-task-timeline"].events)


def most_at_once(events: list[tuple[str, str, float]], group) -> int:
    """The most distinct ``group(key)`` values with a task processing at the same moment
    (``group`` returns None for keys not counted)."""
    processing: dict[str, str] = {}
    most = 0
    for key, finish, _ in events:
        name = group(key)
        if name is None:
            continue
        if finish == "processing":
            processing[key] = name
        else:
            processing.pop(key, None)
        most = max(most, len(set(processing.values())))
    return most


def register_by_value() -> None:
    """Send this module's functions by value: the dask processes cannot import tests."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


def self_signed(directory) -> tuple[str, str]:
    """(cert.pem, key.pem) of a self-signed CA certificate for 127.0.0.1/localhost."""
    import pytest

    x509 = pytest.importorskip("cryptography.x509", reason="cryptography makes the test certs")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reattn-batch test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


@dataclass(frozen=True)
class TlsFiles:
    """A cluster's certificate set as deploy/tls/make-certs.sh writes it."""

    ca: str
    cert: str
    key: str
    printed: str = ""  # what the helper printed

    def dask_options(self) -> tuple[str, ...]:
        """`dask scheduler` / `dask worker` options."""
        return ("--tls-ca-file", self.ca, "--tls-cert", self.cert, "--tls-key", self.key)

    def client_env(self) -> dict[str, str]:
        """A client's (``reattn-batch run``'s) Dask settings, as documented."""
        return {
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": self.ca,
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": self.cert,
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": self.key,
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        }

    def security(self):
        from distributed.security import Security

        return Security(tls_ca_file=self.ca, tls_client_cert=self.cert,
                        tls_client_key=self.key, require_encryption=True)  # fmt: skip


def make_certs(directory: Path, *args: str) -> TlsFiles:
    """``deploy/tls/make-certs.sh ARGS DIRECTORY`` (it must succeed)."""
    done = subprocess.run(["bash", str(MAKE_CERTS), *args, str(directory)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    names = (str(directory / n) for n in ("ca.crt", "tls.crt", "tls.key"))
    return TlsFiles(*names, printed=done.stdout)


def tiny_scene(path) -> str:
    """A 320 x 256 RGB GeoTIFF of smooth noise (one block)."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (3, 16, 20), dtype=np.uint8).repeat(16, 1).repeat(16, 2)
    profile = {
        "driver": "GTiff", "width": 320, "height": 256, "count": 3, "dtype": "uint8",
        "crs": "EPSG:25832", "transform": from_origin(356000.0, 5645000.0, 0.5, 0.5),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return str(path)
