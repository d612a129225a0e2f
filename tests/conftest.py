"""Test-wide setup: four simulated CPU devices (for pmap tests), TF kept off accelerators."""

import os

# Must happen before jax is imported anywhere in the test process.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
