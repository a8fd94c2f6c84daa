"""Create topics straight at the broker (from an exempt cgroup, with the appliance's SASL credentials)
and return once the broker serves metadata for every one of them.

Usage: create_topics.py BOOTSTRAP MECH:USER:PASS TOPIC...

A client whose first metadata misses a new topic's partitions may sit unassigned for minutes
(kafka-python re-reads metadata every five), so a test starts no client before this returns.
"""

import sys
import time

from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, sasl, names = sys.argv[1], sys.argv[2], sys.argv[3:]
mech, user, password = sasl.split(":", 2)
admin = AdminClient({"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT",
                     "sasl.mechanism": mech, "sasl.username": user, "sasl.password": password})
for future in admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=1) for t in names]).values():
    future.result(20)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    md = admin.list_topics(timeout=5).topics
    if all(t in md and md[t].partitions and not md[t].error for t in names):
        sys.exit(0)
    time.sleep(0.2)
sys.exit(f"create_topics.py: not all of {names} in the broker's metadata after 20 s")
