"""rlhfctl: SFT, reward modelling and PPO on Ray Train, from one command line."""

__version__ = "0.1.0"
