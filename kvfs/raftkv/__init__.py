"""The Raft-replicated KV store: everything with I/O around the pure Raft core
(:mod:`kvfs.raft`) -- the member's disk (:mod:`kvfs.raftkv.disk`), the replicated state
machine, the node loop that drives the core, the transport between members, the server and
the client.  The core decides; these modules persist, send, apply and serve what it decides,
in the order its host contract (``docs/raft.md``) requires.
"""
