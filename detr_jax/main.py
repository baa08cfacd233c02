"""Entry point: `python -m detr_jax.main --config=configs/shapes.py --workdir=DIR`.

Any config field can be overridden with `--config.field=value` (e.g. `--config.total_steps=100`).
"""

from __future__ import annotations

import logging as std_logging

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from detr_jax import train

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
    logging.info("JAX %s, %d process(es), devices: %s", jax.__version__, jax.process_count(),
                 jax.devices())
    metrics = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    logging.info("final metrics: %s", metrics)


if __name__ == "__main__":
    app.run(main)
