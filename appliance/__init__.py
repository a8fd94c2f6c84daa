"""An identity-aware, Kafka-aware enforcement point between workloads and their brokers.

eBPF programs at the cgroup layer steer enrolled workloads' broker-bound
connections into this package's proxy, which attributes each connection to a
workload identity recovered from the kernel, authenticates upstream with the
appliance's own credentials, and records every session and request in a SQLite
audit database.
"""
