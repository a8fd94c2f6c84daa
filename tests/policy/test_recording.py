"""The policy file's `recording:` section: depths, bounds, first match, and every mistake named by file, line and key."""

import pytest

from appliance.policy.model import Pattern
from appliance.policy.parser import PolicyError, parse_policy
from appliance.policy.recording import Depth

GOOD = """\
version: 1
recording:
  - name: billing-quiet            # depth operations carves an exception out of the rule after it
    identities: [billing]
    topics: [payments.internal]
    depth: operations
  - name: billing-excerpts
    identities: [billing, "prefix:pay-"]
    topics: ["prefix:payments."]
    depth: excerpts
    value_bytes: 64
    records_per_request: 3
  - name: everyone
    identities: ["*"]
    topics: ["*"]
    depth: excerpts
"""


def parse(text: str):
    return parse_policy(text, source="p.yaml")


def test_the_example_parses_and_the_first_matching_rule_decides():
    recording = parse(GOOD).recording
    quiet, billing, everyone = recording.rules
    assert quiet.depth == Depth.OPERATIONS and quiet.line == 3
    assert billing.identities == (Pattern.exact("billing"), Pattern.prefix("pay-"))
    assert (billing.value_bytes, billing.records_per_request) == (64, 3)
    assert (everyone.value_bytes, everyone.records_per_request) == (256, 10)  # the defaults
    assert recording.for_topic("billing", "payments.internal") is None  # depth operations decided first
    assert recording.for_topic("billing", "payments.eu") is billing
    assert recording.for_topic("pay-7", "payments.eu") is billing
    assert recording.for_topic("orders", "anything") is everyone
    assert recording.excerpts_some_topic("orders")


def test_without_a_recording_section_every_session_is_recorded_at_depth_operations():
    policy = parse("version: 1\n")
    assert not policy.recording and policy.recording.for_topic("x", "y") is None
    assert not policy.recording.excerpts_some_topic("x")
    only_operations = parse("version: 1\nrecording:\n  - {name: a, identities: [x], topics: ['*']}\n").recording
    assert not only_operations and only_operations.for_topic("x", "t") is None


RULE = "version: 1\nrecording:\n  - name: r\n    identities: [x]\n    topics: [t]\n    depth: excerpts\n"


@pytest.mark.parametrize("extra, message", [
    ("    value_bytes: 0\n", "line 7: key 'value_bytes' of recording rule 'r' must be a whole number from 1 to 4096, not '0'"),
    ("    value_bytes: 4097\n", "key 'value_bytes' of recording rule 'r' must be a whole number from 1 to 4096, not '4097'"),
    ("    value_bytes: 12.5\n", "key 'value_bytes' of recording rule 'r' must be a whole number from 1 to 4096"),
    ("    value_bytes: lots\n", "key 'value_bytes' of recording rule 'r' must be a whole number from 1 to 4096, not 'lots'"),
    ("    value_bytes: true\n", "key 'value_bytes' of recording rule 'r' must be a whole number"),
    ("    records_per_request: 0\n", "key 'records_per_request' of recording rule 'r' must be a whole number from 1 to 100"),
    ("    records_per_request: 101\n", "key 'records_per_request' of recording rule 'r' must be a whole number from 1 to 100, not '101'"),
    ("    depths: excerpts\n", "key 'depths' of recording rule 'r' is not a recording rule setting (did you mean 'depth'?)"),
    ("    depth: full\n", "key 'depth' of recording rule 'r' appears twice"),
])
def test_a_bad_value_is_named_by_file_line_and_key(extra, message):
    with pytest.raises(PolicyError) as e:
        parse(RULE + extra)
    assert message in str(e.value) and str(e.value).startswith("p.yaml line ")


@pytest.mark.parametrize("text, message", [
    ("recording:\n  - name: r\n    identities: [x]\n    topics: [t]\n    depth: full\n",
     "p.yaml line 6: key 'depth' of recording rule 'r' must be operations or excerpts, not 'full'"),
    ("recording:\n  - name: r\n    topics: [t]\n", "p.yaml line 3: recording rule 'r' names no one"),
    ("recording:\n  - name: r\n    identities: [x]\n", "p.yaml line 3: recording rule 'r' names no topic"),
    ("recording:\n  - name: r\n    identities: [x]\n    topics: ['orders-*']\n",
     "p.yaml line 5: key 'topics' of recording rule 'r' item 1 'orders-*' contains '*'"),
    ("recording:\n  - name: r\n    identities: ['bad name!']\n    topics: [t]\n",
     "p.yaml line 4: key 'identities' of recording rule 'r' item 1 'bad name!' is not a valid identity"),
    ("recording:\n  - identities: [x]\n    topics: [t]\n", "p.yaml line 3: key 'name' is missing from recording rule 1"),
    ("recording:\n  - {name: r, identities: [x], topics: [t]}\n  - {name: r, identities: [y], topics: [t]}\n",
     "p.yaml line 4: key 'name' of recording rule 2 'r' is already the name of the recording rule at line 3"),
    ("recording:\n  - name: r\n    identities: [x]\n    topics: [t]\n    value_bytes: 64\n",
     "p.yaml line 6: key 'value_bytes' of recording rule 'r' is only for depth excerpts"),
    ("recording: {name: r}\n", "p.yaml line 2: key 'recording' must be a list"),
    ("recording:\n  - just-a-name\n", "p.yaml line 3: key 'recording' item 1 must be a mapping"),
])
def test_every_mistake_is_named(text, message):
    with pytest.raises(PolicyError) as e:
        parse("version: 1\n" + text)
    assert message in str(e.value)
