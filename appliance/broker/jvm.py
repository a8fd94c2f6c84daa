"""The JVM side: finding java, checking the jar cache, and the command lines of the server and the tools.

Every Kafka JVM runs from the jars scripts/setup resolved from
scripts/kafka/pom.xml into `<jar_cache>/kafka-<version>/`, with the whole
directory as its classpath.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from appliance.broker.errors import BrokerError

KAFKA_VERSION = "4.1.1"  # must match <kafka.version> in scripts/kafka/pom.xml

# Kafka's own start script's G1 settings; the heap comes from the config.
SERVER_OPTIONS = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
# Tools live for seconds: the C1 compiler alone and the serial collector start fastest.
TOOL_OPTIONS = ("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true")


def jar_dir(jar_cache: Path) -> Path:
    return Path(jar_cache) / f"kafka-{KAFKA_VERSION}"


def classpath(jars: Path) -> str:
    """The launcher expands `dir/*` itself, so the command line stays short in ps."""
    return f"{jars}/*"


def find_java(jars: Path) -> str:
    """The java executable, after checking that `jars` holds a complete Kafka with working logging."""
    java = shutil.which("java")
    if java is None:
        raise BrokerError("no `java` on PATH; the embedded broker needs Java 17 or newer (run scripts/setup)")
    if not any(jars.glob("kafka_2.13-*.jar")) or not any(jars.glob("kafka-tools-*.jar")):
        raise BrokerError(
            f"{jars} holds no Kafka {KAFKA_VERSION} jars (kafka_2.13, kafka-tools); "
            "run scripts/setup to resolve them from scripts/kafka/pom.xml"
        )
    # Kafka's poms pull slf4j-api 1.7, which cannot find log4j's slf4j2 binding:
    # the server would then log nothing at all. The pom pins 2.x; an old cache may not have it.
    slf4j = sorted(p.name for p in jars.glob("slf4j-api-*.jar"))
    if not slf4j or any(not name.startswith("slf4j-api-2.") for name in slf4j):
        raise BrokerError(
            f"{jars} has {', '.join(slf4j) or 'no slf4j-api'}; the broker's log4j2 binding needs slf4j-api 2.x "
            f"alone, or every log line is dropped. Delete {jars} and run scripts/setup again"
        )
    return java


def tool_argv(java: str, jars: Path, log4j2: Path, main_class: str, *args: str) -> list[str]:
    """A short-lived Kafka tool's command line; `main_class` may also be a java `@argfile`."""
    return [java, *TOOL_OPTIONS, f"-Dlog4j2.configurationFile={log4j2}", "-cp", classpath(jars), main_class, *args]


def server_argv(java: str, jars: Path, log4j2: Path, heap: str, server_properties: Path,
                system_properties: dict[str, str] | None = None) -> list[str]:
    defines = [f"-D{name}={value}" for name, value in (system_properties or {}).items()]
    return [java, f"-Xmx{heap}", f"-Xms{heap}", *SERVER_OPTIONS, f"-Dlog4j2.configurationFile={log4j2}", *defines,
            "-cp", classpath(jars), "kafka.Kafka", str(server_properties)]
