"""`appliance workload-ca`: where the certificate of the CA that signs terminated workload TLS is."""

from __future__ import annotations

import json
import time

import click

from appliance.proxy.workload_tls import CaFiles, WorkloadCaError, describe, load_or_create


@click.command("workload-ca")
@click.option("--pem", "as_pem", is_flag=True, help="Print the CA certificate itself (PEM) instead of its path.")
@click.option("--json", "as_json", is_flag=True, help="An object: certificate and key paths, subject, "
                                                      "SHA-256 fingerprint, expiry.")
@click.pass_context
def workload_ca(ctx, as_pem: bool, as_json: bool) -> None:
    """Print the path of the workload CA certificate, making the CA first if there is none.

    Workloads enrolled with --workload-tls terminate speak TLS to their
    broker addresses and the appliance answers as each broker, with a
    certificate this CA issued. Give every such workload this certificate
    as its trusted CA (ssl.ca.location, ssl.truststore.location with
    ssl.truststore.type=PEM, ssl_cafile); docs/tls.md has each client's
    settings. The CA's key stays in the state directory, root-only.

    \b
    Example:
      appliance workload-ca
      appliance workload-ca --pem > /etc/pki/appliance-workload-ca.pem
      kcat -b 10.0.0.5:9093 -L -X security.protocol=ssl -X ssl.ca.location=$(appliance workload-ca)
    """
    files = CaFiles.under(ctx.obj.state_dir)
    try:
        authority, made = load_or_create(files, time.time())
    except (WorkloadCaError, OSError) as e:
        raise click.ClickException(str(e)) from None
    if made:
        click.echo(f"made a new workload CA: {files.cert} (its key {files.key}, root-only)", err=True)
    if as_pem:
        click.echo(authority.cert_pem.decode(), nl=False)
    elif as_json:
        click.echo(json.dumps(describe(authority, files), indent=2))
    else:
        click.echo(str(files.cert))
