"""The audit database: every session, operation and event the appliance sees, in SQLite.

`records` holds the pure record types; `store` the schema, its named
append-only migrations and the read-side queries; `writer` the one thread that
owns the write connection in the serving process; `excerpts` the record
excerpts it builds, off the proxy's event loop, for requests recorded at depth
excerpts (docs/recording.md, Depth).
"""
