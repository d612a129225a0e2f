"""The bottom layer: the batch contract (spec), the error type of refused input, image files
as RGB pixels, and platform setup. Imports nothing else of psp_jax."""
