"""TFDS builders for the datasets psp_jax trains on."""
