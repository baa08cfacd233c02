"""detr_jax.ops."""
