"""Network shaping: profiles and pair matrices, the tc tree, the host agent and its leases,
fleet-wide verbs, and the client of the delay node's agent."""
