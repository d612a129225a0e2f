"""The TFDS builders psp_jax adds, one module per dataset, each named in its catalog row
(psp_jax.data.catalog); importing a module registers its builder with TFDS."""
