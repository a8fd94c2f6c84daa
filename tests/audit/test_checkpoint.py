"""Signed checkpoints: the C2SP signed-note form, the key file, and clear errors for bad notes and keys."""

import base64
import hashlib
import stat
from pathlib import Path

import pytest

from appliance.audit import checkpoint as cp


def key(tmp_path, name="gw1/appliance-audit"):
    return cp.load_or_create_signing_key(tmp_path / "audit-signing.key", name)


def test_a_checkpoint_is_a_signed_note_with_the_key_hash_of_the_spec(tmp_path):
    signing = key(tmp_path)
    checkpoint, note = cp.make(4711, bytes(range(32)), signing, at=1_700_000_000)
    text, _, signature = note.partition("\n\n")
    assert text.split("\n") == ["gw1/appliance-audit", "4711", base64.b64encode(bytes(range(32))).decode(),
                                "time 2023-11-14T22:13:20Z"]
    assert signature.startswith("\u2014 gw1/appliance-audit ") and signature.endswith("\n")
    blob = base64.b64decode(signature.split(" ")[-1])
    public = signing.verifier.public
    assert blob[:4] == hashlib.sha256(b"gw1/appliance-audit\n\x01" + public).digest()[:4] and len(blob) == 68
    assert cp.verify(note, signing.verifier, "x.txt") == checkpoint
    name, key_hash, encoded = signing.verifier.vkey.split("+", 2)
    assert (name, key_hash, base64.b64decode(encoded)) == ("gw1/appliance-audit", blob[:4].hex(), b"\x01" + public)
    assert cp.Verifier.parse(signing.verifier.vkey, "v") == signing.verifier


def test_the_key_is_root_only_made_once_and_its_verifier_key_kept_beside_it(tmp_path):
    first = key(tmp_path)
    assert stat.S_IMODE((tmp_path / "audit-signing.key").stat().st_mode) == 0o600
    assert (tmp_path / "audit-signing.vkey").read_text() == first.verifier.vkey + "\n"
    assert key(tmp_path, name="ignored/now").verifier == first.verifier  # the name is fixed when it is made
    (tmp_path / "audit-signing.key").chmod(0o644)
    with pytest.raises(ValueError, match="audit-signing.key: the audit signing key has mode 0644"):
        key(tmp_path)


@pytest.mark.parametrize("mangle, fault", [
    (lambda n: n.replace("\n\n", "\n"), "x.txt: not a signed note: no blank line"),
    (lambda n: n.replace("\n4711\n", "\n04711\n"), "x.txt line 2: the tree size must be a decimal number"),
    (lambda n: n.replace("\n4711\n", "\n4712\n"), "x.txt: the signature by gw1/appliance-audit does not verify"),
    (lambda n: n.split("\n")[0] + "\n4711\nnot-base64!\n\n" + n.split("\n\n")[1], "x.txt line 3: the root hash is not base64"),
    (lambda n: n.replace("\u2014 ", "- "), "x.txt line 6: a signature line starts with"),
    (lambda n: n.replace("2023-11-14T22:13:20Z", "yesterday"), "x.txt line 4: the time is not"),
])
def test_a_malformed_or_changed_note_names_the_file_and_the_fault(tmp_path, mangle, fault):
    signing = key(tmp_path)
    _, note = cp.make(4711, bytes(32), signing, at=1_700_000_000)
    with pytest.raises(cp.CheckpointError, match=fault.replace("(", r"\(")):
        cp.verify(mangle(note), signing.verifier, "x.txt")


def test_a_note_signed_by_another_key_is_refused(tmp_path):
    ours = key(tmp_path / "a")
    forged = key(tmp_path / "b")
    _, note = cp.make(10, bytes(32), forged, at=1)
    with pytest.raises(cp.CheckpointError, match=r"no signature by the key gw1/appliance-audit \([0-9a-f]{8}\)"):
        cp.verify(note, ours.verifier, "x.txt")
    with pytest.raises(cp.CheckpointError, match="v: the verifier key's hash 00000000 does not match"):
        cp.Verifier.parse("gw1/appliance-audit+00000000+" + ours.verifier.vkey.split("+", 2)[2], "v")


def test_audit_key_makes_the_key_once_and_prints_the_verifier_key_to_record(tmp_path):
    import subprocess
    import sys

    (tmp_path / "appliance.yaml").write_text(f"state_dir: {tmp_path}\n")

    def key_command():
        return subprocess.run([sys.executable, "-m", "appliance", "--config", str(tmp_path / "appliance.yaml"),
                               "audit", "key"], capture_output=True, text=True, timeout=60,
                              cwd=Path(__file__).resolve().parents[2])

    first, second = key_command(), key_command()
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    vkey = (tmp_path / "audit-signing.vkey").read_text().strip()
    assert first.stdout.strip() == second.stdout.strip() == vkey
    assert "made" in first.stderr and "kept" in second.stderr
    assert stat.S_IMODE((tmp_path / "audit-signing.key").stat().st_mode) == 0o600
    (tmp_path / "audit-signing.key").write_bytes(b"short")
    broken = key_command()
    assert broken.returncode != 0 and "audit-signing.key" in broken.stderr, broken.stderr
