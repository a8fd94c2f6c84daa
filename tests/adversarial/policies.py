"""Policy swaps for adversarial tests: the integration policy plus rules, reloaded and waited for."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.integration.conftest import POLICY, audit, eventually

BASE = Path(__file__).resolve().parents[1] / "integration" / "policy.yaml"


def apply(config_path, extra_rules: str, masking: str = "") -> str:
    """Write the base policy plus `extra_rules` (and a masking section); wait until serve has loaded it."""
    text = BASE.read_text() + extra_rules + (("masking:\n" + masking) if masking else "")
    before = len(audit(config_path, "events", "--kind", "policy-load"))
    tmp = POLICY.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(POLICY)
    eventually(lambda: len(audit(config_path, "events", "--kind", "policy-load")) > before, timeout=15,
               message="the test policy reloaded")
    return text


def restore(config_path) -> None:
    before = len(audit(config_path, "events", "--kind", "policy-load"))
    shutil.copy(BASE, POLICY)
    eventually(lambda: len(audit(config_path, "events", "--kind", "policy-load")) > before, timeout=15,
               message="the base policy reloaded")
