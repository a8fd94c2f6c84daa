"""Signed checkpoints of the audit chain, in the C2SP tlog-checkpoint signed-note format.

A checkpoint's note text is

    <origin>
    <tree size: entries in the chain, decimal>
    <base64 root hash: the chain's head hash at that size>
    time <UTC time it was made, ISO 8601>

then a blank line and one signature line per signer,
`— <key name> <base64(key hash || Ed25519 signature over the text)>`, where the
key hash is the first 4 bytes of SHA-256(key name || 0x0A || 0x01 || public key)
(https://c2sp.org/signed-note, https://c2sp.org/tlog-checkpoint). The root hash
is the head of a hash chain (`chain`), not a Merkle tree root: it commits to
every entry up to the size, but proves inclusion only by replaying the chain.

The signing key is 32 random bytes (the Ed25519 seed) in
`<state_dir>/audit-signing.key`, root-only, made at the first start. Its
verifier key, `<name>+<key hash, 8 hex digits>+<base64(0x01 || public key)>`,
is written beside it as `audit-signing.vkey`; it names the key and is what to
publish with the checkpoints.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.secret_file import load_or_create

ED25519 = 0x01
SIGNATURE_PREFIX = "\u2014 "  # an em dash and a space
ORIGIN_SUFFIX = "/appliance-audit"


class CheckpointError(ValueError):
    """A checkpoint or verifier key that cannot be used; the message names the file and the fault."""


def _key_hash(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public).digest()[:4]


def _check_name(name: str, where: str) -> None:
    if not name or any(c.isspace() for c in name) or "+" in name:
        raise CheckpointError(f"{where}: key name {name!r} must be non-empty, with no spaces and no '+'")


@dataclass(frozen=True, slots=True)
class Verifier:
    """A public key and its name: what checks a checkpoint's signature."""

    name: str
    public: bytes

    @property
    def key_hash(self) -> bytes:
        return _key_hash(self.name, self.public)

    @property
    def vkey(self) -> str:
        """The signed-note verifier key: name+hash+base64(0x01 || public key)."""
        return f"{self.name}+{self.key_hash.hex()}+{base64.b64encode(bytes([ED25519]) + self.public).decode()}"

    @classmethod
    def parse(cls, text: str, where: str) -> "Verifier":
        parts = text.strip().split("+", 2)
        if len(parts) != 3:
            raise CheckpointError(f"{where}: a verifier key is name+hash+key (three parts joined by '+'), "
                                  f"got {len(parts)} part(s)")
        name, key_hash, key = parts
        _check_name(name, where)
        try:
            data = base64.b64decode(key, validate=True)
        except binascii.Error:
            raise CheckpointError(f"{where}: the verifier key's key part is not base64") from None
        if len(data) != 33 or data[0] != ED25519:
            raise CheckpointError(f"{where}: the verifier key is not an Ed25519 key (0x01 and 32 bytes)")
        verifier = cls(name, data[1:])
        if key_hash != verifier.key_hash.hex():
            raise CheckpointError(f"{where}: the verifier key's hash {key_hash} does not match its name and key "
                                  f"(expected {verifier.key_hash.hex()})")
        return verifier


@dataclass(frozen=True, slots=True)
class SigningKey:
    name: str
    private: Ed25519PrivateKey

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    @classmethod
    def from_seed(cls, name: str, seed: bytes) -> "SigningKey":
        return cls(name, Ed25519PrivateKey.from_private_bytes(seed))


def vkey_path(key_path: Path) -> Path:
    return Path(key_path).with_suffix(".vkey")


def load_or_create_signing_key(path: Path, name: str | None = None) -> SigningKey:
    """The key in `path` (created root-only with a random seed if missing), named by the .vkey beside it.

    The name is fixed when the key is made (`<host name>/appliance-audit` unless
    given), and kept in the .vkey file, which is written again if missing.
    """
    path = Path(path)
    seed = load_or_create(path, 32, "the audit signing key",
                          "restore it from a backup, or delete it (and its .vkey) to make a new key; checkpoints "
                          "signed by the old one then verify only against its published verifier key")
    public_file = vkey_path(path)
    try:
        text = public_file.read_text()
    except FileNotFoundError:
        key = SigningKey.from_seed(name or socket.gethostname() + ORIGIN_SUFFIX, seed)
        _check_name(key.name, str(public_file))
        tmp = public_file.with_name(public_file.name + ".tmp")
        tmp.write_text(key.verifier.vkey + "\n")
        os.chmod(tmp, 0o644)
        tmp.replace(public_file)
        return key
    stored = Verifier.parse(text, str(public_file))
    key = SigningKey.from_seed(stored.name, seed)
    if key.verifier != stored:
        raise CheckpointError(f"{public_file}: this verifier key is not the public half of {path}; delete it to "
                              "write it again from the key")
    return key


@dataclass(frozen=True, slots=True)
class Checkpoint:
    origin: str
    size: int
    root_hash: bytes
    at: float | None = None  # the time extension line

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root_hash).decode()]
        if self.at is not None:
            lines.append("time " + datetime.fromtimestamp(int(self.at), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        return "\n".join(lines) + "\n"


def sign(checkpoint: Checkpoint, key: SigningKey) -> str:
    """The signed note: the checkpoint's text, a blank line, and the key's signature line."""
    text = checkpoint.text()
    signature = key.private.sign(text.encode())
    line = f"{SIGNATURE_PREFIX}{key.name} {base64.b64encode(key.verifier.key_hash + signature).decode()}\n"
    return f"{text}\n{line}"


def make(size: int, root_hash: bytes, key: SigningKey, at: float | None = None) -> tuple[Checkpoint, str]:
    checkpoint = Checkpoint(key.name, size, root_hash, time.time() if at is None else at)
    return checkpoint, sign(checkpoint, key)


def parse(note: str, where: str) -> tuple[Checkpoint, str, list[tuple[str, bytes, bytes]]]:
    """(checkpoint, its signed text, [(key name, key hash, signature)]) of a note, or CheckpointError naming the fault."""
    text, sep, signatures = note.partition("\n\n")
    if not sep:
        raise CheckpointError(f"{where}: not a signed note: no blank line between the checkpoint and its signatures")
    text += "\n"
    lines = text.split("\n")[:-1]
    if len(lines) < 3:
        raise CheckpointError(f"{where}: a checkpoint has at least three lines (origin, tree size, root hash), "
                              f"this one {len(lines)}")
    origin, size_line, root_line, *extensions = lines
    if not size_line.isdigit() or (size_line.startswith("0") and size_line != "0"):
        raise CheckpointError(f"{where} line 2: the tree size must be a decimal number, got {size_line!r}")
    try:
        root_hash = base64.b64decode(root_line, validate=True)
    except binascii.Error:
        raise CheckpointError(f"{where} line 3: the root hash is not base64: {root_line!r}") from None
    if len(root_hash) != 32:
        raise CheckpointError(f"{where} line 3: the root hash holds {len(root_hash)} bytes, not 32 (SHA-256)")
    at = None
    for number, line in enumerate(extensions, start=4):
        if line.startswith("time "):
            try:
                at = datetime.strptime(line[5:], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
            except ValueError:
                raise CheckpointError(f"{where} line {number}: the time is not YYYY-MM-DDTHH:MM:SSZ: {line[5:]!r}") \
                    from None
    parsed = []
    sig_lines = signatures.split("\n")
    if sig_lines[-1] != "":
        raise CheckpointError(f"{where}: the note does not end with a newline")
    for number, line in enumerate(sig_lines[:-1], start=len(lines) + 2):
        if not line.startswith(SIGNATURE_PREFIX):
            raise CheckpointError(f"{where} line {number}: a signature line starts with '\u2014 ', got {line[:20]!r}")
        name, _, blob = line[len(SIGNATURE_PREFIX):].rpartition(" ")
        try:
            data = base64.b64decode(blob, validate=True)
        except binascii.Error:
            raise CheckpointError(f"{where} line {number}: the signature is not base64") from None
        if not name or len(data) < 5:
            raise CheckpointError(f"{where} line {number}: a signature line is '\u2014 NAME BASE64(hash || signature)'")
        parsed.append((name, data[:4], data[4:]))
    if not parsed:
        raise CheckpointError(f"{where}: the note has no signature line")
    return Checkpoint(origin, int(size_line), root_hash, at), text, parsed


def verify(note: str, verifier: Verifier, where: str) -> Checkpoint:
    """The checkpoint of a note signed by `verifier`, or CheckpointError saying why not."""
    checkpoint, text, signatures = parse(note, where)
    ours = [(h, s) for name, h, s in signatures if name == verifier.name and h == verifier.key_hash]
    if not ours:
        names = ", ".join(f"{name} ({h.hex()})" for name, h, _ in signatures)
        raise CheckpointError(f"{where}: no signature by the key {verifier.name} ({verifier.key_hash.hex()}); "
                              f"signed by {names}")
    try:
        Ed25519PublicKey.from_public_bytes(verifier.public).verify(ours[0][1], text.encode())
    except InvalidSignature:
        raise CheckpointError(f"{where}: the signature by {verifier.name} does not verify: the checkpoint was "
                              "changed after signing, or signed by another key under this name") from None
    if checkpoint.origin != verifier.name:
        raise CheckpointError(f"{where}: the checkpoint's origin {checkpoint.origin!r} is not the key's name "
                              f"{verifier.name!r}")
    return checkpoint
