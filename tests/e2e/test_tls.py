"""`labelweave serve` with TLS and mutual TLS, reached by the CLI's `--tls-ca`/`--client-cert` flags.

Certificates come from the `openssl` command when it is installed, else from the
`cryptography` package; with neither the module is skipped.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.e2e.conftest import Launch, describe, run_cli


@dataclass(frozen=True)
class Pki:
    ca: Path  # CA certificate that signed server and client
    server_cert: Path  # subjectAltName IP:127.0.0.1, DNS:localhost
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # an unrelated CA
    other_client_cert: Path  # signed by other_ca
    other_client_key: Path


# ---------------------------------------------------------------------- certificates: openssl


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, describe(result)


def _openssl_ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=Labelweave e2e {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip


def _openssl_leaf(d: Path, name: str, ca: str, cn: str, extensions: str, serial: int) -> None:
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}",
        cwd=d,
    )  # fmt: skip
    (d / f"{name}.ext").write_text(extensions, encoding="ascii")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-set_serial", str(serial), "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem",
        cwd=d,
    )  # fmt: skip


def _pki_openssl(d: Path) -> None:
    _openssl_ca(d, "ca")
    _openssl_ca(d, "other-ca")
    _openssl_leaf(
        d,
        "server",
        "ca",
        "localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        2,
    )
    client_ext = "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"
    _openssl_leaf(d, "client", "ca", "e2e client", client_ext, 3)
    _openssl_leaf(d, "other-client", "other-ca", "e2e stranger", client_ext, 4)


# ---------------------------------------------------------------------- certificates: cryptography


def _pki_cryptography(d: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def write(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    def build(
        cn: str,
        issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
        extensions: list[tuple[x509.ExtensionType, bool]],
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        issuer_name, issuer_key = issuer if issuer is not None else (subject, key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
        )
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical=critical)
        return builder.sign(issuer_key, hashes.SHA256()), key

    ca_ext: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        ),
    ]
    cas = {}
    for name in ("ca", "other-ca"):
        cert, key = build(f"Labelweave e2e {name}", None, ca_ext)
        write(name, cert, key)
        cas[name] = (cert.subject, key)
    leaf = (x509.BasicConstraints(ca=False, path_length=None), False)
    server_ext: list[tuple[x509.ExtensionType, bool]] = [
        leaf,
        (
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            False,
        ),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
    ]
    client_ext: list[tuple[x509.ExtensionType, bool]] = [
        leaf,
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
    ]
    write("server", *build("localhost", cas["ca"], server_ext))
    write("client", *build("e2e client", cas["ca"], client_ext))
    write("other-client", *build("e2e stranger", cas["other-ca"], client_ext))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    if shutil.which("openssl"):
        _pki_openssl(d)
    else:
        # No silent skip: TLS must be tested wherever the suite runs.
        _pki_cryptography(d)  # ImportError here means: install openssl or the cryptography package
    return Pki(
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        other_ca=d / "other-ca.pem",
        other_client_cert=d / "other-client.pem",
        other_client_key=d / "other-client.key",
    )


def _whoami(target: str, token: str, cwd: Path, *flags: str | Path) -> subprocess.CompletedProcess[str]:
    return run_cli("whoami", "--target", target, "--token", token, *map(str, flags), cwd=cwd)


def _works(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, describe(result)
    assert '"person_id": "admin"' in result.stdout, describe(result)


def _refused(result: subprocess.CompletedProcess[str]) -> str:
    """Exit 2 with an `error: ...` line last on stderr; returns that line. (gRPC core may log
    INFO lines about a failed handshake before it unless GRPC_VERBOSITY says otherwise.)"""
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    last = result.stderr.rstrip("\n").rsplit("\n", 1)[-1]
    assert last.startswith("error: "), describe(result)
    return last + "\n"


# ---------------------------------------------------------------------- tests


def test_tls_server_serves_clients_trusting_its_ca_and_refuses_plaintext(
    launch: Launch, pki: Pki, tmp_path: Path
) -> None:
    srv = launch(
        extra_args=["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)],
        client_args=["--tls-ca", str(pki.ca)],
        credentials=grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes()),
    )
    token = srv.admin_token

    _works(srv.cli("whoami"))
    _works(_whoami(f"localhost:{srv.port}", token, tmp_path, "--tls-ca", pki.ca))  # DNS name in the SAN
    listing = srv.cli("project", "list")
    assert listing.returncode == 0, describe(listing)

    plaintext = _refused(_whoami(srv.target, token, tmp_path))
    assert "failed to connect" in plaintext
    _refused(_whoami(srv.target, token, tmp_path, "--tls-ca", pki.other_ca))  # server cert not trusted

    srv.stop()


def test_mutual_tls_requires_a_client_certificate_signed_by_the_client_ca(
    launch: Launch, pki: Pki, tmp_path: Path
) -> None:
    srv = launch(
        extra_args=[
            "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
            "--tls-client-ca", str(pki.ca),
        ],
        client_args=[
            "--tls-ca", str(pki.ca),
            "--client-cert", str(pki.client_cert), "--client-key", str(pki.client_key),
        ],
        credentials=grpc.ssl_channel_credentials(
            root_certificates=pki.ca.read_bytes(),
            private_key=pki.client_key.read_bytes(),
            certificate_chain=pki.client_cert.read_bytes(),
        ),
    )  # fmt: skip
    token = srv.admin_token

    _works(srv.cli("whoami"))

    without_cert = _refused(_whoami(srv.target, token, tmp_path, "--tls-ca", pki.ca))
    assert "failed to connect" in without_cert
    stranger = ("--client-cert", pki.other_client_cert, "--client-key", pki.other_client_key)
    _refused(_whoami(srv.target, token, tmp_path, "--tls-ca", pki.ca, *stranger))
    _refused(_whoami(srv.target, token, tmp_path))  # plaintext
    half = _refused(
        _whoami(srv.target, token, tmp_path, "--tls-ca", pki.ca, "--client-cert", pki.client_cert)
    )
    assert "client certificate and key must be given together" in half

    srv.stop()


def test_serve_refuses_a_tls_certificate_without_its_key(pki: Pki, tmp_path: Path) -> None:
    result = run_cli(
        "serve", "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0", "--metrics-port", "0",
        "--tls-cert", str(pki.server_cert),
        cwd=tmp_path,
    )  # fmt: skip
    assert _refused(result) == "error: --tls-cert: --tls-cert and --tls-key are required together\n"
