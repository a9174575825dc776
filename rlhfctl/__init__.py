"""rlhfctl: SFT, reward modelling, PPO, DPO and GRPO on Ray Train, from one command line."""

__version__ = "0.1.0"
