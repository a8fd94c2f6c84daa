"""The Keycloak server distribution: its version, where scripts/setup unpacks it, and what makes it usable.

scripts/setup resolves `org.keycloak:keycloak-quarkus-dist:<version>:zip` from
Maven Central with scripts/keycloak/pom.xml and unpacks it once into
`<jar cache>/keycloak-<version>/`. That copy is never run: Keycloak writes its
build output (lib/quarkus) and its data (data/) into its own home, so every
instance runs from a private copy in its state directory (see server.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from appliance.idp.errors import IdpError

KEYCLOAK_VERSION = "26.5.6"  # must match <keycloak.version> in scripts/keycloak/pom.xml (a test checks)

# The files a usable distribution has; their absence means an interrupted or foreign unpack.
_REQUIRED = ("bin/kc.sh", "lib/quarkus-run.jar", "conf/keycloak.conf")


def distribution_dir(jar_cache: Path) -> Path:
    return Path(jar_cache) / f"keycloak-{KEYCLOAK_VERSION}"


def check_distribution(home: Path) -> Path:
    """`home` if it holds a complete Keycloak distribution, else IdpError saying how to get one."""
    missing = [name for name in _REQUIRED if not (home / name).is_file()]
    if missing:
        raise IdpError(
            f"{home} holds no complete Keycloak {KEYCLOAK_VERSION} distribution (missing {', '.join(missing)}); "
            "run scripts/setup to resolve it from Maven Central (scripts/keycloak/pom.xml)"
        )
    return home


def find_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise IdpError("no `java` on PATH; Keycloak needs Java 17 or newer (scripts/setup installs openjdk-17-jre-headless)")
    return java
