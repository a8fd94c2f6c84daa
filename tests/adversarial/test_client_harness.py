"""The client-family harness reads each family's output the same way (pure: no clients run here)."""

from __future__ import annotations

import json

from tests.integration.clients.families import (
    FAMILIES, Result, _kcat_consume, _kcat_metadata, _says_ready, authorization_error_in, json_lines, last_json,
    printf_format,
)


def result(stdout: str = "", stderr: str = "", returncode: int = 0) -> Result:
    return Result(["client"], returncode, stdout, stderr, 1.0, False)


def test_ready_is_the_json_line_in_either_spacing():
    assert _says_ready('{"ready":true}\n') and _says_ready('{"ready": true}')
    assert not _says_ready('{"ready": false}') and not _says_ready("ready") and not _says_ready("{not json")


def test_the_summary_is_the_last_json_line_that_is_not_the_ready_line():
    out = 'log line\n{"ready":true}\n[WARN] {junk\n{"values": ["a"], "errors": []}\n'
    assert json_lines(out)[0] == {"ready": True}
    assert last_json(result(out)) == {"values": ["a"], "errors": []}


def test_kcat_produce_counts_retries_as_progress_and_errors_as_failures():
    parse = FAMILIES["kcat"].parse_produce
    retrying = "%4|...|GETPID|rdkafka#producer-1| [thrd:main]: Failed to acquire idempotence PID: retrying\n"
    assert parse(result(stderr=retrying), 3) == {"acked": 3, "failed": 0, "errors": []}
    refused = "% ERROR: Local: Topic authorization failed: fam-no-x\n"
    got = parse(result(stderr=refused, returncode=1), 3)
    assert got["acked"] == 0 and got["failed"] == 3
    assert authorization_error_in(FAMILIES["kcat"], got["errors"])


def test_kcat_consume_and_metadata():
    assert _kcat_consume(result("a\nb\n")) == {"values": ["a", "b"], "errors": []}
    assert _kcat_consume(result("", returncode=1))["errors"] == ["kcat exited 1"]
    assert _kcat_consume(result("a\n", returncode=124))["errors"] == ["timed out with 1 records"]
    listing = {"topics": [{"topic": "fam-ok-b", "partitions": []}, {"topic": "fam-ok-a", "error": "Broker: x"}]}
    assert _kcat_metadata(result(json.dumps(listing))) == {"topics": ["fam-ok-a", "fam-ok-b"],
                                                           "errors": ["fam-ok-a: Broker: x"]}


def test_value_formats_for_go_and_java():
    assert printf_format("tail-{i} 100% sure") == "tail-%d 100%% sure"


def test_each_family_names_kafkas_authorization_error_in_its_own_words():
    words = {"kcat": "Broker: Topic authorization failed",
             "confluent-kafka": "KafkaError{code=TOPIC_AUTHORIZATION_FAILED}",
             "kafka-python": "kafka.cluster: Topic t is not authorized for this client",
             "aiokafka": "TopicAuthorizationFailedError: [Error 29]",
             "franz-go": "t[0]: TOPIC_AUTHORIZATION_FAILED: Not authorized to access topics",
             "java-classic": "org.apache.kafka.common.errors.TopicAuthorizationException: Not authorized",
             "java-kip848": "org.apache.kafka.common.errors.GroupAuthorizationException: Not authorized"}
    for name, text in words.items():
        assert authorization_error_in(FAMILIES[name], [text]), name
        assert not authorization_error_in(FAMILIES[name], ["timed out with 0 of 1 records"]), name
