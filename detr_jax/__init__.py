"""detr_jax: DETR (end-to-end object detection with transformers) in JAX/Flax."""

__version__ = "0.2.0"
# Checkpoints written before this version group the optimiser state differently (see
# detr_jax/core/checkpointing.py, `check_layout`).
OPT_STATE_LAYOUT_SINCE = "0.2.0"
