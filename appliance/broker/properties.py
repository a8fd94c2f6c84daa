"""What the embedded broker's files say: the data-directory layout, server.properties,
the log4j2 configurations and client .properties for the Java tools.

Pure functions of the configuration and the secrets handed in; no processes,
no sockets. embedded.py writes what these return.

Listeners and why each exists:

    CLIENT     host4:port4          SASL_PLAINTEXT  SCRAM-SHA-512, SCRAM-SHA-256, PLAIN
    CLIENT6    [host6]:port6        SASL_PLAINTEXT  same (left out when host6 is empty)
    INTERNAL   127.0.0.1:ctrl+1     SASL_PLAINTEXT  PLAIN, user `node` (inter-broker)
    CONTROLLER 127.0.0.1:ctrl       SASL_PLAINTEXT  PLAIN, user `node` (KRaft)
    OAUTH      host4:oauth.port     SASL_PLAINTEXT  OAUTHBEARER (only with `oauth` configured)
    TLS        host4:tls.port       SASL_SSL        as CLIENT, over TLS (only with `tls` configured)
    TLS6       [host6]:tls.port6    SASL_SSL        same (left out when host6 is empty)
    MTLS       host4:tls.mtls_port  SASL_SSL        as TLS, and demands a client certificate from the CA
    CERT       host4:tls.cert_port  SSL             no SASL: the client certificate (from the CA) is the principal
    EXPIRED    host4:tls.expired_port SASL_SSL      as TLS, with a certificate that has expired
    NAMED      host4:tls.named_port SASL_SSL        as TLS, with a certificate that carries DNS names only
                                                    (as real clusters' brokers have): reached by name

The TLS listeners' certificates are PEM files under `<data_dir>/tls/`
(certificates.py makes them, embedded.py writes them): Kafka reads PEM
keystores and truststores itself (`ssl.keystore.type=PEM`). The CA persists
across starts, so an appliance's `upstream_tls.ca_file` pointing at it stays
valid; the leaf certificates are new at every start.

Only CLIENT, CLIENT6, OAUTH and the TLS listeners are for clients. OAUTH's tokens are checked by
Kafka's own `OAuthBearerValidatorCallbackHandler` against the provider's JWKS
(signature, `exp`/`nbf` with the configured clock skew, the exact issuer and
audience); the principal is the token's `principal_claim` (Keycloak's `azp`:
the client id), and the appliance's own (`oauth.principal`) is a super user.
Kafka 4 fetches a JWKS only from URLs listed in the JVM system property
`org.apache.kafka.sasl.oauthbearer.allowed.urls` (`jvm_system_properties`). The node's own traffic (the
transaction coordinator writing markers to partition leaders, which here is
itself, and the broker half talking to the controller half) goes over
listeners that are not client addresses, so steering never sees it and the
client listeners only ever carry the appliance's and tests' users.

INTERNAL and CONTROLLER use SASL PLAIN rather than PLAINTEXT: a PLAINTEXT
listener would make every local process `User:ANONYMOUS`, and that principal
has to be a super user for the node to work, so any process on the host could
connect and grant itself ACLs. PLAIN's users come from the JAAS line in
server.properties (mode 0600), not from the metadata log, so it works on the
controller, where SCRAM cannot (the controller would need the SCRAM
credentials from the metadata log it is still loading). The `node` password is
random and changes at every start; it is in no other file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.broker.credentials import UpstreamCredentials
from appliance.config import BrokerAddress, EmbeddedBrokerConfig

NODE_ID = 1
NODE_USER = "node"
APPLIANCE_USER = "appliance"
INTRUDER_USER = "intruder"
# The principal Kafka makes of the appliance's client certificate on the CERT listener (its subject DN),
# a super user like the SCRAM user `appliance`.
CLIENT_CERTIFICATE_CN = "appliance"
CERTIFICATE_PRINCIPAL = f"CN={CLIENT_CERTIFICATE_CN}"
CLIENT_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
_SCRAM_MODULE = "org.apache.kafka.common.security.scram.ScramLoginModule"
_PLAIN_MODULE = "org.apache.kafka.common.security.plain.PlainLoginModule"
_OAUTHBEARER_MODULE = "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule"
_OAUTHBEARER_VALIDATOR = "org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler"
# Kafka 4.1's default JWT validator (DefaultJwtValidator), made by that callback handler without a key
# resolver, falls back to ClientJwtValidator, which checks no signature, issuer or audience: a token signed
# by anyone was accepted. BrokerJwtValidator builds its resolver from the JWKS URL and checks all three.
_BROKER_JWT_VALIDATOR = "org.apache.kafka.common.security.oauthbearer.BrokerJwtValidator"
ALLOWED_URLS_PROPERTY = "org.apache.kafka.sasl.oauthbearer.allowed.urls"


@dataclass(frozen=True, slots=True)
class ClusterMember:
    """This node's place in a multi-node KRaft cluster, each node a broker and a controller (tests' clusters).

    Every node lists the same `voters` ((node id, host4) of each; all listen for the controller on the same
    `controller_port`), shares `cluster_id` (the storage format) and `node_password` (the `node` user of the
    controller and inter-broker listeners, which then listen on host4 so the nodes reach each other), and
    keeps internal topics at one replica per node. Without it the node is a cluster of one.
    """

    node_id: int
    voters: tuple[tuple[int, str], ...]
    cluster_id: str
    node_password: str

    @property
    def replicas(self) -> int:
        return len(self.voters)


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """Where everything of one embedded broker lives, all below its data directory."""

    data_dir: Path

    @property
    def server_properties(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def log4j2_config(self) -> Path:
        return self.log_dir / "log4j2.properties"

    @property
    def tools_log4j2_config(self) -> Path:
        return self.log_dir / "tools-log4j2.properties"

    @property
    def server_log(self) -> Path:
        return self.log_dir / "server.log"

    @property
    def console_log(self) -> Path:
        """The JVM's own stdout and stderr: start-up failures before log4j2 is up, crashes."""
        return self.log_dir / "console.log"

    @property
    def format_log(self) -> Path:
        return self.log_dir / "format.log"

    @property
    def kafka_data(self) -> Path:
        """Kafka's `log.dirs`: topic partitions and the KRaft metadata log."""
        return self.data_dir / "kafka"

    @property
    def meta_properties(self) -> Path:
        """Written by the storage tool; its presence means the directory is formatted."""
        return self.kafka_data / "meta.properties"

    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def appliance_credentials(self) -> Path:
        return self.data_dir / "appliance-credentials.json"

    @property
    def intruder_credentials(self) -> Path:
        return self.data_dir / "intruder-credentials.json"

    def credentials_file(self, user: str) -> Path:
        return self.data_dir / f"{user}-credentials.json"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def ca_cert(self) -> Path:
        """The CA of every TLS listener: what a client (the appliance's `upstream_tls.ca_file`) trusts."""
        return self.tls_dir / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.tls_dir / "ca-key.pem"

    @property
    def server_keystore(self) -> Path:
        """The TLS listeners' certificate and key, one PEM file (Kafka's `ssl.keystore.location`)."""
        return self.tls_dir / "broker.pem"

    @property
    def expired_keystore(self) -> Path:
        return self.tls_dir / "broker-expired.pem"

    @property
    def named_keystore(self) -> Path:
        return self.tls_dir / "broker-named.pem"

    @property
    def client_cert(self) -> Path:
        """The appliance's client certificate for the MTLS listener (`upstream_tls.client_cert`)."""
        return self.tls_dir / "appliance-client.pem"

    @property
    def client_key(self) -> Path:
        return self.tls_dir / "appliance-client-key.pem"


def internal_port(config: EmbeddedBrokerConfig) -> int:
    """The inter-broker listener's port: the one after the controller's (the config has no key for it)."""
    return config.controller_port + 1


def client_addresses(config: EmbeddedBrokerConfig) -> tuple[BrokerAddress, ...]:
    """The client listeners' addresses, IPv4 first; IPv6 only when host6 is set."""
    addresses = [BrokerAddress(config.host4, config.port4)]
    if config.host6:
        addresses.append(BrokerAddress(config.host6, config.port6))
    return tuple(addresses)


def oauth_address(config: EmbeddedBrokerConfig) -> BrokerAddress | None:
    """The OAUTHBEARER listener's address, or None when the broker has none."""
    return None if config.oauth is None else BrokerAddress(config.host4, config.oauth.port)


def tls_listeners(config: EmbeddedBrokerConfig) -> dict[str, BrokerAddress]:
    """The TLS listeners by name (TLS, TLS6, MTLS, CERT, EXPIRED, NAMED), those configured; none without `tls`."""
    tls = config.tls
    if tls is None:
        return {}
    listeners = {"TLS": BrokerAddress(config.host4, tls.port)}
    if config.host6:
        listeners["TLS6"] = BrokerAddress(config.host6, tls.port6)
    if tls.mtls_port:
        listeners["MTLS"] = BrokerAddress(config.host4, tls.mtls_port)
    if tls.cert_port:
        listeners["CERT"] = BrokerAddress(config.host4, tls.cert_port)
    if tls.expired_port:
        listeners["EXPIRED"] = BrokerAddress(config.host4, tls.expired_port)
    if tls.named_port:
        listeners["NAMED"] = BrokerAddress(config.host4, tls.named_port)
    return listeners


def listening_addresses(config: EmbeddedBrokerConfig) -> tuple[BrokerAddress, ...]:
    """Every listener a client can reach: the password listeners, then the OAuth one if configured."""
    oauth = oauth_address(config)
    return client_addresses(config) + (() if oauth is None else (oauth,))


def jvm_system_properties(config: EmbeddedBrokerConfig) -> dict[str, str]:
    """`-D` properties the broker's JVM needs: the JWKS URL Kafka 4 may fetch, when there is an OAuth listener."""
    if config.oauth is None:
        return {}
    return {ALLOWED_URLS_PROPERTY: config.oauth.jwks_url}


def _escape(value: str) -> str:
    """A java.util.Properties value: backslashes are escapes, so double them."""
    return value.replace("\\", "\\\\")


def _jaas_plain(users: dict[str, str], *, login: tuple[str, str] | None = None) -> str:
    parts = [_PLAIN_MODULE, "required"]
    if login is not None:
        parts += [f'username="{login[0]}"', f'password="{login[1]}"']
    parts += [f'user_{name}="{password}"' for name, password in users.items()]
    return " ".join(parts) + ";"


def server_properties(
    config: EmbeddedBrokerConfig,
    files: BrokerFiles,
    *,
    appliance: UpstreamCredentials,
    intruder: UpstreamCredentials,
    node_password: str,
    cluster: ClusterMember | None = None,
) -> str:
    """The whole server.properties for the combined broker+controller node (one of `cluster`'s, when given)."""
    node_host = "127.0.0.1" if cluster is None else config.host4
    ctrl = f"{node_host}:{config.controller_port}"
    internal = f"{node_host}:{internal_port(config)}"
    node_id = NODE_ID if cluster is None else cluster.node_id
    voters = (f"{NODE_ID}@{ctrl}" if cluster is None else
              ",".join(f"{voter}@{host}:{config.controller_port}" for voter, host in cluster.voters))
    replicas = 1 if cluster is None else cluster.replicas
    clients = client_addresses(config)
    client_names = ["CLIENT", "CLIENT6"][: len(clients)]
    oauth = config.oauth
    if oauth is not None:
        clients = clients + (oauth_address(config),)
        client_names = client_names + ["OAUTH"]
    tls = tls_listeners(config)
    clients = clients + tuple(tls.values())
    client_names = client_names + list(tls)
    client_listeners = [f"{name}://{addr}" for name, addr in zip(client_names, clients)]
    plain_clients = {appliance.username: appliance.password, intruder.username: intruder.password}
    node_jaas = _jaas_plain({NODE_USER: node_password}, login=(NODE_USER, node_password))

    lines = [
        "# Written by appliance.broker.embedded at every start; edits here are overwritten.",
        "# Holds passwords (PLAIN users in the JAAS lines): keep it mode 0600.",
        "process.roles=broker,controller",
        f"node.id={node_id}",
        # A static quorum (one voter, or each node of a cluster): it never changes, so the dynamic
        # quorum's ability to add voters (and its --standalone bootstrap) buys nothing.
        f"controller.quorum.voters={voters}",
        "listeners=" + ",".join(client_listeners + [f"INTERNAL://{internal}", f"CONTROLLER://{ctrl}"]),
        # Each client listener advertises its own address, so a client that
        # bootstraps over IPv6 stays on IPv6.
        "advertised.listeners=" + ",".join(client_listeners + [f"INTERNAL://{internal}"]),
        "listener.security.protocol.map="
        + ",".join(f"{n}:{_protocol(n, tls)}" for n in client_names + ["INTERNAL", "CONTROLLER"]),
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=INTERNAL",
        "sasl.mechanism.inter.broker.protocol=PLAIN",
        "sasl.mechanism.controller.protocol=PLAIN",
    ]
    for name in client_names:
        prefix = f"listener.name.{name.lower()}"
        if name == "OAUTH":
            lines += [
                f"{prefix}.sasl.enabled.mechanisms=OAUTHBEARER",
                f"{prefix}.oauthbearer.sasl.jaas.config={_OAUTHBEARER_MODULE} required;",
                f"{prefix}.oauthbearer.sasl.server.callback.handler.class={_OAUTHBEARER_VALIDATOR}",
                f"sasl.oauthbearer.jwt.validator.class={_BROKER_JWT_VALIDATOR}",
                f"sasl.oauthbearer.jwks.endpoint.url={_escape(oauth.jwks_url)}",
                f"sasl.oauthbearer.expected.issuer={_escape(oauth.issuer)}",
                f"sasl.oauthbearer.expected.audience={_escape(oauth.audience)}",
                f"sasl.oauthbearer.sub.claim.name={oauth.principal_claim}",
                f"sasl.oauthbearer.scope.claim.name={oauth.scope_claim}",
                f"sasl.oauthbearer.clock.skew.seconds={oauth.clock_skew_s}",
            ]
            continue
        if name in tls:
            lines += _tls_listener_lines(prefix, name, files)
        if name == "CERT":
            continue  # no SASL: the certificate's subject is the principal
        lines += [
            f"{prefix}.sasl.enabled.mechanisms={','.join(CLIENT_MECHANISMS)}",
            f"{prefix}.scram-sha-512.sasl.jaas.config={_SCRAM_MODULE} required;",
            f"{prefix}.scram-sha-256.sasl.jaas.config={_SCRAM_MODULE} required;",
            f"{prefix}.plain.sasl.jaas.config={_escape(_jaas_plain(plain_clients))}",
        ]
    for name in ("internal", "controller"):
        lines += [
            f"listener.name.{name}.sasl.enabled.mechanisms=PLAIN",
            f"listener.name.{name}.plain.sasl.jaas.config={_escape(node_jaas)}",
        ]
    lines += [
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        # The appliance is the only client principal with any right; `node` is
        # the node talking to itself.
        f"super.users=User:{appliance.username};User:{NODE_USER}"
        + (f";User:{oauth.principal}" if oauth is not None else "")
        + (f";User:{CERTIFICATE_PRINCIPAL}" if "CERT" in tls else ""),
        f"log.dirs={_escape(str(files.kafka_data))}",
        "num.partitions=1",
        f"default.replication.factor={replicas}",
        "min.insync.replicas=1",
        f"offsets.topic.replication.factor={replicas}",
        "offsets.topic.num.partitions=1",
        f"transaction.state.log.replication.factor={replicas}",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=1",
        f"share.coordinator.state.topic.replication.factor={replicas}",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=true",
        "log.retention.hours=24",
        "log.segment.bytes=67108864",
    ]
    return "\n".join(lines) + "\n"


def _protocol(name: str, tls: dict[str, BrokerAddress]) -> str:
    if name == "CERT":
        return "SSL"
    return "SASL_SSL" if name in tls else "SASL_PLAINTEXT"


def _tls_listener_lines(prefix: str, name: str, files: BrokerFiles) -> list[str]:
    """One TLS listener's keystore (PEM: certificate chain and unencrypted PKCS#8 key in one file) and, for
    MTLS, the truststore its client certificates must chain to."""
    keystore = {"EXPIRED": files.expired_keystore, "NAMED": files.named_keystore}.get(name, files.server_keystore)
    lines = [
        f"{prefix}.ssl.keystore.type=PEM",
        f"{prefix}.ssl.keystore.location={_escape(str(keystore))}",
        f"{prefix}.ssl.enabled.protocols=TLSv1.2,TLSv1.3",
    ]
    if name in ("MTLS", "CERT"):
        lines += [
            f"{prefix}.ssl.client.auth=required",
            f"{prefix}.ssl.truststore.type=PEM",
            f"{prefix}.ssl.truststore.location={_escape(str(files.ca_cert))}",
        ]
    return lines


def log4j2_properties(log_file: Path) -> str:
    """The server's log4j2 configuration: INFO to one size-rolled file, the chattiest loggers quieter."""
    log = _escape(str(log_file))
    return f"""\
# Written by appliance.broker.embedded at every start.
status = warn
name = appliance-broker
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
# Denials are logged at INFO by the authorizer: keep them, they explain a refused client.
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
"""


TOOLS_LOG4J2 = """\
# The Java command-line tools: warnings and errors to stderr only.
status = warn
name = appliance-tools
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.err.ref = err
"""


def client_properties(credentials: UpstreamCredentials) -> str:
    """A .properties file for the Java tools (`--command-config`, `--producer.config`, ...)."""
    if credentials.mechanism == "PLAIN":
        module = _PLAIN_MODULE
    else:
        module = _SCRAM_MODULE
    jaas = f'{module} required username="{credentials.username}" password="{credentials.password}";'
    return (
        "security.protocol=SASL_PLAINTEXT\n"
        f"sasl.mechanism={credentials.mechanism}\n"
        f"sasl.jaas.config={_escape(jaas)}\n"
    )
