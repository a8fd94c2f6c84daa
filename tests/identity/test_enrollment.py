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
