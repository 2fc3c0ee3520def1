"""TLS: `keep serve --tls-cert/--tls-key`; the client verifies certificates by default, trusts a
given ``ca_file``, and ``insecure=True`` works but warns."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from keepstore.client import KeepClient
from keepstore.errors import ReadError, WriteError
from keepstore.testing import wait_until

cryptography = pytest.importorskip("cryptography")

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

TOKEN = "tls-test-token-0123456789"
DATA = b"over TLS, verified"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keepstore test 127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A `keep serve` subprocess on https://127.0.0.1:<port>/ with a self-signed certificate."""
    tmp = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(tmp)
    proc = subprocess.Popen(
        [sys.executable, "-m", "keepstore", "serve", "--create", "--listen", "127.0.0.1:0", "--volume", str(tmp / "vol"),
         "--tls-cert", str(cert), "--tls-key", str(key), "--no-fsync"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on https://127.0.0.1:"), (line, proc.stderr.read() if proc.stderr else "")
        yield line.split()[-1], cert
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


def _client(url: str, **options: object) -> KeepClient:
    return KeepClient(services=[url], token=TOKEN, copies=1, retries=0, timeout=5, **options)  # type: ignore[arg-type]


def test_self_signed_server_is_rejected_by_default_with_a_clear_error(tls_server: tuple[str, Path]) -> None:
    url, _ = tls_server
    client = _client(url)
    with pytest.raises(WriteError) as info:
        client.put(DATA)
    message = str(info.value)
    assert "TLS" in message and ("certificate" in message or "handshake" in message), message
    assert TOKEN not in message
    client.close()


def test_self_signed_server_is_rejected_on_read_too(tls_server: tuple[str, Path]) -> None:
    url, cert = tls_server
    with _client(url, ca_file=str(cert)) as trusting:
        loc = trusting.put(DATA)
    client = _client(url)
    with pytest.raises(ReadError, match="TLS"):
        client.get(loc)
    client.close()


def test_ca_file_makes_the_self_signed_server_trusted(tls_server: tuple[str, Path]) -> None:
    url, cert = tls_server
    with _client(url, ca_file=str(cert)) as client:
        loc = client.put(DATA)
        assert client.get(loc) == DATA


def test_insecure_works_and_warns(tls_server: tuple[str, Path]) -> None:
    url, _ = tls_server
    with pytest.warns(UserWarning, match="verification is disabled"):
        client = _client(url, insecure=True)
    with client, warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning at construction, none per request
        loc = client.put(DATA)
        assert client.get(loc) == DATA


def test_plain_http_client_to_tls_server_fails_cleanly(tls_server: tuple[str, Path]) -> None:
    url, _ = tls_server
    client = _client(url.replace("https://", "http://"))
    with pytest.raises(WriteError):
        client.put(DATA)
    client.close()


def test_client_that_never_completes_the_handshake_is_dropped_after_idle_timeout(tmp_path: Path) -> None:
    import socket

    from keepstore.server import KeepServer

    cert, key = _self_signed(tmp_path)
    with KeepServer([tmp_path / "v"], tls_cert=cert, tls_key=key, idle_timeout=1.0, fsync=False) as server:
        for opening in (b"", b"\x16\x03\x01\x02\x00\x01"):  # silence, then half a ClientHello
            # a deadline, not a measurement: recv raises TimeoutError if the server never drops it
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
                sock.sendall(opening)
                try:
                    while sock.recv(4096):
                        pass
                except ConnectionResetError:
                    pass
        with _client(server.url, ca_file=str(cert)) as client:
            assert client.get(client.put(DATA)) == DATA


def test_failed_handshakes_do_not_leave_connections_tracked(tmp_path: Path) -> None:
    """Regression: a connection was tracked before its TLS handshake, and a failed handshake
    never untracked it (memory grew with every plain-HTTP probe of a TLS port)."""
    import socket

    from keepstore.server import KeepServer

    cert, key = _self_signed(tmp_path)
    with KeepServer([tmp_path / "v"], tls_cert=cert, tls_key=key, fsync=False) as server:
        for _ in range(10):
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\n\r\n")  # plain HTTP: the handshake fails
                with contextlib.suppress(OSError):
                    sock.recv(4096)
        wait_until(lambda: not server.open_connections, what="every failed handshake's connection closed")
