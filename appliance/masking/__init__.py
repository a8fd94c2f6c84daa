"""Masking: card numbers, national ids, e-mail addresses, IBANs and tokens kept out of topics and consumers.

Pure code, no I/O but the secret file: the proxy owns sockets and calls in.

- `rules`: `MaskRule`, `MaskingPolicy` (the policy's `masking:` section,
  carried on `Policy.masking`), `RecordMasker` (one topic, one direction:
  produce or fetch), `MaskResult`, and `MaskingRejected`.
- `batches.rewrite_records`: a Produce or Fetch partition's record batches
  rewritten record by record, every codec, header field and CRC kept right,
  and the very same bytes object back when nothing was masked.
- `detectors` (card, ssn, email, iban, token), `paths` (JSON paths),
  `actions` (redact, keep_last, hash, remove) and `values` (one value, one rule).
- `secret.load_or_create_secret`: the HMAC key `hash` uses.
- `excerpts`: what an audit record excerpt may hold (every rule covering the
  topic, both directions) and the cheap part of taking one on the proxy's path.

The policy language and the choices made (separators, binary values, invalid
JSON, what a fetch sees) are in docs/masking.md.

`rewrite_records` is imported on first use: it brings in kafka-python, whose
package import costs about 50 ms, and every policy load imports this package.
"""

from appliance.masking.actions import Action, ActionKind
from appliance.masking.detectors import Detector
from appliance.masking.paths import JsonPath, PathError
from appliance.masking.rules import (
    Binary,
    Direction,
    Invalid,
    MaskingError,
    MaskingPolicy,
    MaskingRejected,
    MaskResult,
    MaskRule,
    RecordMasker,
)
from appliance.masking.secret import SecretError, load_or_create_secret

__all__ = [
    "Action", "ActionKind", "Binary", "Detector", "Direction", "Invalid", "JsonPath", "MaskResult", "MaskRule",
    "MaskingError", "MaskingPolicy", "MaskingRejected", "PathError", "RecordMasker", "SecretError",
    "load_or_create_secret", "rewrite_records",
]


def __getattr__(name: str):
    if name == "rewrite_records":
        from appliance.masking.batches import rewrite_records
        return rewrite_records
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
