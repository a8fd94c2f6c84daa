"""The embedded Kafka broker the appliance runs for demos and tests, and the upstream credentials file.

    embedded     the node's life cycle: start (format on first use), status, stop, Java tools
    properties   what its files say: layout, server.properties (listeners and why), log4j2
    storage      one-time set-up of the data directory: users' credentials, KRaft format
    jvm          java, the jar cache, the server's and tools' command lines
    probe        is a listener answering? one ApiVersions round-trip
    netns        running a function inside a named network namespace
    credentials  the upstream credentials file (the proxy reads it for real clusters too)
"""

from appliance.broker.credentials import CredentialsError, UpstreamCredentials, load_credentials
from appliance.broker.embedded import BrokerError, BrokerStatus, EmbeddedBroker

__all__ = [
    "BrokerError",
    "BrokerStatus",
    "CredentialsError",
    "EmbeddedBroker",
    "UpstreamCredentials",
    "load_credentials",
]
