"""Just-in-time approvals: requests an `effect: approve` rule holds until a person decides (docs/approvals.md).

`model` is the pure part: what a held request needs, approval requests and
their votes, grants and what they cover. `store` keeps them in
`<state_dir>/approvals.db`, shared by the serving process and the CLI.
`gate` is what a connection's policy context asks: a grant that covers the
decision, or a need to hold for. `desk` is the serving process's side: it
files the requests of held sessions, and answers them when decided or when
their hold runs out.
"""
