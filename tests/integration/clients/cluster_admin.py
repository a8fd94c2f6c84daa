"""Straight to a cluster's brokers with the appliance's credentials (run it from an exempt cgroup).

Usage: cluster_admin.py BOOTSTRAP MECH:USER:PASS create TOPIC PARTITIONS REPLICAS
       cluster_admin.py BOOTSTRAP MECH:USER:PASS leaders TOPIC

Prints {"partition": leader node id, ...} (-1: no leader now) after either.
"""

import json
import sys

from confluent_kafka.admin import AdminClient, NewTopic

bootstrap, sasl, mode, topic = sys.argv[1:5]
mech, user, password = sasl.split(":", 2)
admin = AdminClient({"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT",
                     "sasl.mechanism": mech, "sasl.username": user, "sasl.password": password})
if mode == "create":
    partitions, replicas = int(sys.argv[5]), int(sys.argv[6])
    for future in admin.create_topics([NewTopic(topic, num_partitions=partitions,
                                                replication_factor=replicas)]).values():
        future.result(30)
metadata = admin.list_topics(topic, timeout=15).topics.get(topic)
print(json.dumps({str(p): m.leader for p, m in (metadata.partitions.items() if metadata else ())}))
