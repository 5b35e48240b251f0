"""``serve --tls-cert FILE --tls-key FILE``: HTTPS and wss:// with a certificate made here.

The certificate is self-signed for 127.0.0.1 and the clients trust exactly it, as a deployment
with its own CA would; files that cannot serve TLS stop the start with one line.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest
from cli_served import ROOT, Served, refused
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ooo_storage import Layered, MemoryLayer
from ooo_storage.protocol.access import token_digest
from ooo_storage.server import ServerRunner

TOKEN = "tls-token-0123456789abcdefghijklmnopqrstuvwxyz"


def make_certificate(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ooo-storage test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def pem(tmp_path: Path) -> tuple[Path, Path]:
    return make_certificate(tmp_path)


def trusting(cert: Path) -> ssl.SSLContext:
    """A client context that trusts only ``cert`` (hostname checked)."""
    return ssl.create_default_context(cafile=str(cert))


async def test_https_and_wss_with_a_self_signed_certificate(pem: tuple[Path, Path]) -> None:
    cert, key = pem
    async with Served("--tls-cert", str(cert), "--tls-key", str(key)) as served, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting(cert))) as http:
        assert served.scheme == "https"
        base = served.url
        async with http.post(f"{base}/tls/1", data=b'{"secret": 1}') as resp:
            assert resp.status == 200
        async with http.get(f"{base}/tls/1") as resp:
            assert resp.status == 200 and (await resp.json())["data"] == {"secret": 1}
        ws = await http.ws_connect(f"wss://127.0.0.1:{served.port}/tls/*")
        snapshot = orjson.loads((await ws.receive(timeout=5)).data)
        assert snapshot["snapshot"] and [e["data"] for e in snapshot["data"]] == [{"secret": 1}]
        async with http.post(f"{base}/tls/2", data=b"2") as resp:
            assert resp.status == 200
        change = orjson.loads((await ws.receive(timeout=5)).data)
        assert change["snapshot"] is False and change["data"][0]["value"]["data"] == 2
        await ws.close()
        # The port speaks only TLS: plain HTTP gets no answer, and a client that does not trust
        # the certificate refuses it.
        async with aiohttp.ClientSession() as plain:
            with pytest.raises(aiohttp.ClientError):
                async with plain.get(f"http://127.0.0.1:{served.port}/tls/1") as resp:
                    await resp.read()
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with plain.get(f"{base}/tls/1") as resp:
                    await resp.read()
    assert await served.stop() == 0


async def test_wss_with_a_token(tmp_path: Path, pem: tuple[Path, Path]) -> None:
    cert, key = pem
    auth = tmp_path / "auth.toml"
    auth.write_text(f'[[tokens]]\nname = "t"\nsha256 = "{token_digest(TOKEN)}"\n'
                    'rules = [{ paths = ["tls/*"], rights = ["read"] }]\n')
    async with Served("--auth", str(auth), "--tls-cert", str(cert), "--tls-key", str(key)) as served, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting(cert))) as http:
        ws = await http.ws_connect(f"wss://127.0.0.1:{served.port}/tls/*", protocols=("bearer", TOKEN))
        assert orjson.loads((await ws.receive(timeout=5)).data)["data"] == []
        await ws.close()
        with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:
            await http.ws_connect(f"wss://127.0.0.1:{served.port}/tls/*")
        assert refusal.value.status == 401


async def test_the_client_commands_speak_https(pem: tuple[Path, Path]) -> None:
    """``ooo-storage get https://...`` trusts what OpenSSL trusts: SSL_CERT_FILE adds a certificate."""
    cert, key = pem
    async with Served("--tls-cert", str(cert), "--tls-key", str(key)) as served:
        env = {**os.environ, "SSL_CERT_FILE": str(cert)}
        command = [sys.executable, "-m", "ooo_storage", "set", served.url, "k", '"over tls"']
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
        assert (done.returncode, done.stdout, done.stderr) == (0, "k\n", "")
        command = [sys.executable, "-m", "ooo_storage", "get", served.url, "k"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
        assert done.returncode == 0 and orjson.loads(done.stdout)["data"] == "over tls"


async def test_a_tls_handshake_that_never_comes_is_cut_at_the_header_timeout(pem: tuple[Path, Path]) -> None:
    """A connection that sends no ClientHello is not yet counted by the connection limit: it must
    not hold its socket for asyncio's default minute."""
    cert, key = pem
    async with Served("--tls-cert", str(cert), "--tls-key", str(key), "--header-timeout", "0.5") as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
        assert loop.time() - began < 5
        writer.close()


async def test_server_runner_serves_tls(pem: tuple[Path, Path]) -> None:
    cert, key = pem
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with Layered(memory=MemoryLayer()) as store:
        runner = ServerRunner(store, port=0, ssl_context=context)
        await runner.start()
        try:
            assert runner.url == f"https://127.0.0.1:{runner.port}"
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting(cert))) as http, \
                    http.get(f"{runner.url}/missing") as resp:
                assert resp.status == 404
        finally:
            await runner.stop()


# -- files that cannot serve TLS ------------------------------------------------------------------


def test_cert_without_key_is_a_usage_error(pem: tuple[Path, Path]) -> None:
    done = refused("--tls-cert", str(pem[0]))
    assert done.returncode == 2
    assert done.stderr == "ooo-storage: serve: --tls-cert and --tls-key go together: give both or neither\n"


def test_an_unreadable_file_is_named(tmp_path: Path, pem: tuple[Path, Path]) -> None:
    missing = tmp_path / "missing.key"
    done = refused("--tls-cert", str(pem[0]), "--tls-key", str(missing))
    assert done.returncode == 1
    assert done.stderr == f"ooo-storage: serve: --tls-key {missing}: can't read it: No such file or directory\n"


def test_a_key_of_another_certificate_is_refused(tmp_path: Path, pem: tuple[Path, Path]) -> None:
    _, other_key = make_certificate(tmp_path, "other")
    done = refused("--tls-cert", str(pem[0]), "--tls-key", str(other_key))
    assert done.returncode == 1
    assert done.stderr == (f"ooo-storage: serve: --tls-cert {pem[0]} with --tls-key {other_key}: "
                           "KEY_VALUES_MISMATCH (both must be PEM, the key the certificate's own)\n")


def test_a_file_that_is_not_pem_is_refused(tmp_path: Path, pem: tuple[Path, Path]) -> None:
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate\n")
    done = refused("--tls-cert", str(garbage), "--tls-key", str(pem[1]))
    assert done.returncode == 1
    assert done.stderr.startswith(f"ooo-storage: serve: --tls-cert {garbage} with --tls-key {pem[1]}: ")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_an_encrypted_key_is_refused_without_prompting(tmp_path: Path, pem: tuple[Path, Path]) -> None:
    cert, key = pem
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    done = refused("--tls-cert", str(cert), "--tls-key", str(locked))  # stdin is not a terminal either
    assert done.returncode == 1
    assert done.stderr == (f"ooo-storage: serve: --tls-key {locked} is encrypted: give it without a "
                           "passphrase (openssl pkey -in KEY -out PLAIN)\n")
