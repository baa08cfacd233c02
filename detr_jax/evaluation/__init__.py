"""detr_jax.evaluation."""
