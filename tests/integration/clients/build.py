"""Builds the compiled test clients (franz-go, the Java 4.x client) into a cache keyed by their sources.

    python tests/integration/clients/build.py      # scripts/setup: build whatever is missing
    from tests.integration.clients.build import franz_binary, java_argv

A build lands in `<cache>/clients/<name>-<hash>/`, where the hash covers the client's source files (and
for Java the Kafka version it compiles against), so an unchanged client is never rebuilt and a changed
one never runs stale. The cache is `$APPLIANCE_JAR_CACHE` or /var/cache/appliance, as for the jars.
A missing toolchain is an error naming it, never a skip.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
POM = HERE.parents[2] / "scripts" / "kafka" / "pom.xml"  # what scripts/setup resolves the jars from
CACHE = Path(os.environ.get("APPLIANCE_JAR_CACHE", "/var/cache/appliance"))
KAFKA_VERSION = re.search(r"<kafka\.version>(.+?)</kafka\.version>", POM.read_text()).group(1)
JARS = CACHE / f"kafka-{KAFKA_VERSION}"
# What the Java client needs at run time: the client library, its codecs, logging, Jackson for JSON and
# jose4j (the OAUTHBEARER login handler parses the tokens it fetches with it).
# Naming them (rather than the whole broker's jar directory) keeps class-path scanning, and startup, short.
JAVA_RUNTIME_ARTIFACTS = (
    f"kafka-clients-{KAFKA_VERSION}", "lz4-java", "snappy-java", "zstd-jni", "slf4j-api", "log4j-api", "log4j-core",
    "log4j-slf4j2-impl", "jackson-databind", "jackson-core", "jackson-annotations", "jose4j",
)
# Fast start for short-lived client runs: C1 only, the serial collector, a small heap.
JAVA_FLAGS = ("-Xmx128m", "-Xss512k", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto")


class BuildError(RuntimeError):
    pass


def _digest(files: list[Path], *extra: str) -> str:
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(HERE).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    for e in extra:
        h.update(e.encode() + b"\0")
    return h.hexdigest()[:16]


def _publish(build, name: str, digest: str) -> Path:
    """Build into a temporary directory beside the target, then rename it into place (atomic, so a
    concurrent or interrupted build never leaves a half-made client that looks finished)."""
    target = CACHE / "clients" / f"{name}-{digest}"
    if target.is_dir():
        return target
    print(f"building the {name} test client into {target}", file=sys.stderr)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Earlier builds stay: another checkout (a worktree, the main tree) may still run one of them.
    return target


def _run(argv: list[str], cwd: Path, what: str, env: dict | None = None) -> None:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:
        raise BuildError(f"{what} failed ({result.returncode}): {' '.join(argv)}\n{result.stdout}\n{result.stderr}")


def _go() -> str:
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        raise BuildError("the Go toolchain (`go`) is not installed; the franz-go test client needs it")
    return go


def franz_binary() -> Path:
    """The franz-go client (tests/integration/clients/franz), built with the pinned modules in go.sum."""
    src = HERE / "franz"
    files = [src / "go.mod", src / "go.sum", *src.glob("*.go")]

    def build(out: Path) -> None:
        # -mod=readonly: go.sum is the pin; a build never edits it or picks another version.
        env = {**os.environ, "GOFLAGS": "-mod=readonly -buildvcs=false", "CGO_ENABLED": "0"}
        _run([_go(), "build", "-trimpath", "-o", str(out / "franz"), "."], src, "building the franz-go client", env)

    return _publish(build, "franz", _digest(files)) / "franz"


def librdkafka_for_kcat() -> Path:
    """A directory holding `librdkafka.so.1`: the librdkafka confluent-kafka ships (2.16, built with
    libcurl), for kcat to load with LD_LIBRARY_PATH. Debian's librdkafka (2.0.2) was built without
    libcurl, so its kcat cannot fetch OIDC tokens (`sasl.oauthbearer.method=oidc`), and its SCRAM
    client is refused by Kafka 4.1 (it sends the client nonce twice in client-final-message); the
    same kcat on this library does both. The ABI is librdkafka's stable one."""
    try:
        import confluent_kafka
    except ImportError as e:
        raise BuildError(f"confluent-kafka does not import ({e}); kcat's OAUTHBEARER runs on its librdkafka") from None
    libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka*.so*"))
    if not found:
        raise BuildError(f"no librdkafka in {libs}: the confluent-kafka wheel ships one there")
    library = found[-1]

    def build(out: Path) -> None:
        (out / "librdkafka.so.1").symlink_to(library)

    return _publish(build, "librdkafka", hashlib.sha256(str(library).encode()).hexdigest()[:16])


def _java_classpath_jars() -> list[Path]:
    """One jar per artifact, whatever version the pom resolved (names are artifact-VERSION.jar)."""
    jars, missing = [], []
    for artifact in JAVA_RUNTIME_ARTIFACTS:
        pattern = rf"{re.escape(artifact)}(-[0-9][^/]*)?\.jar"
        found = sorted(j for j in JARS.glob(f"{artifact}*.jar") if re.fullmatch(pattern, j.name))
        if found:
            jars.append(found[-1])
        else:
            missing.append(artifact)
    if missing:
        raise BuildError(f"Kafka {KAFKA_VERSION} jars missing from {JARS}: {missing} (scripts/setup resolves them)")
    return jars


def java_classes() -> Path:
    """The compiled Java client (tests/integration/clients/java) and its log4j2 configuration."""
    src = HERE / "java"
    files = sorted(src.glob("*.java")) + [src / "log4j2.properties"]
    javac = shutil.which("javac")
    if javac is None:
        raise BuildError("javac is not installed; the Java test client needs a JDK")

    def build(out: Path) -> None:
        cp = ":".join(str(j) for j in _java_classpath_jars())
        _run([javac, "-Xlint:all", "-Werror", "-d", str(out), "-cp", cp, *map(str, files[:-1])], src,
             "compiling the Java client")
        shutil.copy(src / "log4j2.properties", out / "log4j2.properties")

    return _publish(build, "java", _digest(files, KAFKA_VERSION))


def java_argv(*args: str, system_properties: dict[str, str] | None = None) -> list[str]:
    """`java ... FamilyClient ARGS` with the fast-start flags and a class path of only what it needs;
    `system_properties` become -Dkey=value (Kafka reads a few settings only from there)."""
    java = shutil.which("java")
    if java is None:
        raise BuildError("java is not installed")
    cp = ":".join([str(java_classes()), *(str(j) for j in _java_classpath_jars())])
    defines = [f"-D{key}={value}" for key, value in (system_properties or {}).items()]
    return [java, *JAVA_FLAGS, *defines, "-cp", cp, "FamilyClient", *args]


def main() -> int:
    try:
        franz_binary()
        java_classes()
    except BuildError as e:
        print(f"build.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
