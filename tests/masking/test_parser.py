"""The policy file's `masking:` section: the documented example, and every mistake named by file, line and key."""

from pathlib import Path

import pytest

from appliance.masking import Action, Binary, Detector, Direction, Invalid
from appliance.policy.model import Pattern
from appliance.policy.parser import PolicyError, load_policy, parse_policy

DOCS = Path(__file__).resolve().parents[2] / "docs" / "masking.md"

GOOD = """\
version: 1
rules:
  - name: pay
    identities: [billing]
    operations: [produce, consume, unmask]
    topics: ["prefix:payments"]
masking:
  - name: cards                 # required, unique
    topics: ["prefix:payments"]
    on: [produce]
    fields: ["$.card.number"]
    detectors: [card, ssn, email, iban, token]
    headers: [Authorization]
    action: redact
    invalid: reject
    binary: leave
  - name: mail
    topics: [crm, "glob:crm-*"]
    on: [fetch]
    detectors: [email]
    action: {keep_last: 4}
"""


def parse(text: str):
    return parse_policy(text, source="p.yaml")


def test_the_example_parses_to_rules():
    policy = parse(GOOD)
    assert [r.name for r in policy.rules] == ["pay"]
    cards, mail = policy.masking.rules
    assert cards.topics == (Pattern.prefix("payments"),) and cards.on == {Direction.PRODUCE}
    assert [str(p) for p in cards.fields] == ["$.card.number"] and cards.detectors == set(Detector)
    assert cards.headers == {"authorization"} and cards.action == Action.redact()
    assert cards.invalid == Invalid.REJECT and cards.binary == Binary.LEAVE and cards.line == 8
    assert mail.on == {Direction.FETCH} and mail.action == Action.keep_last(4)
    assert mail.invalid == Invalid.MASK_WHOLE  # the default where a record cannot be refused
    assert policy.masking.for_topic("payments.eu", "produce") is not None
    assert policy.masking.for_topic("crm-eu", "fetch") is not None


def test_a_policy_without_masking_has_an_empty_one():
    policy = parse("version: 1\n")
    assert not policy.masking and policy.masking.for_topic("x", "produce") is None
    assert not parse("version: 1\nmasking:\n").masking


def test_every_masking_example_in_the_docs_parses(tmp_path):
    text = DOCS.read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    checked = 0
    for block in blocks:
        if block.startswith("version: 1"):
            path = tmp_path / "policy.yaml"
            path.write_text(block)
            assert load_policy(path).masking
            checked += 1
    assert checked >= 1


MASK = """\
version: 1
masking:
  - name: ok
    topics: [t]
    on: [produce]
    detectors: [card]
  - name: m
{body}"""


@pytest.mark.parametrize("body, message", [
    ("    topic: [t]\n",
     "p.yaml line 8: key 'topic' of masking rule 'm' is not a masking rule setting (did you mean 'topics'?); "
     "valid keys are: name, topics, on, fields, detectors, headers, action, invalid, binary"),
    ("    topics: [t]\n    on: [produce]\n",
     "p.yaml line 7: masking rule 'm' finds nothing to mask: give at least one of the keys fields (JSON paths), "
     "detectors (card, ssn, email, iban, token) or headers (header keys), non-empty"),
    ("    on: [produce]\n    detectors: [card]\n",
     "p.yaml line 7: masking rule 'm' names no topic: give key 'topics'"),
    ("    topics: [t]\n    detectors: [card]\n",
     "p.yaml line 7: masking rule 'm' says neither when to mask: give key 'on' with produce"),
    ("    topics: [t]\n    on: [consume]\n    detectors: [card]\n",
     "p.yaml line 9: key 'on' of masking rule 'm' item 1 must be one of produce, fetch, not 'consume'"),
    ("    topics: [t]\n    on: produce\n    detectors: [card]\n",
     "p.yaml line 9: key 'on' of masking rule 'm' must be a list, e.g. on: [produce]"),
    ("    topics: [orders-*]\n    on: [produce]\n    detectors: [card]\n",
     "p.yaml line 8: key 'topics' of masking rule 'm' item 1 'orders-*' contains '*' but a bare name is matched "
     "exactly; write 'glob:orders-*' for a glob, or 'prefix:orders-' for a prefix"),
    ("    topics: [t]\n    on: [produce]\n    detectors: [cards]\n",
     "p.yaml line 10: key 'detectors' of masking rule 'm' item 1 must be one of card, ssn, email, iban, token, "
     "not 'cards' (did you mean 'card'?)"),
    ("    topics: [t]\n    on: [produce]\n    fields: [card.number]\n",
     "p.yaml line 10: key 'fields' of masking rule 'm' item 1 'card.number' does not start with '$'"),
    ("    topics: [t]\n    on: [produce]\n    fields: ['$.items[x]']\n",
     "p.yaml line 10: key 'fields' of masking rule 'm' item 1 '$.items[x]': cannot read '[x]'"),
    ("    topics: [t]\n    on: [produce]\n    detectors: [card]\n    action: redcat\n",
     "p.yaml line 11: key 'action' of masking rule 'm' must be redact, hash, remove or {keep_last: N}, not "
     "'redcat' (did you mean 'redact'?)"),
    ("    topics: [t]\n    on: [produce]\n    detectors: [card]\n    action: keep_last\n",
     "p.yaml line 11: key 'action' of masking rule 'm' keep_last needs the number of characters to keep: write "
     "action: {keep_last: 4}"),
    ("    topics: [t]\n    on: [produce]\n    detectors: [card]\n    action: {keep_last: -1}\n",
     "p.yaml line 11: key 'keep_last' of masking rule 'm' must be how many characters to keep, a whole number of "
     "0 or more, not '-1'"),
    ("    topics: [t]\n    on: [produce]\n    detectors: [card]\n    action: {keep_first: 4}\n",
     "p.yaml line 11: key 'keep_first' of masking rule 'm' is not an action with a setting (only keep_last has "
     "one) (did you mean 'keep_last'?)"),
    ("    topics: [t]\n    on: [produce]\n    detectors: [card]\n    action: remove\n",
     "p.yaml line 11: key 'action' of masking rule 'm' is remove, which deletes JSON fields and headers, but the "
     "rule has detectors"),
    ("    topics: [t]\n    on: [produce]\n    fields: [$.a, $]\n    action: remove\n",
     "p.yaml line 10: key 'fields' of masking rule 'm' is '$', the whole value, which remove cannot delete"),
    ("    topics: [t]\n    on: [fetch]\n    detectors: [card]\n    invalid: reject\n",
     "p.yaml line 11: key 'invalid' of masking rule 'm' is reject, but the rule applies only on fetch, where a "
     "stored record cannot be refused: write invalid: mask-whole"),
    ("    topics: [t]\n    on: [produce]\n    detectors: [card]\n    invalid: mask\n",
     "p.yaml line 11: key 'invalid' of masking rule 'm' must be reject or mask-whole, not 'mask'"),
    ("    topics: [t]\n    on: [produce]\n    detectors: [card]\n    binary: keep\n",
     "p.yaml line 11: key 'binary' of masking rule 'm' must be leave or drop, not 'keep'"),
    ("    topics: [t]\n    on: [produce]\n    headers: [{a: b}]\n",
     "p.yaml line 10: key 'headers' of masking rule 'm' item 1 must be a header key, not a mapping"),
])
def test_rule_mistakes(body, message):
    with pytest.raises(PolicyError) as caught:
        parse(MASK.format(body=body))
    assert message in str(caught.value)


@pytest.mark.parametrize("text, message", [
    ("version: 1\nmasking: {name: x}\n", "p.yaml line 2: key 'masking' must be a list, e.g. masking: [{name: cards"),
    ("version: 1\nmasking: [cards]\n",
     "p.yaml line 2: key 'masking' item 1 must be a mapping with the keys name, topics, on, fields"),
    ("version: 1\nmasking:\n  - topics: [t]\n",
     "p.yaml line 3: key 'name' is missing from masking rule 1; every masking rule needs a unique name"),
    ("version: 1\nmasking:\n  - name: a\n    topics: [t]\n    on: [fetch]\n    headers: [x]\n"
     "  - name: a\n    topics: [t]\n    on: [fetch]\n    headers: [x]\n",
     "p.yaml line 7: key 'name' of masking rule 2 'a' is already the name of the masking rule at line 3; masking "
     "rule names must be unique"),
    ("version: 1\nmaskng: []\n", "p.yaml line 2: key 'maskng' is not a policy setting (did you mean 'masking'?)"),
])
def test_section_mistakes(text, message):
    with pytest.raises(PolicyError) as caught:
        parse(text)
    assert message in str(caught.value)
