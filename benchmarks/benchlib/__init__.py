"""Building blocks of rlhfctl's benchmark harness (``benchmarks/run.py``).

The harness drives rlhfctl only through its command line and reads the run's ``metrics.jsonl``; TRL runs in its
own subprocess with its own ``PYTHONPATH`` (``benchmarks/.trl-*``), so neither tool's internals are imported here.
Nothing in this package imports torch at module level: the pure helpers are tested quickly.
"""
