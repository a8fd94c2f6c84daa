"""Workloads' command lines as the audit keeps them: secrets replaced (pure)."""

import pytest

from appliance.identity.command_line import redacted

SECRET = "s3cr3t/Value+x="
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJvcmRlcnMifQ.c2lnbmF0dXJl"


@pytest.mark.parametrize("argv, shown", [
    (["kcat", "-b", "10.0.0.5:9092", "-X", f"sasl.password={SECRET}", "-X", "sasl.username=orders"],
     "kcat -b 10.0.0.5:9092 -X sasl.password=*** -X sasl.username=orders"),
    (["python", "client.py", "--oauth", f"ledger:{SECRET}@http://127.0.0.1:18080/realms/appliance/token"],
     "python client.py --oauth ledger:***@http://127.0.0.1:18080/realms/appliance/token"),
    (["app", "--client-secret", SECRET, "--topic", "orders"], "app --client-secret *** --topic orders"),
    (["app", f"--password={SECRET}", "--sasl-password", SECRET], "app --password=*** --sasl-password ***"),
    (["app", "--token", JWT], "app --token ***"),
    (["curl", "-H", f"Authorization: Bearer {JWT}"], "curl -H Authorization: Bearer ***"),
    (["app", f"https://orders:{SECRET}@broker.example:9093"], "app https://orders:***@broker.example:9093"),
    (["java", "-cp", "x.jar", "Producer", "--producer-property",
      f'sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="u" password="{SECRET}";'],
     "java -cp x.jar Producer --producer-property sasl.jaas.config=***"),
    (["app", f"--config=ssl.key.password={SECRET},acks=all"], "app --config=ssl.key.password=***"),  # to the space
    (["app", "--api-key", SECRET, f"--API_KEY={SECRET}"], "app --api-key *** --API_KEY=***"),
])
def test_secrets_on_a_command_line_are_replaced_and_the_rest_is_kept(argv, shown):
    assert redacted(argv) == shown
    assert SECRET not in redacted(argv) and JWT not in redacted(argv)


@pytest.mark.parametrize("argv", [
    ["kcat", "-b", "127.0.0.1:19092", "-t", "orders", "-P", "-l", "orders.txt"],
    ["java", "-Xmx512m", "-jar", "app.jar", "--bootstrap-server", "[::1]:19093", "--group", "payments"],
    ["python", "-m", "worker", "--tokens-per-second=5"],  # a name with "token" in it, no value to hide? it has one
])
def test_a_command_line_without_secrets_is_kept_as_it_was(argv):
    if argv[-1].startswith("--tokens-per-second"):
        assert redacted(argv) == "python -m worker --tokens-per-second=***"  # when in doubt, hidden
    else:
        assert redacted(argv) == " ".join(argv)


def test_a_trailing_secret_option_without_its_value_and_odd_arguments_do_not_fail():
    assert redacted(["app", "--password"]) == "app --password"
    assert redacted([]) == ""
    assert redacted(["", "=", "a=b", ":@", "--=x"]) == " = a=b :@ --=x"


from hypothesis import given, strategies as st  # noqa: E402

_WORD = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@given(st.lists(_WORD, max_size=8), st.text(st.characters(whitelist_categories=("L", "N", "P", "S")),
                                            min_size=8, max_size=40))
def test_any_command_line_is_shown_and_a_password_option_never_shows_its_value(argv, secret):
    assert isinstance(redacted(argv), str)
    for shown in (redacted([*argv, "--password", secret]), redacted([*argv, f"--db-password={secret}"]),
                  redacted([*argv, "-X", f"sasl.password={secret}"])):
        assert shown.endswith(("--password ***", "--db-password=***", "sasl.password=***")), shown
