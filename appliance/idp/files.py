"""Where one local Keycloak instance keeps everything, under its state directory.

    <state_dir>/                      mode 0700: secrets and the realm file live here
      client-secrets.json             mode 0600: {"<client id>": "<secret>"}, made once, kept across restarts
      admin-password                  mode 0600: the bootstrap admin's password (user `admin`)
      signing-key.pem                 mode 0600: the realm's RS256 private key and its certificate, kept
      instance.json                   what the running instance was started with: pid, port, realm, clients
      keycloak.log                    Keycloak's console output, appended per start
      keycloak-<version>/             a private copy of the distribution (its build output and data/ are its own)
        data/import/<realm>.json      mode 0600: the realm Keycloak imports at every start
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from appliance.idp.distribution import KEYCLOAK_VERSION


@dataclass(frozen=True, slots=True)
class IdpFiles:
    state_dir: Path

    @property
    def client_secrets(self) -> Path:
        return self.state_dir / "client-secrets.json"

    @property
    def admin_password(self) -> Path:
        return self.state_dir / "admin-password"

    @property
    def signing_key(self) -> Path:
        return self.state_dir / "signing-key.pem"

    @property
    def instance(self) -> Path:
        return self.state_dir / "instance.json"

    @property
    def log(self) -> Path:
        return self.state_dir / "keycloak.log"

    @property
    def start_lock(self) -> Path:
        return self.state_dir / ".start.lock"

    @property
    def home(self) -> Path:
        return self.state_dir / f"keycloak-{KEYCLOAK_VERSION}"

    @property
    def home_complete(self) -> Path:
        """Written last when the copy of the distribution is whole; an interrupted copy is redone."""
        return self.home / ".appliance-copy-complete"

    @property
    def kc_sh(self) -> Path:
        return self.home / "bin" / "kc.sh"

    @property
    def import_dir(self) -> Path:
        return self.home / "data" / "import"

    def realm_file(self, realm_name: str) -> Path:
        return self.import_dir / f"{realm_name}.json"
