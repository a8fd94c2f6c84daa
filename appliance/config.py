"""The appliance's configuration: embedded defaults, and a YAML file for real deployments.

Every setting has a default that runs the appliance against the embedded broker
on this host, so `appliance serve` needs no file. A file given with `--config`
overrides any subset; errors name the file, the key and what would be valid.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterator

import yaml

from appliance.console.settings import ConsoleConfig, ConsoleSettingError, parse_console
from appliance.identity.containers import ContainerRoots


# The policy `appliance serve` enforces when the configuration names none: the demo's.
EMBEDDED_POLICY = Path(__file__).resolve().parent / "policy" / "embedded.yaml"


class ConfigError(ValueError):
    """A configuration file or value that cannot be used, with where and why."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """A broker address whose connections are steered: an IP literal and a port."""

    host: str
    port: int

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.host).version

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if self.family == 6 else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str, *, where: str = "broker address") -> BrokerAddress:
        """Parse `1.2.3.4:9092` or `[::1]:9092`."""
        text = str(text).strip()
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
        else:
            host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ConfigError(f"{where}: {text!r} is not HOST:PORT (IPv6 as [ADDR]:PORT)")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"{where}: {host!r} is not an IP address; steering matches addresses, not names") from None
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{where}: port {port!r} is not a number from 1 to 65535")
        return cls(host=str(ipaddress.ip_address(host)), port=int(port))


@dataclass(frozen=True, slots=True)
class BrokerName:
    """A broker given by DNS name in `brokers`: resolved at start and every `broker_resolve_interval_s`,
    and each address it resolves to is steered (steering matches addresses)."""

    name: str
    port: int

    def __str__(self) -> str:
        return f"{self.name}:{self.port}"


def parse_broker(text: str, *, where: str) -> BrokerAddress | BrokerName:
    """`1.2.3.4:9092`, `[::1]:9092`, or `kafka-1.example.com:9092`."""
    host, sep, port = str(text).strip().rpartition(":")
    if not sep or not host or host.startswith("[") or _is_ip(host) or host.replace(".", "").isdigit():
        return BrokerAddress.parse(text, where=where)
    if not _DNS_NAME.fullmatch(host):
        raise ConfigError(f"{where}: {host[:80]!r} is neither an IP address nor a DNS name")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: port {port!r} is not a number from 1 to 65535")
    return BrokerName(host.rstrip(".").lower(), int(port))


TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")


@dataclass(frozen=True, slots=True)
class UpstreamTlsConfig:
    """TLS from the proxy to the brokers (docs/tls.md); checked at load by `appliance.proxy.upstream_tls`.

    With upstream_credentials the appliance authenticates with SASL inside the TLS connection (the broker
    listener is SASL_SSL); with `upstream_credentials: null` it uses no SASL and its client certificate
    is its principal (an SSL listener demanding client certificates).
    """

    enabled: bool = True
    ca_file: Path | None = None  # PEM CA bundle; None: the system store
    verify_hostname: bool = True
    # The name a broker's certificate carries, per broker address; absent: the DNS name the address was reached
    # through (a name in `brokers`, or one a cluster's answer gave), else its IP literal (an IP SAN).
    server_names: tuple[tuple[BrokerAddress, str], ...] = ()
    client_cert: Path | None = None  # mutual TLS: a PEM certificate (chain), with client_key
    client_key: Path | None = None  # its PEM private key, a root-only file
    min_version: str = "TLSv1.2"

    def server_name(self, broker: BrokerAddress, learned: str | None = None) -> str:
        """What the handshake names (SNI) and verifies the certificate against for `broker`: the operator's
        `server_names` entry, else the DNS name the address was reached through (`learned`: a broker given
        by name in `brokers`, or named so in a cluster's answer), else its IP literal."""
        for address, name in self.server_names:
            if address == broker:
                return name
        return learned or broker.host


@dataclass(frozen=True, slots=True)
class EmbeddedOAuthConfig:
    """An optional SASL/OAUTHBEARER client listener of the embedded broker, on host4:port.

    Tokens are validated by Kafka's own validator against the provider's JWKS;
    the principal is the `principal_claim` of the token (Keycloak service
    accounts: `azp`, the client id). `principal` is the appliance's own, a super
    user like its SCRAM user.
    """

    issuer: str
    jwks_url: str
    audience: str
    port: int = 19096  # after the controller's (19094) and the inter-broker listener's (19095)
    principal_claim: str = "azp"
    principal: str = "appliance-upstream"
    clock_skew_s: int = 30  # Kafka's default leeway for exp, nbf and iat
    # Kafka refuses a token whose scope claim is an empty string, which Keycloak writes when no client
    # scope puts a name in it; naming a claim the tokens lack makes Kafka read no scopes (its authorizer
    # does not use them).
    scope_claim: str = "scope"


@dataclass(frozen=True, slots=True)
class EmbeddedTlsConfig:
    """Optional TLS listeners of the embedded broker, on host4 (and host6), certificates made at start.

    `port`: SASL_SSL with SCRAM and PLAIN, like the plaintext listeners. `mtls_port`: the same, and it
    demands a client certificate signed by the broker's CA (0: none). `cert_port`: SSL without SASL,
    demanding a client certificate, whose subject is the principal (0: none). `expired_port`: SASL_SSL
    with a certificate that has already expired, to see the appliance refuse it (0: none). `named_port`:
    SASL_SSL with a certificate that names the broker by DNS name only, as real clusters' do (0: none). The CA, the
    certificates and the appliance's client certificate are under `<data_dir>/tls/` (docs/tls.md).
    """

    port: int = 19097
    port6: int = 19098  # the SASL_SSL listener on host6 (when host6 is set)
    mtls_port: int = 19099
    cert_port: int = 19100
    expired_port: int = 0
    named_port: int = 0  # SASL_SSL with a certificate carrying only the broker's DNS names (no IP SAN) (0: none)


@dataclass(frozen=True, slots=True)
class EmbeddedBrokerConfig:
    """The single-node Kafka the appliance can run for demos and tests."""

    host4: str = "127.0.0.1"
    port4: int = 19092
    host6: str = "::1"
    port6: int = 19093
    controller_port: int = 19094
    data_dir: Path = Path("/var/lib/appliance/broker")
    jar_cache: Path = Path("/var/cache/appliance")
    cgroup: str = "appliance-broker"
    heap: str = "512m"
    oauth: EmbeddedOAuthConfig | None = None  # no OAUTHBEARER listener unless configured
    tls: EmbeddedTlsConfig | None = None  # no TLS listeners unless configured


# The signature algorithms a token may use unless a provider narrows them: never `none`, never HMAC
# (a provider's public key must never serve as a shared secret).
TOKEN_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


@dataclass(frozen=True, slots=True)
class TokenProviderConfig:
    """An OIDC identity provider whose tokens workloads present (docs/identity.md)."""

    issuer: str
    audiences: tuple[str, ...]
    jwks_uri: str | None = None  # None: from the issuer's /.well-known/openid-configuration
    identity_claim: str = "sub"  # the claim naming the workload (Keycloak service accounts: azp, or a fixed sub)
    groups_claim: str = "groups"  # Keycloak: groups; Entra ID: roles
    client_id_claim: str = "azp"
    algorithms: tuple[str, ...] = TOKEN_ALGORITHMS
    leeway_s: float = 30.0
    ca_file: Path | None = None  # PEM CAs for an https issuer/jwks_uri instead of the system store
    # RFC 7662 token introspection (identity/introspection.py): off unless the endpoint is set, and then
    # every token that passes the JWT checks is also asked about there. The three go together.
    introspection_endpoint: str | None = None
    introspection_client_id: str | None = None
    introspection_client_secret_file: Path | None = None  # root-only, the secret alone; read at start
    introspection_cache_s: float = 5.0  # how long an `active: true` is believed (never past the token's exp)


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """How workloads prove who they are over SASL, beyond their cgroup (docs/identity.md)."""

    providers: tuple[TokenProviderConfig, ...] = ()
    # The longest a session lives without re-authenticating (KIP-368), whatever its token says.
    max_session_lifetime_s: float = 3600.0
    # Root-only: static PLAIN/SCRAM credentials kept working while workloads move to tokens.
    static_credentials_file: Path | None = None


IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    """Brokers learned from the Metadata, FindCoordinator and DescribeCluster answers the proxy relays.

    An endpoint a steered broker names joins the steered set (the kernel's `brokers` map) before the
    answer reaches the workload, when its address is in `allowed_networks`. None (the default): only the
    configured brokers' own host addresses, so nothing beyond the hosts the operator named is ever
    steered unless the operator widens it. An endpoint outside is not steered, is audited once
    (`discovery-refused`) and, with `refuse_outside`, enrolled workloads' connects to it are refused in
    the kernel rather than going to the broker directly.

    A discovered endpoint (steered or outside) is forgotten only on evidence that the cluster moved on:
    for `forget_after_s` nothing named it or connected to it, a Metadata answer of its cluster that long
    after its last naming listed the brokers without it, and no session uses it (proxy/discovery.py).
    None: never.
    """

    enabled: bool = True
    allowed_networks: tuple[IpNetwork, ...] | None = None
    refuse_outside: bool = True
    max_brokers: int = 256  # endpoints discovered and steered in all (the kernel map holds 1024 with the configured)
    max_per_response: int = 128  # distinct endpoints one answer may name; more closes the session, unanswered
    resolve_timeout_s: float = 2.0  # a broker named by host name must resolve within this, or the session closes
    forget_after_s: float | None = 3600.0  # None (YAML null or 0): discovered brokers are never forgotten

    def allowed(self, brokers: tuple[BrokerAddress, ...]) -> tuple[IpNetwork, ...]:
        # `brokers`: the configured addresses, and those the configured names resolve to.
        """The networks discovered endpoints must fall in: the configured ones, or each broker's own host."""
        if self.allowed_networks is not None:
            return self.allowed_networks
        return tuple(dict.fromkeys(ipaddress.ip_network(b.host) for b in brokers))


@dataclass(frozen=True, slots=True)
class AuditRetention:
    """How much of the audit the serving process keeps (docs/recording.md, Retention); None: no limit.

    Nothing is deleted by default: the audit is the evidence of who did what, how long it must be kept
    is a matter of each site's rules (a year, seven years), and a default that deleted it would be a
    surprise no one asked for.
    """

    max_age_days: float | None = None
    max_bytes: int | None = None
    interval_s: float = 300.0  # how often the serving process checks

    @property
    def enabled(self) -> bool:
        return self.max_age_days is not None or self.max_bytes is not None

    def describe(self) -> str:
        parts = []
        if self.max_age_days is not None:
            parts.append(f"{self.max_age_days:g} days")
        if self.max_bytes is not None:
            parts.append(f"{self.max_bytes:,} bytes")
        return " and ".join(parts) if parts else "keep everything"


@dataclass(frozen=True, slots=True)
class Config:
    """Everything `appliance serve` needs; see docs/configuration.md for each key."""

    state_dir: Path = Path("/var/lib/appliance")
    run_dir: Path = Path("/run/appliance")
    listen_host4: str = "127.0.0.1"
    listen_host6: str = "::1"
    listen_port: int = 19190
    brokers: tuple[BrokerAddress | BrokerName, ...] = (
        BrokerAddress("127.0.0.1", 19092),
        BrokerAddress("::1", 19093),
    )
    # Brokers in `brokers` given by DNS name are resolved again this often; new addresses join the steered set.
    broker_resolve_interval_s: float = 30.0
    # None (YAML null): no SASL; the brokers' SSL listeners know the appliance by upstream_tls.client_cert.
    upstream_credentials: Path | None = Path("/var/lib/appliance/broker/appliance-credentials.json")
    upstream_tls: UpstreamTlsConfig | None = None  # None: plaintext to the brokers (SASL_PLAINTEXT)
    exempt_cgroups: tuple[str, ...] = ("appliance-broker",)
    proxy_cgroup: str = "appliance-proxy"
    refuse_unenrolled: bool = True
    bpffs_dir: Path = Path("/sys/fs/bpf/appliance")
    # ---- resource bounds and audit failure (docs/configuration.md#resource-bounds) ----
    # Kafka's own broker accepts request frames up to socket.request.max.bytes
    # (100 MiB) but records only up to message.max.bytes (about 1 MiB), and a
    # producer's max.request.size is 1 MiB: 8 MiB leaves room and bounds what
    # one partial request can pin. Responses are bounded by what consumers ask
    # for (fetch.max.bytes, 50 MiB; the broker caps it at 55 MiB): max_frame_bytes.
    max_request_bytes: int = 8 * 1024 * 1024
    session_buffer_bytes: int = 16 * 1024 * 1024
    buffer_budget_bytes: int = 128 * 1024 * 1024
    max_sessions: int = 1024
    max_sessions_per_workload: int = 512
    # An enrolled process can make network namespaces of its own with no capability (a user
    # namespace owns them); the kernel programs have APPLIANCE_MAX_NETNS (32) slots in all.
    max_netns_per_workload: int = 4
    connect_timeout_s: float = 10.0
    sasl_timeout_s: float = 10.0
    idle_timeout_s: float = 600.0
    request_timeout_s: float = 360.0
    frame_timeout_s: float = 30.0
    audit_queue_max: int = 50_000
    audit_failure: str = "refuse"
    audit_dir: Path | None = None
    # ---- end of resource bounds ----
    max_frame_bytes: int = 64 * 1024 * 1024
    audit_flush_ms: int = 200
    # The serving process signs a checkpoint of the audit chain this often (and at a clean stop).
    audit_checkpoint_interval_s: float = 60.0
    audit_retention: AuditRetention = field(default_factory=AuditRetention)
    upstream_pool: int = 2
    policy_file: Path = EMBEDDED_POLICY
    # How often the appliance checks that each steered broker accepts TCP connects;
    # enrolled connects to one that does not are refused in the kernel meanwhile.
    broker_probe_interval_ms: int = 1000
    # A kernel hand-off record older than this when the proxy accepts is not used.
    handoff_max_age_ms: int = 10_000
    # Where container runtimes keep the state that labels come from (enrolment patterns' label:KEY).
    container_roots: ContainerRoots = field(default_factory=ContainerRoots)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    embedded_broker: EmbeddedBrokerConfig = field(default_factory=EmbeddedBrokerConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)  # the web console (docs/console.md), off by default
    source: str = "embedded defaults"

    @property
    def broker_addresses(self) -> tuple[BrokerAddress, ...]:
        """The brokers given as IP literals."""
        return tuple(b for b in self.brokers if isinstance(b, BrokerAddress))

    @property
    def broker_names(self) -> tuple[BrokerName, ...]:
        """The brokers given by DNS name, resolved while serving."""
        return tuple(b for b in self.brokers if isinstance(b, BrokerName))

    @property
    def audit_db(self) -> Path:
        return (self.audit_dir or self.state_dir) / "audit.db"

    @property
    def run_marker(self) -> Path:
        """Present while `serve` runs; found at start, it means the previous run did not stop cleanly."""
        return self.audit_db.with_name("serve.running")

    @property
    def enrollments_file(self) -> Path:
        return self.state_dir / "enrollments.json"

    @property
    def approvals_db(self) -> Path:
        """Approval requests and grants (docs/approvals.md), shared by `serve` and `appliance approvals`; root-only."""
        return self.state_dir / "approvals.db"

    @property
    def masking_secret(self) -> Path:
        """The key of masking's `hash` action (HMAC-SHA256); created on first start, root-only."""
        return self.state_dir / "masking-secret"

    @property
    def audit_signing_key(self) -> Path:
        """The Ed25519 key audit checkpoints are signed with; created on first start, root-only."""
        return self.state_dir / "audit-signing.key"

    @property
    def checkpoint_dir(self) -> Path:
        """Where each signed audit checkpoint is also written, as <tree size>.txt."""
        return self.state_dir / "checkpoints"

    @property
    def console_session_key(self) -> Path:
        """The key the console signs its session cookies with; created on its first start, root-only."""
        return self.state_dir / "console-session.key"

    @property
    def status_file(self) -> Path:
        return self.run_dir / "status.json"

    @property
    def revocations_file(self) -> Path:
        """Revoked subjects, token ids, identities and client ids (`appliance revoke`); root-only."""
        return self.state_dir / "revocations.json"


_PATH_KEYS = {"state_dir", "run_dir", "upstream_credentials", "bpffs_dir", "policy_file"}
_INT_KEYS = {"listen_port": (1, 65535), "max_frame_bytes": (1024, 1 << 31), "audit_flush_ms": (1, 60_000),
             "upstream_pool": (0, 64), "broker_probe_interval_ms": (100, 60_000),
             "handoff_max_age_ms": (100, 600_000)}

# Resource bounds (kept apart from the table above, which other settings extend).
_BOUND_INT_KEYS = {"max_request_bytes": (1024, 100 << 20), "session_buffer_bytes": (64 << 10, 1 << 32),
                   "buffer_budget_bytes": (1 << 20, 1 << 40), "max_sessions": (1, 65536),
                   "max_sessions_per_workload": (1, 65536), "max_netns_per_workload": (1, 32),
                   "audit_queue_max": (1000, 10_000_000)}
_SECONDS_KEYS = {"connect_timeout_s": (0.1, 600), "sasl_timeout_s": (0.1, 600), "idle_timeout_s": (1, 86400),
                 "request_timeout_s": (1, 86400), "frame_timeout_s": (1, 3600),
                 "broker_resolve_interval_s": (1, 86400), "audit_checkpoint_interval_s": (1, 86400)}
AUDIT_FAILURE_MODES = ("refuse", "forward")


def load_config(path: Path | None) -> Config:
    """The embedded defaults, overridden by the YAML file at `path` if given."""
    if path is None:
        return Config()
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration file: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings, not {type(data).__name__}")
    return parse_config(data, source=str(path))


def _parse_container_roots(value: Any, where: str) -> ContainerRoots:
    known = [f.name for f in fields(ContainerRoots)]
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must map runtimes ({', '.join(known)}) to absolute paths")
    changes = {}
    for runtime, path in value.items():
        if runtime not in known:
            raise ConfigError(f"{where}: {runtime!r} is not a runtime the appliance reads; use {', '.join(known)}")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigError(f"{where}: {runtime} must be an absolute path, got {path!r}")
        changes[runtime] = Path(path)
    return replace(ContainerRoots(), **changes)


def parse_config(data: dict[str, Any], *, source: str = "<config>") -> Config:
    """Validate a mapping of settings over the defaults; every error names the key."""
    known = {f.name for f in fields(Config)} - {"source"}
    changes: dict[str, Any] = {"source": source}
    for key, value in data.items():
        where = f"{source}: key {key!r}"
        if key not in known:
            raise ConfigError(f"{where} is not a setting; valid settings are: {', '.join(sorted(known))}")
        if key == "upstream_credentials" and value is None:
            changes[key] = None
        elif key in _PATH_KEYS or key in ("state_dir", "audit_dir"):
            if not isinstance(value, str) or not value.startswith("/"):
                raise ConfigError(f"{where} must be an absolute path, got {value!r}")
            changes[key] = Path(value)
        elif key in _INT_KEYS or key in _BOUND_INT_KEYS:
            low, high = _INT_KEYS[key] if key in _INT_KEYS else _BOUND_INT_KEYS[key]
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(f"{where} must be a whole number from {low} to {high}, got {value!r}")
            changes[key] = value
        elif key in _SECONDS_KEYS:
            low, high = _SECONDS_KEYS[key]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(f"{where} must be a number of seconds from {low:g} to {high:g}, got {value!r}")
            changes[key] = float(value)
        elif key == "audit_failure":
            if value not in AUDIT_FAILURE_MODES:
                raise ConfigError(f"{where} must be one of {', '.join(AUDIT_FAILURE_MODES)}, got {value!r}")
            changes[key] = value
        elif key == "brokers":
            if not isinstance(value, list) or not value:
                raise ConfigError(f"{where} must be a non-empty list of HOST:PORT strings")
            changes[key] = tuple(parse_broker(v, where=f"{where} item {i + 1}") for i, v in enumerate(value))
        elif key in ("exempt_cgroups",):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where} must be a list of cgroup paths")
            changes[key] = tuple(value)
        elif key == "refuse_unenrolled":
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false, got {value!r}")
            changes[key] = value
        elif key == "container_roots":
            changes[key] = _parse_container_roots(value, where)
        elif key == "embedded_broker":
            changes[key] = _parse_embedded_broker(value, where)
        elif key == "identity":
            changes[key] = _parse_identity(value, where)
        elif key == "upstream_tls":
            changes[key] = None if value is None else _parse_upstream_tls(value, where)
        elif key == "discovery":
            changes[key] = _parse_discovery(value, where)
        elif key == "audit_retention":
            changes[key] = _parse_audit_retention(value, where)
        elif key == "console":
            try:
                changes[key] = parse_console(value, where)
            except ConsoleSettingError as e:
                raise ConfigError(str(e)) from None
        elif key in ("listen_host4", "listen_host6", "proxy_cgroup"):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where} must be a non-empty string")
            changes[key] = value
    config = replace(Config(), **changes)
    _check_bounds(config, source)
    _check_server_names(config, source)
    tls = config.upstream_tls
    if config.upstream_credentials is None and (tls is None or not tls.enabled or tls.client_cert is None):
        raise ConfigError(f"{source}: key 'upstream_credentials' is null (no SASL), so the brokers must know the "
                          "appliance by a TLS client certificate: set upstream_tls with client_cert and client_key, "
                          "or name a credentials file")
    if "state_dir" in changes and "upstream_credentials" not in changes:
        config = replace(config, upstream_credentials=config.state_dir / "broker" / "appliance-credentials.json")
    return config


def _check_bounds(config: Config, source: str) -> None:
    """Bounds that only make sense together: each names both keys and what would hold."""
    if config.max_request_bytes > config.session_buffer_bytes:
        raise ConfigError(
            f"{source}: key 'session_buffer_bytes' ({config.session_buffer_bytes}) must be at least "
            f"'max_request_bytes' ({config.max_request_bytes}): a session paused below one whole request "
            "could never finish it")
    if config.session_buffer_bytes > config.buffer_budget_bytes:
        raise ConfigError(
            f"{source}: key 'buffer_budget_bytes' ({config.buffer_budget_bytes}) must be at least "
            f"'session_buffer_bytes' ({config.session_buffer_bytes})")
    if config.max_sessions_per_workload > config.max_sessions:
        raise ConfigError(
            f"{source}: key 'max_sessions_per_workload' ({config.max_sessions_per_workload}) must not exceed "
            f"'max_sessions' ({config.max_sessions})")


def _check_server_names(config: Config, source: str) -> None:
    steered = set(config.broker_addresses)
    for address, _ in config.upstream_tls.server_names if config.upstream_tls is not None else ():
        if address not in steered:
            raise ConfigError(f"{source}: key 'upstream_tls': key 'server_names' names {address}, which is not in "
                              f"'brokers' ({', '.join(map(str, config.brokers))}); name a steered broker")


_UPSTREAM_TLS_KEYS = tuple(f.name for f in fields(UpstreamTlsConfig))
# A host name: labels of letters, digits and "-" (the name the handshake asks for, never a wildcard).
_DNS_NAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                       r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?")


def _parse_upstream_tls(value: Any, where: str) -> UpstreamTlsConfig:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of TLS settings ({', '.join(_UPSTREAM_TLS_KEYS)}), "
                          f"got {value!r}")
    changes: dict[str, Any] = {}
    for key, item in value.items():
        inner = f"{where}: key {key!r}"
        if key not in _UPSTREAM_TLS_KEYS:
            raise ConfigError(f"{inner} is not an upstream TLS setting; valid: {', '.join(_UPSTREAM_TLS_KEYS)}")
        if key in ("enabled", "verify_hostname"):
            if not isinstance(item, bool):
                raise ConfigError(f"{inner} must be true or false, got {item!r}")
            changes[key] = item
        elif key in ("ca_file", "client_cert", "client_key"):
            if not isinstance(item, str) or not item.startswith("/"):
                raise ConfigError(f"{inner} must be an absolute path to a PEM file, got {item!r}")
            changes[key] = Path(item)
        elif key == "min_version":
            if item not in TLS_VERSIONS:
                raise ConfigError(f"{inner} must be one of {', '.join(TLS_VERSIONS)}, got {item!r}")
            changes[key] = item
        elif key == "server_names":
            changes[key] = _parse_server_names(item, inner)
    if ("client_cert" in changes) != ("client_key" in changes):
        given, missing = ("client_cert", "client_key") if "client_cert" in changes else ("client_key", "client_cert")
        raise ConfigError(f"{where}: key {given!r} is set but {missing!r} is not: mutual TLS needs both the "
                          "certificate and its private key")
    tls = UpstreamTlsConfig(**changes)
    if tls.enabled:
        from appliance.proxy.upstream_tls import TlsFileError, check_files

        try:
            check_files(tls)  # a wrong file fails the load, naming it, not the first session
        except TlsFileError as e:
            raise ConfigError(f"{where}: key {e.key!r}: {e}") from None
    return tls


def _parse_server_names(value: Any, where: str) -> tuple[tuple[BrokerAddress, str], ...]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must map broker addresses (as in 'brokers') to the name each broker's "
                          f"certificate carries, e.g. {{\"10.0.0.5:9093\": kafka-1.example.com}}")
    names = []
    for address, name in value.items():
        broker = BrokerAddress.parse(address, where=f"{where} item {address!r}")
        if not isinstance(name, str) or not (_DNS_NAME.fullmatch(name) or _is_ip(name)):
            raise ConfigError(f"{where} item {address!r}: {name!r} is not a DNS name or IP address a certificate "
                              "could carry")
        names.append((broker, name.rstrip(".")))
    return tuple(names)


_DISCOVERY_KEYS = tuple(f.name for f in fields(DiscoveryConfig))
_DISCOVERY_INTS = {"max_brokers": (1, 1000), "max_per_response": (1, 1000)}
_FORGET_AFTER_MAX_S = 30 * 86400


_RETENTION_KEYS = tuple(f.name for f in fields(AuditRetention))
_MAX_AGE_DAYS = 36500
_MIN_AUDIT_BYTES = 1 << 20
_BYTE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}
_BYTES_TEXT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")


def _parse_bytes(value: Any, where: str) -> int:
    """A size: a whole number of bytes, or text such as "10 GiB" or "500MB"."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        match = _BYTES_TEXT.fullmatch(value) if isinstance(value, str) else None
        if match is None or match.group(2).upper() not in _BYTE_UNITS:
            raise ConfigError(f"{where} must be a size in bytes: a whole number or a number with a unit "
                              f"(KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 10GiB; got {value!r}")
        number = int(float(match.group(1)) * _BYTE_UNITS[match.group(2).upper()])
    if not _MIN_AUDIT_BYTES <= number <= 1 << 50:
        raise ConfigError(f"{where} must be from 1 MiB ({_MIN_AUDIT_BYTES}) to 1 PiB, got {value!r}")
    return number


def _settings(value: Any, where: str, keys: tuple[str, ...], what: str) -> Iterator[tuple[str, Any, str]]:
    """(key, value, "<where>: key 'k'") of a mapping of `what` settings, each key one of `keys`."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of {what} settings ({', '.join(keys)}), got {value!r}")
    for key, item in value.items():
        inner = f"{where}: key {key!r}"
        if key not in keys:
            raise ConfigError(f"{inner} is not a {what} setting; valid: {', '.join(keys)}")
        yield key, item, inner


def _parse_audit_retention(value: Any, where: str) -> AuditRetention:
    changes: dict[str, Any] = {}
    for key, item, inner in _settings(value, where, _RETENTION_KEYS, "retention"):
        if key == "max_age_days":
            if item is not None and (not isinstance(item, (int, float)) or isinstance(item, bool)
                                     or not 0 < item <= _MAX_AGE_DAYS):
                raise ConfigError(f"{inner} must be a number of days above 0 and at most {_MAX_AGE_DAYS} "
                                  f"(fractions allowed: 0.5 is 12 hours), or null to keep rows of any age; got {item!r}")
            changes[key] = None if item is None else float(item)
        elif key == "max_bytes":
            changes[key] = None if item is None else _parse_bytes(item, inner)
        elif key == "interval_s":
            if not isinstance(item, (int, float)) or isinstance(item, bool) or not 1 <= item <= 86400:
                raise ConfigError(f"{inner} must be a number of seconds from 1 to 86400, got {item!r}")
            changes[key] = float(item)
    return AuditRetention(**changes)


def _parse_discovery(value: Any, where: str) -> DiscoveryConfig:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of discovery settings ({', '.join(_DISCOVERY_KEYS)})")
    changes: dict[str, Any] = {}
    for key, item in value.items():
        inner = f"{where}: key {key!r}"
        if key not in _DISCOVERY_KEYS:
            raise ConfigError(f"{inner} is not a discovery setting; valid: {', '.join(_DISCOVERY_KEYS)}")
        if key in ("enabled", "refuse_outside"):
            if not isinstance(item, bool):
                raise ConfigError(f"{inner} must be true or false, got {item!r}")
            changes[key] = item
        elif key in _DISCOVERY_INTS:
            low, high = _DISCOVERY_INTS[key]
            if not isinstance(item, int) or isinstance(item, bool) or not low <= item <= high:
                raise ConfigError(f"{inner} must be a whole number from {low} to {high}, got {item!r}")
            changes[key] = item
        elif key == "resolve_timeout_s":
            if not isinstance(item, (int, float)) or isinstance(item, bool) or not 0.1 <= item <= 30:
                raise ConfigError(f"{inner} must be a number of seconds from 0.1 to 30, got {item!r}")
            changes[key] = float(item)
        elif key == "forget_after_s":
            if item is None or (item == 0 and not isinstance(item, bool)):
                changes[key] = None
            elif not isinstance(item, (int, float)) or isinstance(item, bool) or not 1 <= item <= _FORGET_AFTER_MAX_S:
                raise ConfigError(f"{inner} must be a number of seconds from 1 to {_FORGET_AFTER_MAX_S} (30 days), "
                                  f"or null (or 0) to never forget a discovered broker, got {item!r}")
            else:
                changes[key] = float(item)
        elif key == "allowed_networks":
            if not isinstance(item, list) or not all(isinstance(n, str) for n in item):
                raise ConfigError(f"{inner} must be a list of networks in CIDR form, e.g. [10.0.0.0/8, "
                                  f"\"fd00::/8\"], got {item!r}")
            networks = []
            for i, text in enumerate(item):
                try:
                    network = ipaddress.ip_network(text.strip(), strict=True)
                except ValueError as e:
                    raise ConfigError(f"{inner} item {i + 1}: {text!r} is not a network in CIDR form "
                                      f"(address/prefix, host bits zero): {e}") from None
                if network.prefixlen == 0:
                    raise ConfigError(f"{inner} item {i + 1}: {text!r} allows every address; name the "
                                      "cluster's networks")
                networks.append(network)
            changes[key] = tuple(networks)
    return DiscoveryConfig(**changes)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def memory_ceiling(config: Config) -> int:
    """Bytes the proxy may hold for workloads at most, beyond its baseline (docs/configuration.md)."""
    return (2 * config.buffer_budget_bytes + config.max_sessions * READ_CHUNK_BYTES
            + config.audit_queue_max * AUDIT_RECORD_BYTES)


# One socket read (uvloop's UV_STREAM_RECV_BUF_SIZE is 256,000 bytes): a session
# can add at most this before the shell, which checks after each read, pauses it.
READ_CHUNK_BYTES = 256 * 1024
# An Operation record queued for the audit writer, measured with tracemalloc.
AUDIT_RECORD_BYTES = 1024


def _parse_embedded_broker(value: Any, where: str) -> EmbeddedBrokerConfig:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of embedded broker settings")
    known = {f.name: f.type for f in fields(EmbeddedBrokerConfig)}
    changes: dict[str, Any] = {}
    for key, item in value.items():
        inner = f"{where}: key {key!r}"
        if key not in known:
            raise ConfigError(f"{inner} is not an embedded broker setting; valid: {', '.join(sorted(known))}")
        if key == "oauth":
            changes[key] = None if item is None else _parse_embedded_oauth(item, inner)
        elif key == "tls":
            changes[key] = None if item is None else _parse_embedded_tls(item, inner)
        elif key.startswith("port") or key == "controller_port":
            if not isinstance(item, int) or isinstance(item, bool) or not 0 < item < 65536:
                raise ConfigError(f"{inner} must be a port from 1 to 65535, got {item!r}")
            changes[key] = item
        elif key in ("data_dir", "jar_cache"):
            if not isinstance(item, str) or not item.startswith("/"):
                raise ConfigError(f"{inner} must be an absolute path, got {item!r}")
            changes[key] = Path(item)
        else:
            if not isinstance(item, str) or not item:
                raise ConfigError(f"{inner} must be a non-empty string")
            changes[key] = item
    broker = replace(EmbeddedBrokerConfig(), **changes)
    taken = {"port4": broker.port4, "controller_port": broker.controller_port,
             "the inter-broker listener (controller_port + 1)": broker.controller_port + 1}
    if broker.host6:
        taken["port6"] = broker.port6
    extra = {}
    if broker.oauth is not None:
        extra["'oauth' port"] = broker.oauth.port
    if broker.tls is not None:
        extra.update({"'tls' port": broker.tls.port, "'tls' mtls_port": broker.tls.mtls_port,
                      "'tls' cert_port": broker.tls.cert_port, "'tls' expired_port": broker.tls.expired_port,
                      "'tls' named_port": broker.tls.named_port})
        if broker.host6:
            extra["'tls' port6"] = broker.tls.port6
    for name, port in extra.items():
        if port == 0:
            continue
        for other, taken_port in taken.items():
            if port == taken_port:
                raise ConfigError(f"{where}: key {name} {port} is also {other}; give each listener a port of its own")
        taken[name] = port
    return broker


_EMBEDDED_TLS_KEYS = tuple(f.name for f in fields(EmbeddedTlsConfig))


def _parse_embedded_tls(value: Any, where: str) -> EmbeddedTlsConfig:
    if value == {} or value is True:
        return EmbeddedTlsConfig()
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of TLS listener ports ({', '.join(_EMBEDDED_TLS_KEYS)}), "
                          f"or {{}} for the defaults")
    changes: dict[str, int] = {}
    for key, item in value.items():
        if key not in _EMBEDDED_TLS_KEYS:
            raise ConfigError(f"{where}: key {key!r} is not a TLS listener setting; valid: "
                              f"{', '.join(_EMBEDDED_TLS_KEYS)}")
        low = 0 if key in ("mtls_port", "cert_port", "expired_port", "named_port") else 1
        if not isinstance(item, int) or isinstance(item, bool) or not low <= item < 65536:
            raise ConfigError(f"{where}: key {key!r} must be a port from {low} to 65535"
                              f"{' (0: no such listener)' if low == 0 else ''}, got {item!r}")
        changes[key] = item
    return EmbeddedTlsConfig(**changes)


_OAUTH_KEYS = tuple(f.name for f in fields(EmbeddedOAuthConfig))
# Values written into server.properties and the broker's command line: printable ASCII, no spaces,
# nothing a properties file or a super.users list would read as a separator.
_PROPERTY_VALUE = re.compile(r"[!-~]{1,2048}")
_PRINCIPAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,254}")
_CLAIM = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,127}")


def _parse_embedded_oauth(value: Any, where: str) -> EmbeddedOAuthConfig:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping with at least issuer, jwks_url and audience")
    for key in value:
        if key not in _OAUTH_KEYS:
            raise ConfigError(f"{where}: key {key!r} is not an OAuth listener setting; valid: {', '.join(_OAUTH_KEYS)}")
    for key in ("issuer", "jwks_url", "audience"):
        if key not in value:
            raise ConfigError(f"{where}: key {key!r} is required")
    changes: dict[str, Any] = {}
    for key in ("issuer", "jwks_url"):
        url = value[key]
        if not isinstance(url, str) or not url.startswith(("https://", "http://")) or not _PROPERTY_VALUE.fullmatch(url):
            raise ConfigError(f"{where}: key {key!r} must be an http(s) URL of printable characters without "
                              f"spaces, got {url!r}")
        changes[key] = url
    audience = value["audience"]
    if not isinstance(audience, str) or "," in audience or not _PROPERTY_VALUE.fullmatch(audience):
        raise ConfigError(f"{where}: key 'audience' must be one audience (printable, no spaces or commas), "
                          f"got {audience!r}")
    changes["audience"] = audience
    if "port" in value:
        port = value["port"]
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ConfigError(f"{where}: key 'port' must be a port from 1 to 65535, got {port!r}")
        changes["port"] = port
    for key in ("principal_claim", "scope_claim"):
        if key in value:
            if not isinstance(value[key], str) or not _CLAIM.fullmatch(value[key]):
                raise ConfigError(f"{where}: key {key!r} must be a claim name, got {value[key]!r}")
            changes[key] = value[key]
    if "principal" in value:
        if not isinstance(value["principal"], str) or not _PRINCIPAL.fullmatch(value["principal"]):
            raise ConfigError(f"{where}: key 'principal' must be a principal name (letters, digits, '.', '_', "
                              f"'@', '-'), got {value['principal']!r}")
        changes["principal"] = value["principal"]
    if "clock_skew_s" in value:
        skew = value["clock_skew_s"]
        if not isinstance(skew, int) or isinstance(skew, bool) or not 0 <= skew <= 300:
            raise ConfigError(f"{where}: key 'clock_skew_s' must be whole seconds from 0 to 300, got {skew!r}")
        changes["clock_skew_s"] = skew
    return EmbeddedOAuthConfig(**changes)


_IDENTITY_KEYS = ("providers", "max_session_lifetime_s", "static_credentials_file")
_PROVIDER_KEYS = tuple(f.name for f in fields(TokenProviderConfig))


def _parse_identity(value: Any, where: str) -> IdentityConfig:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping with keys {', '.join(_IDENTITY_KEYS)}")
    changes: dict[str, Any] = {}
    for key, item in value.items():
        inner = f"{where}: key {key!r}"
        if key == "providers":
            if not isinstance(item, list):
                raise ConfigError(f"{inner} must be a list of providers, each with at least issuer and audiences")
            providers = tuple(_parse_provider(p, f"{inner} item {i + 1}") for i, p in enumerate(item))
            issuers = [p.issuer for p in providers]
            if len(set(issuers)) != len(issuers):
                raise ConfigError(f"{inner} names one issuer twice: each issuer is one provider")
            changes[key] = providers
        elif key == "max_session_lifetime_s":
            if not isinstance(item, (int, float)) or isinstance(item, bool) or not 1 <= item <= 7 * 86400:
                raise ConfigError(f"{inner} must be a number of seconds from 1 to 604800, got {item!r}")
            changes[key] = float(item)
        elif key == "static_credentials_file":
            if not isinstance(item, str) or not item.startswith("/"):
                raise ConfigError(f"{inner} must be an absolute path, got {item!r}")
            changes[key] = Path(item)
        else:
            raise ConfigError(f"{inner} is not an identity setting; valid: {', '.join(_IDENTITY_KEYS)}")
    return replace(IdentityConfig(), **changes)


def _parse_provider(value: Any, where: str) -> TokenProviderConfig:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping with at least issuer and audiences")
    for key in value:
        if key not in _PROVIDER_KEYS:
            raise ConfigError(f"{where}: key {key!r} is not a provider setting; valid: {', '.join(_PROVIDER_KEYS)}")
    for key in ("issuer", "audiences"):
        if key not in value:
            raise ConfigError(f"{where}: key {key!r} is required")
    changes: dict[str, Any] = {}
    for key in ("issuer", "jwks_uri"):
        if key in value:
            url = value[key]
            if not isinstance(url, str) or not url.startswith(("https://", "http://")):
                raise ConfigError(f"{where}: key {key!r} must be an http(s) URL, got {url!r}")
            changes[key] = url  # the issuer must equal the tokens' iss exactly (OIDC Discovery 4.3)
    for key in ("identity_claim", "groups_claim", "client_id_claim"):
        if key in value:
            if not isinstance(value[key], str) or not value[key]:
                raise ConfigError(f"{where}: key {key!r} must be a claim name")
            changes[key] = value[key]
    for key in ("audiences", "algorithms"):
        if key in value:
            items = value[key]
            if isinstance(items, str):
                items = [items]
            if not isinstance(items, list) or not items or not all(isinstance(i, str) and i for i in items):
                raise ConfigError(f"{where}: key {key!r} must be a non-empty list of strings")
            changes[key] = tuple(items)
    bad = [a for a in changes.get("algorithms", ()) if a not in TOKEN_ALGORITHMS]
    if bad:
        raise ConfigError(f"{where}: key 'algorithms' has {', '.join(map(repr, bad))}, which the appliance never "
                          f"accepts (no 'none', no HMAC); choose from {', '.join(TOKEN_ALGORITHMS)}")
    if "leeway_s" in value:
        leeway = value["leeway_s"]
        if not isinstance(leeway, (int, float)) or isinstance(leeway, bool) or not 0 <= leeway <= 300:
            raise ConfigError(f"{where}: key 'leeway_s' must be a number of seconds from 0 to 300, got {leeway!r}")
        changes["leeway_s"] = float(leeway)
    if "ca_file" in value:
        ca_file = value["ca_file"]
        if not isinstance(ca_file, str) or not ca_file.startswith("/"):
            raise ConfigError(f"{where}: key 'ca_file' must be an absolute path to a PEM file of CA certificates, "
                              f"got {ca_file!r}")
        from appliance.identity.provider_http import CaFileError, tls_context

        try:
            tls_context(ca_file)  # a wrong file fails the load, not the first token
        except CaFileError as e:
            raise ConfigError(f"{where}: key 'ca_file': {e}") from None
        changes["ca_file"] = Path(ca_file)
    changes.update(_parse_introspection(value, where))
    return TokenProviderConfig(**{"issuer": "", "audiences": (), **changes})


_INTROSPECTION_KEYS = ("introspection_endpoint", "introspection_client_id", "introspection_client_secret_file")


def _parse_introspection(value: dict, where: str) -> dict[str, Any]:
    given = [k for k in _INTROSPECTION_KEYS if k in value]
    changes: dict[str, Any] = {}
    if "introspection_cache_s" in value:
        cache_s = value["introspection_cache_s"]
        if not isinstance(cache_s, (int, float)) or isinstance(cache_s, bool) or not 0 <= cache_s <= 300:
            raise ConfigError(f"{where}: key 'introspection_cache_s' must be a number of seconds from 0 to 300, "
                              f"got {cache_s!r}")
        if not given:
            raise ConfigError(f"{where}: key 'introspection_cache_s' is set but introspection is not configured; "
                              f"set {', '.join(_INTROSPECTION_KEYS)} too")
        changes["introspection_cache_s"] = float(cache_s)
    if not given:
        return changes
    missing = [k for k in _INTROSPECTION_KEYS if k not in value]
    if missing:
        raise ConfigError(f"{where}: introspection needs {', '.join(_INTROSPECTION_KEYS)} together; "
                          f"{', '.join(map(repr, missing))} {'is' if len(missing) == 1 else 'are'} missing")
    url = value["introspection_endpoint"]
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: key 'introspection_endpoint' must be an http:// or https:// URL with a host, "
                          f"got {str(url)[:200]!r}")
    if "@" in parts.netloc or parts.fragment:
        raise ConfigError(f"{where}: key 'introspection_endpoint' must not carry user information or a fragment "
                          "(the secret goes in introspection_client_secret_file)")
    issuer = value.get("issuer")
    if isinstance(issuer, str) and issuer.startswith("https://") and parts.scheme != "https":
        raise ConfigError(f"{where}: key 'introspection_endpoint' must be https, as the issuer is: workload tokens "
                          f"and the client secret are sent to it, got {url[:200]!r}")
    client_id = value["introspection_client_id"]
    if not isinstance(client_id, str) or not client_id or not client_id.isprintable():
        raise ConfigError(f"{where}: key 'introspection_client_id' must be the client id (a non-empty printable "
                          f"string), got {client_id!r}")
    secret_file = value["introspection_client_secret_file"]
    if not isinstance(secret_file, str) or not secret_file.startswith("/"):
        raise ConfigError(f"{where}: key 'introspection_client_secret_file' must be an absolute path to a root-only "
                          f"file holding the client secret, got {secret_file!r}")
    changes.update(introspection_endpoint=url, introspection_client_id=client_id,
                   introspection_client_secret_file=Path(secret_file))
    return changes
