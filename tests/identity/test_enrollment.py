import pytest

from appliance.identity.enrollment import EnrollmentError, EnrollmentStore


def test_enrol_persist_unenrol(tmp_path):
    store = EnrollmentStore(tmp_path / "e.json")
    before = store.stamp()
    store.enroll(identity="orders", groups=("payments",), cgroup_path="/orders", cgroup_id=7)
    assert store.stamp() != before
    again = EnrollmentStore(tmp_path / "e.json").load()
    assert again["/orders"].identity == "orders" and again["/orders"].groups == ("payments",)
    store.unenroll("/orders")
    assert store.load() == {}
    assert oct((tmp_path / "e.json").stat().st_mode & 0o777) == "0o600"


def test_bad_names_and_unknown_cgroups_are_named(tmp_path):
    store = EnrollmentStore(tmp_path / "e.json")
    with pytest.raises(EnrollmentError, match="identity 'bad name' is not valid"):
        store.enroll(identity="bad name", groups=(), cgroup_path="/x", cgroup_id=1)
    with pytest.raises(EnrollmentError, match="group '' is not valid"):
        store.enroll(identity="ok", groups=("",), cgroup_path="/x", cgroup_id=1)
    with pytest.raises(EnrollmentError, match=r"cgroup '/nope' is not enrolled \(enrolled: none\)"):
        store.unenroll("/nope")


def test_damaged_file_is_named(tmp_path):
    (tmp_path / "e.json").write_text("{")
    with pytest.raises(EnrollmentError, match="e.json: enrolment file is damaged"):
        EnrollmentStore(tmp_path / "e.json").load()


def test_workload_tls_is_kept_across_a_reload_and_defaults_to_refuse(tmp_path):
    import json

    store = EnrollmentStore(tmp_path / "e.json")
    store.enroll(identity="payments", groups=(), cgroup_path="/payments", cgroup_id=8, workload_tls="terminate")
    store.enroll(identity="orders", groups=(), cgroup_path="/orders", cgroup_id=7)
    again = EnrollmentStore(tmp_path / "e.json").load()
    assert again["/payments"].workload_tls == "terminate" and again["/orders"].workload_tls == "refuse"
    # A file written before the field existed reads as refuse, the behaviour it had.
    data = json.loads((tmp_path / "e.json").read_text())
    for item in data["enrollments"]:
        del item["workload_tls"]
    (tmp_path / "e.json").write_text(json.dumps(data))
    assert {r.workload_tls for r in store.load().values()} == {"refuse"}


def test_an_unknown_workload_tls_mode_is_named_in_the_request_and_in_the_file(tmp_path):
    import json

    store = EnrollmentStore(tmp_path / "e.json")
    with pytest.raises(EnrollmentError, match="workload_tls 'offload' is not a workload TLS mode: use refuse or "
                                              "terminate"):
        store.enroll(identity="x", groups=(), cgroup_path="/x", cgroup_id=1, workload_tls="offload")
    store.enroll(identity="x", groups=(), cgroup_path="/x", cgroup_id=1)
    data = json.loads((tmp_path / "e.json").read_text())
    data["enrollments"][0]["workload_tls"] = "passthrough"
    (tmp_path / "e.json").write_text(json.dumps(data))
    with pytest.raises(EnrollmentError, match="e.json: enrolment file is damaged .*workload_tls 'passthrough'"):
        store.load()


@pytest.mark.parametrize("name", [
    "spiffe://example.org/ns/payments/sa/orders", "spiffe://example.org", "spiffe://td-1.example_x/a.b/c-d_e",
    "spiffe://example.org/" + "a" * 2000,
])
def test_a_spiffe_id_is_an_identity_but_not_a_group(name):
    from appliance.identity.enrollment import validate_group, validate_identity

    assert validate_identity(name) == name
    with pytest.raises(EnrollmentError, match="group .* is not valid: use 1-128 letters"):
        validate_group(name)


@pytest.mark.parametrize("name", [
    "spiffe://Example.org/sa",  # a trust domain is lowercase
    "spiffe://example.org/",  # no empty segment, no trailing "/"
    "spiffe://example.org//sa", "spiffe://example.org/./sa", "spiffe://example.org/ns/..",
    "spiffe://example.org/sa?x=1", "spiffe://example.org/sa#f", "spiffe://user@example.org/sa",
    "spiffe://example.org:8443/sa", "spiffe:///sa", "SPIFFE://example.org/sa", "spiffe://example.org/s a",
    "spiffe://example.org/sa\n", "orders\n",  # a trailing newline is not part of a valid name
    "spiffe://example.org/" + "a" * 2100,  # over the standard's 2048 bytes
])
def test_what_is_not_a_spiffe_id_is_refused_as_an_identity_naming_both_forms(name):
    from appliance.identity.enrollment import validate_identity

    with pytest.raises(EnrollmentError, match=r"is not valid: use 1-128 letters.*or a SPIFFE ID \(spiffe://"):
        validate_identity(name)
