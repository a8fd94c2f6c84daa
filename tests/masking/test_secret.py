"""The masking secret file: created once with mode 0600, read back, refused when others could read it."""

import os
import stat

import pytest

from appliance.masking.secret import SecretError, load_or_create_secret


def test_created_once_then_read_back(tmp_path):
    path = tmp_path / "state" / "masking.key"
    first = load_or_create_secret(path)
    assert len(first) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_secret(path) == first


def test_refuses_a_file_others_can_read(tmp_path):
    path = tmp_path / "masking.key"
    load_or_create_secret(path)
    os.chmod(path, 0o640)
    with pytest.raises(SecretError, match=r"masking.key: the masking secret has mode 0640, which lets its group or "
                                          r"others read or change it; run 'chmod 600 "):
        load_or_create_secret(path)


def test_refuses_a_secret_of_the_wrong_size_and_a_non_file(tmp_path):
    path = tmp_path / "masking.key"
    path.write_bytes(b"short")
    path.chmod(0o600)
    with pytest.raises(SecretError, match="holds 5 bytes, not 32"):
        load_or_create_secret(path)
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(SecretError, match="must be a regular file"):
        load_or_create_secret(tmp_path / "dir")
