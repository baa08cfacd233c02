"""Entry point: `python -m detr_jax.main --config=configs/shapes.py --workdir=DIR`.

Any config field can be overridden with `--config.field=value` (e.g. `--config.total_steps=100`).

Several processes (hosts): under SLURM (`srun`) and on Cloud TPU pod slices `jax.distributed` is
initialised from the environment; elsewhere give every process `--coordinator_address=HOST:PORT
--num_processes=N --process_id=I` (launch/local.py does so for N local CPU processes). See
launch/README.md. Processes other than 0 log warnings and errors only.

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
from detr_jax.config_validation import ConfigError
from detr_jax.core import distributed
from detr_jax.core.checkpointing import CheckpointMismatchError
from detr_jax.data.coco_json import DataError
from detr_jax.models import PartConfigError
from detr_jax.optim import ParamRuleError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])
flags.DEFINE_string("coordinator_address", "", "Multi-process: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", 0, "Multi-process: the process count (0: from the cluster).")
flags.DEFINE_integer("process_id", -1, "Multi-process: this process's index in [0, N).")
flags.DEFINE_string("local_device_ids", "", "Multi-process: this process's devices, e.g. 0,1.")


class _QuietLibraries(std_logging.Filter):
    """Drops INFO records from orbax (a dozen lines per checkpoint) and XLA warnings noise."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    try:
        distributed.initialize(FLAGS)
    except ValueError as e:
        logging.error("%s", e)
        sys.exit(2)
    if jax.process_index() != 0:
        logging.set_verbosity(logging.WARNING)
    logging.info(
        "JAX %s, %d process(es), devices: %s", jax.__version__, jax.process_count(), jax.devices()
    )
    try:
        metrics = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ConfigError, CheckpointMismatchError, DataError, ParamRuleError,
            PartConfigError) as e:
        logging.error("%s", e)
        sys.exit(2)
    except train.NonFiniteStop as e:
        logging.error("%s", e)
        sys.exit(3)
    logging.info("final metrics: %s", metrics)


if __name__ == "__main__":
    app.run(main)
