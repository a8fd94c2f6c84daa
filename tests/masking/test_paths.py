"""JSON paths: the written forms, what they select, removal, and the errors."""

import pytest

from appliance.masking.paths import REMOVE, JsonPath, PathError


def doc():
    return {"card": {"number": "4111", "exp": "12/29"}, "items": [{"pan": "1"}, {"pan": "2"}, {"sku": "x"}],
            "odd key": {"e": 1}, "nested": {"deep": {"email": "a@b.c"}, "list": [{"email": "d@e.f"}]},
            "email": "top@x.y"}


def masked(path: str, replace=lambda v: "*"):
    d = doc()
    d, n = JsonPath.parse(path).apply(d, replace)
    return d, n


def test_member_index_wildcard_quoted_and_deep():
    d, n = masked("$.card.number")
    assert d["card"] == {"number": "*", "exp": "12/29"} and n == 1
    d, n = masked("$.items[*].pan")
    assert d["items"] == [{"pan": "*"}, {"pan": "*"}, {"sku": "x"}] and n == 2
    d, n = masked("$.items[-1].sku")
    assert d["items"][2] == {"sku": "*"} and n == 1
    d, n = masked("$['odd key'].e")
    assert d["odd key"] == {"e": "*"}
    d, n = masked('$["card"].*')
    assert d["card"] == {"number": "*", "exp": "*"} and n == 2
    d, n = masked("$..email")
    assert (d["email"], d["nested"]["deep"]["email"], d["nested"]["list"][0]["email"]) == ("*", "*", "*") and n == 3
    d, n = masked("$")
    assert d == "*" and n == 1


def test_paths_that_select_nothing_change_nothing():
    for path in ("$.card.cvv", "$.items[7].pan", "$.card[0]", "$.card.number.x", "$.email[*]"):
        d, n = masked(path)
        assert d == doc() and n == 0


def test_returning_the_value_itself_is_not_counted():
    d, n = masked("$.card.number", replace=lambda v: v)
    assert n == 0 and d == doc()


def test_remove_members_and_elements():
    d, n = masked("$.card.number", replace=lambda v: REMOVE)
    assert d["card"] == {"exp": "12/29"} and n == 1
    d, n = masked("$.items[*]", replace=lambda v: REMOVE)
    assert d["items"] == [] and n == 3
    d, n = masked("$.items[-1]", replace=lambda v: REMOVE)
    assert len(d["items"]) == 2


@pytest.mark.parametrize("path, message", [
    ("card.number", "does not start with '$'"),
    ("$.", "'.' at character 2 must be followed by a member name"),
    ("$.card..", "'..' at character 7 must be followed by a member name"),
    ("$.items[x]", "cannot read '[x]' (character 8)"),
    ("$.a b", "cannot read ' b'"),
    ("$[1.5]", "cannot read '[1.5]'"),
])
def test_errors_say_what_to_write(path, message):
    with pytest.raises(PathError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")
                       .replace("(", r"\(").replace(")", r"\)").replace("$", r"\$")):
        JsonPath.parse(path)


def test_quoted_names_unescape():
    assert JsonPath.parse(r"$['it\'s']").steps == (("key", "it's"),)
