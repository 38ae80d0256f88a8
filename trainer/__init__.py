"""What runs on the hosts: a GPT trained with GPipe pipelines and a centralized parameter server."""

from trainer.layout import position_of, rank_of

__all__ = ["position_of", "rank_of"]
