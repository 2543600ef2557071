"""Write a self-signed TLS certificate for nginx, unless one is already there.

``python deploy/self_signed_cert.py DIRECTORY HOSTNAME`` writes
``DIRECTORY/tls.crt`` and ``DIRECTORY/tls.key`` for HOSTNAME (valid 90 days),
so the stack starts over HTTPS on a machine with no certificate yet. Put your
own certificate in their place for anything but a trial: an existing pair is
never overwritten.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def write_certificate(directory: Path, hostname: str) -> bool:
    """Write tls.crt and tls.key for HOSTNAME into DIRECTORY; return False if they exist."""
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    if cert_path.exists() and key_path.exists():
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    try:
        alt_name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        alt_name = x509.DNSName(hostname)
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([alt_name]), critical=False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return True


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: self_signed_cert.py DIRECTORY HOSTNAME")
    target, host = Path(sys.argv[1]), sys.argv[2]
    written = write_certificate(target, host)
    print(f"{'wrote a self-signed certificate' if written else 'kept the certificate'} in {target}")
