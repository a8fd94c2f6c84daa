"""What the proxy knows of each Kafka API: its name and the versions it can parse.

The parseable range comes from kio's generated schemas. A few APIs are capped
lower on purpose: from Produce v13 and Fetch v13 requests name topics by id
only, and the proxy attributes (and later authorizes) by topic name, so it
offers clients the last versions that carry names.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache

from kio.index import load_request_schema, load_response_schema
from kio.schema.index import api_key_map, schema_name_map

PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
OFFSET_COMMIT = 8
OFFSET_FETCH = 9
SASL_HANDSHAKE = 17
API_VERSIONS = 18
CREATE_TOPICS = 19
DELETE_TOPICS = 20
SASL_AUTHENTICATE = 36

# Highest version offered, where lower than what kio parses, and why.
_CAPS = {
    PRODUCE: 12,  # v13 names topics by id only
    FETCH: 12,  # v13+ names topics by id only
}


@dataclass(frozen=True, slots=True)
class VersionRange:
    min: int
    max: int


@lru_cache(maxsize=1024)  # bounded: any api key a workload writes reaches it
def api_name(api_key: int) -> str:
    """`Produce`, `Fetch`, ... in Kafka's own spelling; `Unknown(N)` for keys kio lacks."""
    name = api_key_map.get(api_key)
    if name is None:
        return f"Unknown({api_key})"
    return "".join(part.capitalize() for part in name.split("_"))


@lru_cache(maxsize=1024)  # bounded: any api key a workload writes reaches it
def parseable(api_key: int) -> VersionRange | None:
    """The request versions of this API the proxy can decode, or None for an unknown API."""
    name = api_key_map.get(api_key)
    if name is None:
        return None
    versions = sorted(schema_name_map[name])
    high = min(versions[-1], _CAPS.get(api_key, versions[-1]))
    return VersionRange(versions[0], high)


def can_parse(api_key: int, version: int) -> bool:
    known = parseable(api_key)
    return known is not None and known.min <= version <= known.max


def has_schema(api_key: int, version: int) -> bool:
    """Whether kio has this version's request and response schemas, offered or not (the proxy can then
    answer a request of it, for example UNSUPPORTED_VERSION, in a form the client reads). Not cached:
    any api key and version a workload writes reach it."""
    name = api_key_map.get(api_key)
    return name is not None and version in schema_name_map[name]


@cache
def request_class(api_key: int, version: int) -> type:
    return load_request_schema(api_key, version)


@cache
def response_class(api_key: int, version: int) -> type:
    return load_response_schema(api_key, version)


@cache
def request_is_flexible(api_key: int, version: int) -> bool:
    """Whether the request header is v2 (with tagged fields)."""
    return bool(request_class(api_key, version).__flexible__)


@cache
def response_header_is_flexible(api_key: int, version: int) -> bool:
    """ApiVersions responses always use header v0, whatever the request version."""
    if api_key == API_VERSIONS:
        return False
    return bool(response_class(api_key, version).__flexible__)
