"""What the proxy knows about workload authentication, beyond one session: providers, migration
credentials, revocations and the session lifetime. One per serving process, owned by the service;
each session's `WorkloadSasl` is made from it (`sasl_for`)."""

from __future__ import annotations

from typing import Callable

from appliance.identity.binding import Binding, Proof
from appliance.identity.providers import TokenProviders
from appliance.identity.revocations import Revocations
from appliance.policy.model import Policy
from appliance.proxy.workload_sasl import WorkloadSasl


class WorkloadIdentity:
    def __init__(self, *, providers: TokenProviders | None = None, statics=None,
                 revocations: Revocations | None = None, max_lifetime_s: float = 3600.0,
                 policy: Callable[[], Policy] | None = None) -> None:
        self.providers = providers or TokenProviders(())
        self.statics = statics  # appliance.identity.static_credentials.StaticCredentials, or None
        self.revocations = revocations or Revocations()
        self.max_lifetime_s = max_lifetime_s
        self._policy = policy

    def sasl_for(self, binding: Binding) -> WorkloadSasl:
        return WorkloadSasl(binding, statics=self.statics, static_refused=self._static_refused,
                            revoked=self._revoked, tokens_configured=self.providers.configured,
                            max_lifetime_s=self.max_lifetime_s)

    def _revoked(self, proof: Proof, identity: str, now: float) -> str | None:
        found = self.revocations.covering(proof, identity, now)
        return None if found is None else found.describe()

    def _static_refused(self, identity: str) -> str | None:
        if self._policy is None:
            return None
        return self._policy().static_credentials_refused(identity)
