"""What runs on the hosts: a GPT trained with GPipe pipelines, tensor-parallel stages and a
centralized parameter server."""

from trainer.layout import Layout, Position

__all__ = ["Layout", "Position"]
