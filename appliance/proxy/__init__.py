"""The proxy: a pure per-connection session and one I/O shell.

`session` is sans-io: events come in (`events`), commands go out (`commands`),
and it never blocks, reads a clock or touches a socket; time arrives as an
argument. `server` is the only module with sockets: it accepts steered
connections, asks `original_dst` (the kernel) who is calling and where they
were going, opens the upstream connection and carries out the commands each
session returns.
"""
