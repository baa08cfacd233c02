"""Entry point: `python -m detr_jax.main --config=configs/shapes.py --workdir=DIR`.

Any config field can be overridden with `--config.field=value` (e.g. `--config.total_steps=100`).

Exit status: 0 when training finished or was stopped by SIGTERM/SIGINT with a checkpoint (rerun
the same command to resume); 2 for an invalid config, an unusable dataset file (DataError) or a
checkpoint that does not fit it; 3 when training stopped after too many consecutive non-finite
steps. Errors are logged without a traceback, since they name the cause.
"""

from __future__ import annotations

import logging as std_logging
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from detr_jax import train
from detr_jax.checkpointing import CheckpointMismatchError
from detr_jax.config_validation import ConfigError
from detr_jax.data.coco_json import DataError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(std_logging.Filter):
    """Drops INFO records from orbax (a dozen lines per checkpoint) and XLA warnings noise."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    logging.info(
        "JAX %s, %d process(es), devices: %s", jax.__version__, jax.process_count(), jax.devices()
    )
    try:
        metrics = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ConfigError, CheckpointMismatchError, DataError) as e:
        logging.error("%s", e)
        sys.exit(2)
    except train.NonFiniteStop as e:
        logging.error("%s", e)
        sys.exit(3)
    logging.info("final metrics: %s", metrics)


if __name__ == "__main__":
    app.run(main)
