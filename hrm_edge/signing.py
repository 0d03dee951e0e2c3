"""Ed25519 signatures of bundle digests, for a fleet that pins a signing key instead of a digest.

The signed message is the digest text itself, "sha256:<64 hex>" in ASCII (`manifest_digest`); the
signature is the raw 64-byte Ed25519 signature (RFC 8032), stored as `manifest.sig`. Keys are PEM:
PKCS#8 private keys and SubjectPublicKeyInfo public keys, the form `hrm-edge keygen` and
`openssl genpkey -algorithm ed25519` write. Needs the optional `cryptography` package
(`pip install 'hrm-edge[sign]'`), imported only when a key is used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hrm_edge.errors import HrmEdgeError

SIGNATURE_BYTES = 64  # an Ed25519 signature
PRIVATE_KEY = "bundle-signing.key.pem"
PUBLIC_KEY = "bundle-signing.pub.pem"


class SignatureError(HrmEdgeError):
    """A key that cannot be used, or a signature that is missing or does not match."""


def _ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SignatureError("signing needs the 'cryptography' package: pip install 'hrm-edge[sign]'") from None
    return ed25519


def _read_key(path: str | Path, private: bool) -> Any:
    ed25519 = _ed25519()
    from cryptography.hazmat.primitives import serialization

    what = "private" if private else "public"
    try:
        data = Path(path).read_bytes()
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except OSError as exc:
        raise SignatureError(f"{path}: cannot read the {what} key ({exc.strerror})") from None
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{path}: not an unencrypted PEM {what} key ({str(exc).splitlines()[0]})") from None
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise SignatureError(f"{path}: a {type(key).__name__}, not an Ed25519 {what} key")
    return key


def load_private_key(path: str | Path) -> Any:
    """An Ed25519 private key from an unencrypted PEM file (one-line `SignatureError` otherwise)."""
    return _read_key(path, private=True)


def sign_digest(key: Any, digest: str) -> bytes:
    """The 64-byte Ed25519 signature of `digest` ("sha256:<hex>") with a key of `load_private_key`."""
    return key.sign(digest.encode("ascii"))


def verify_digest(public_key: str | Path, digest: str, signature: bytes) -> None:
    """Check that `signature` is the Ed25519 signature of `digest` by the key in `public_key` (PEM)."""
    key = _read_key(public_key, private=False)
    from cryptography.exceptions import InvalidSignature

    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(f"bad signature: {len(signature)} bytes, an Ed25519 signature has {SIGNATURE_BYTES}")
    try:
        key.verify(signature, digest.encode("ascii"))
    except InvalidSignature:
        raise SignatureError(f"bad signature: not a signature of {digest} by the key in {public_key}") from None


def write_key_pair(directory: str | Path) -> tuple[Path, Path]:
    """Make a new Ed25519 key pair in `directory`: (private key PEM, mode 0600; public key PEM).
    Existing key files are never overwritten."""
    ed25519 = _ed25519()
    from cryptography.hazmat.primitives import serialization

    directory = Path(directory)
    private, public = directory / PRIVATE_KEY, directory / PUBLIC_KEY
    for path in (private, public):
        if path.exists():
            raise SignatureError(f"{path}: already exists; not overwriting a key")
    directory.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public
