"""Network shaping: profiles and pair matrices, the tc tree, the host agent and its leases,
fleet-wide verbs, and the client of the delay node's agent.

`profile.py` (profiles, with `units.py`) and `pairs.py` (pair matrices); `tree.py` (the tc tree
in one place) and `shaper.py` (applying it with pyroute2, reading it back); `agent.py` (the host
agent: one API with its lease, its state folder in `leases.py`; `python -m netem.agent`) and
`agentserve.py` (its persistent form); `fleet.py` (fleet-wide verbs, asking the hosts' agents
through `served.py` or the delay node's through `mailbox.py`); `probe.py` (RTT, throughput,
receive share); `tcp.py` (the hosts' TCP settings and their presets).
"""
