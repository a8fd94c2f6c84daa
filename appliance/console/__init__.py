"""The web console: live sessions, the audit, approvals, grants, replay and the record's verify status.

`appliance console` serves it from its own process beside `appliance serve`,
reading the same state directory (docs/console.md). The parts:

- settings.py: the `console:` configuration mapping (pure);
- login.py: OIDC authorization-code login with PKCE, the ID token's checks and the roles (pure);
- provider.py: the provider's discovery, JWKS and token endpoint (the I/O);
- pages.py: what each page shows and what each action does, as data in and data out (pure);
- state.py: the state directory's files: audit (read-only), approvals.db, status.json (the I/O);
- app.py: the Starlette application, the one HTTP shell over the rest.

Only settings.py is imported by the configuration; the rest needs Starlette.
"""
