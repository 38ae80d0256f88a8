"""Network shaping: profiles and pair matrices, the tc tree, the host agent, the delay node."""
