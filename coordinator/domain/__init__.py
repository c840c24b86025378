"""Pure domain: commands, `decide(state, command) -> events`, `evolve(state, event) -> state`.

No I/O here: no clocks (time arrives in commands), no randomness (ids arrive in commands),
no storage. Events are the protobuf payload messages of `labelweave.events.v1`.
"""
