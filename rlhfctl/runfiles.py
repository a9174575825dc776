"""The names of the files and folders a run and an export write: defined here once, imported everywhere.

A run's ``general.output_dir``::

    metrics.jsonl            one JSON object per logged step (training.metrics)
    events.jsonl             the run's timeline: every progress event, append-only (training.metrics)
    samples.jsonl            PPO's example responses (training.metrics)
    resolved_config.toml     the config the run used, after overrides (config.render)
    tensorboard/             TensorBoard events (general.report_to, by default when tensorboardX is installed)
    wandb/                   the W&B run, offline unless WANDB_MODE says otherwise (general.report_to = ["wandb"])
    mlflow/                  the local MLflow store, mlflow.db (general.report_to = ["mlflow"], no MLFLOW_TRACKING_URI)
    trackers.json            the W&B and MLflow run ids, so --resume continues the same runs (training.trackers)
    <stage>_run/             Ray Train's storage: checkpoint_<step>/ folders (training.checkpoint's format), its
                             own snapshot files

An export (``general.checkpoint_dir``): the Hugging Face folder, plus ``reward_stats.json`` for a reward model
(read by PPO's score normalisation and by ``rm eval``/``rm score``) and ``value_model/`` for PPO.
"""

from __future__ import annotations

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"
SAMPLES_FILE = "samples.jsonl"
RESOLVED_CONFIG_FILE = "resolved_config.toml"
TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"  # W&B's own folder name inside the dir it is given (output_dir)
MLFLOW_DIR = "mlflow"
TRACKERS_FILE = "trackers.json"
CHECKPOINT_PREFIX = "checkpoint_"  # + the step, 8 digits: one folder per checkpoint inside <stage>_run/
RAY_SNAPSHOT_GLOB = "checkpoint_manager_snapshot*"  # Ray Train's own run state beside the checkpoints

REWARD_STATS_FILE = "reward_stats.json"
VALUE_MODEL_DIR = "value_model"


def run_dir_name(stage: str) -> str:
    """The folder inside ``output_dir`` that holds a stage's checkpoints (Ray Train's ``RunConfig.name``)."""
    return f"{stage}_run"
