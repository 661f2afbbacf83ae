"""finegrained: fine-grained, multi-reward RLHF (Wu et al. 2023) as a toolkit."""

__version__ = "0.1.0"
