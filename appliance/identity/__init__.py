"""Workload identities: cgroups, enrolment records, and the processes behind a connection."""
