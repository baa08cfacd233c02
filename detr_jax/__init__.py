"""detr_jax: DETR (end-to-end object detection with transformers) in JAX/Flax."""

__version__ = "0.1.0"
