"""A throwaway certificate authority for TLS tests (the openssl command line makes it)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA's certificate, what a client trusts
    cert: Path  # a server (or client) certificate for 127.0.0.1 / localhost, signed by the CA
    key: Path


def make_certificates(where: Path, name: str = "ca") -> Certificates:
    """A CA and a certificate it signed for 127.0.0.1 and localhost, under `where`."""
    where.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (where / f"{name}{s}" for s in ("-ca.key", "-ca.pem", ".key", ".csr", ".pem"))

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
            "-subj", f"/CN={name} test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext = where / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-out",
            str(cert), "-days", "2", "-extfile", str(ext))
    return Certificates(ca, cert, key)
