"""The data directory's one-time set-up: the two users' credentials and the KRaft format.

Credentials come first and are written before formatting, so a format that
fails is retried with the same passwords; a formatted directory whose
credentials file has gone is an error, because the SCRAM credentials inside
the metadata log can no longer be matched.
"""

from __future__ import annotations

import base64
import datetime
import logging
import os
import secrets
import subprocess
from pathlib import Path

from appliance.broker import jvm
from appliance.broker.credentials import (
    CredentialsError,
    UpstreamCredentials,
    generate,
    load_credentials,
    write_credentials,
)
from appliance.broker.certificates import Authority, load_authority
from appliance.broker.errors import BrokerError
from appliance.broker.properties import APPLIANCE_USER, CLIENT_CERTIFICATE_CN, INTRUDER_USER, BrokerFiles
from appliance.config import EmbeddedBrokerConfig

log = logging.getLogger(__name__)

SCRAM_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256")


def ensure_credentials(files: BrokerFiles) -> tuple[UpstreamCredentials, UpstreamCredentials]:
    """The appliance's and the intruder's credentials, generated (mode 0600) before the first format."""
    formatted = files.meta_properties.exists()
    result = []
    for user in (APPLIANCE_USER, INTRUDER_USER):
        path = files.credentials_file(user)
        if path.exists():
            try:
                loaded = load_credentials(path)
            except CredentialsError as e:
                raise BrokerError(str(e)) from None
            if not isinstance(loaded, UpstreamCredentials):
                raise BrokerError(f"{path}: the embedded broker's {user!r} needs a SCRAM password, not "
                                  f"{loaded.mechanism} credentials; an OAUTHBEARER client belongs in a file of "
                                  "its own (config upstream_credentials)")
            result.append(loaded)
        elif formatted:
            raise BrokerError(
                f"{path} is missing, but {files.kafka_data} was formatted with {user!r}'s SCRAM credentials; "
                f"restore the file, or delete {files.kafka_data} to format afresh (losing every topic)"
            )
        else:
            credentials = generate(user)
            write_credentials(path, credentials)
            result.append(credentials)
    return result[0], result[1]


_CA_NAME = "appliance embedded broker CA"
# Names the TLS listeners' certificate carries besides the listener IPs, for `upstream_tls.server_names`.
BROKER_DNS_NAMES = ("localhost", "broker.appliance.internal")


def ensure_tls_files(files: BrokerFiles, config: EmbeddedBrokerConfig, now: datetime.datetime) -> None:
    """The TLS listeners' PEM files: the CA kept from an earlier start (or made now), fresh leaf certificates.

    Keystores and keys are mode 0600; the CA certificate is readable by all, it is public."""
    files.tls_dir.mkdir(mode=0o700, exist_ok=True)
    authority = None
    if files.ca_cert.exists() and files.ca_key.exists():
        try:
            authority = load_authority(files.ca_cert.read_bytes(), files.ca_key.read_bytes())
        except ValueError as e:
            log.warning("%s: unusable (%s); making a new CA", files.ca_cert, e)
        else:
            if authority.certificate.not_valid_after < now.replace(tzinfo=None) + datetime.timedelta(days=30):
                authority = None  # close to its end: a new one, rather than listeners failing in a month
    if authority is None:
        authority = Authority.create(_CA_NAME, now)
        write_private(files.ca_key, authority.key_pem().decode())
        files.ca_cert.write_bytes(authority.cert_pem)
        files.ca_cert.chmod(0o644)
    hosts = (config.host4,) + ((config.host6,) if config.host6 else ()) + BROKER_DNS_NAMES
    server = authority.issue("embedded broker", now, hosts=hosts)
    write_private(files.server_keystore, server.chain_pem.decode())
    expired = authority.issue("embedded broker (expired)", now, hosts=hosts, days=1,
                              not_before=now - datetime.timedelta(days=10))
    write_private(files.expired_keystore, expired.chain_pem.decode())
    named = authority.issue("embedded broker (by name)", now, hosts=BROKER_DNS_NAMES)
    write_private(files.named_keystore, named.chain_pem.decode())
    client = authority.issue(CLIENT_CERTIFICATE_CN, now, client=True)
    files.client_cert.write_bytes(client.cert_pem)
    write_private(files.client_key, client.key_pem.decode())


def format_storage(files: BrokerFiles, java: str, jars: Path, users: tuple[UpstreamCredentials, ...],
                   timeout: float, cluster: str | None = None) -> None:
    """`kafka.tools.StorageTool format`, creating each user's SCRAM credentials (KIP-900); `cluster`: the id
    every node of a multi-node cluster shares (default: a new one).

    The passwords go in a java @argfile (mode 0600, deleted afterwards), not on
    the command line, where any local user could read them in /proc. The
    launcher expands an @argfile only before the main class, so the file holds
    the main class too.
    """
    args = ["kafka.tools.StorageTool", "format", "--cluster-id", cluster or cluster_id(),
            "--config", str(files.server_properties)]
    for user in users:
        for mechanism in SCRAM_MECHANISMS:
            args += ["--add-scram", f"{mechanism}=[name={user.username},password={user.password}]"]
    argfile = files.data_dir / "format.args"
    write_private(argfile, "".join(argfile_quote(a) + "\n" for a in args))
    try:
        done = subprocess.run(jvm.tool_argv(java, jars, files.tools_log4j2_config, f"@{argfile}"),
                              capture_output=True, text=True, timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        raise BrokerError(f"formatting {files.kafka_data} did not finish in {timeout:.0f} s") from None
    finally:
        argfile.unlink(missing_ok=True)
    output = done.stdout + done.stderr
    files.format_log.write_text(output)
    if done.returncode != 0 or not files.meta_properties.exists():
        raise BrokerError(f"formatting {files.kafka_data} failed (exit {done.returncode}):\n{output.strip()}")
    log.info("formatted %s: %s", files.kafka_data, done.stdout.strip())


def cluster_id() -> str:
    """A Kafka Uuid as the storage tool wants it: 16 random bytes, URL-safe base64, no padding, no leading '-'."""
    while True:
        text = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def argfile_quote(arg: str) -> str:
    """One argument of a java @argfile: double-quoted, with backslashes and quotes escaped."""
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it may hold passwords)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
