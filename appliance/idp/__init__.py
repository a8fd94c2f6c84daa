"""The local identity provider: a Keycloak the appliance runs for the demo and the tests.

Workloads authenticate with short-lived OIDC access tokens (client_credentials)
from their identity provider; this package runs one on the appliance host so
the demo and the integration tests have a real provider to get them from.

    realm           pure: the declarative realm table (Realm, ServiceClient), fixed user ids, Keycloak's JSON
    server          the process owner: start (dev mode, 127.0.0.1), readiness, status, stop
    tokens          HTTP to any OIDC provider: discovery, client_credentials tokens
    client_secrets  the clients' secrets and the admin password, 0600 in the state directory
    signing_key     the realm's RS256 key and certificate, 0600 in the state directory, kept across restarts
    files           the state directory's layout
    instance        pure: what a started server was started with (instance.json), checked on read
    distribution    the Keycloak version, where scripts/setup unpacks it, java
"""

from appliance.idp.distribution import KEYCLOAK_VERSION
from appliance.idp.errors import IdpError
from appliance.idp.realm import DEMO_REALM, Endpoints, Realm, RealmError, ServiceClient, service_account_id
from appliance.idp.instance import ClientInfo
from appliance.idp.server import DEFAULT_PORT, IdpStatus, LocalKeycloak
from appliance.idp.tokens import TokenRefused, client_credentials_token

__all__ = [
    "DEFAULT_PORT",
    "DEMO_REALM",
    "KEYCLOAK_VERSION",
    "ClientInfo",
    "Endpoints",
    "IdpError",
    "IdpStatus",
    "LocalKeycloak",
    "Realm",
    "RealmError",
    "ServiceClient",
    "TokenRefused",
    "client_credentials_token",
    "service_account_id",
]
