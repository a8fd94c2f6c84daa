"""The adversarial suite: attacks on the real appliance, on the integration fixtures (real kernel, broker, serve).

Every test here plays the attacker: a hostile enrolled workload, an
unprivileged local process, an unenrolled cgroup, a crashed appliance or a
hostile broker. Each failed on 753e6e2 and passes now. They are integration
tests (tests/integration/fixtures.py marks them): they need root, BPF and the
broker, and fail, never skip, without them. The fixtures come from the plugin
tests/conftest.py loads; none is defined or imported here, so the suite shares
one broker and one appliance.
"""
