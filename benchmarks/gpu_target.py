"""XLA GPU target descriptions: compiling for a GPU that is not there.

XLA's GPU compiler reads what it needs of a device from a `GpuTargetConfigProto` (text
format); with one, `jax.experimental.topologies.get_topology_desc(platform='cuda',
target_config=..., topology='1x1xN')` gives N compile-only GPU devices on a machine with
none (the `[cuda12]` extra installs the compiler; JAX's own devices stay the CPU's).
Nothing is autotuned without a device, so cuDNN's convolution workspaces are not in the
temporaries, and XLA gives no cost analysis for such a program.

The figures are the architecture's and the board's published ones (NVIDIA's H100 data
sheet and CUDA C++ Programming Guide, compute capability 9.0); `device_memory_size` is
what an H100 SXM 80GB reports as its total memory.
"""

H100_SXM = {
    'name': 'NVIDIA H100 80GB HBM3',
    'compute_capability': (9, 0),
    'core_count': 132,                        # SMs
    'fpus_per_core': 128,                     # FP32 lanes per SM
    'clock_rate_ghz': 1.98,                   # boost clock
    'device_memory_size': 84_942_979_072,     # bytes (79.1 GiB)
    'memory_bandwidth': 3_352_320_000_000,    # bytes/s
    'l2_cache_size': 50 * 2**20,
    'shared_memory_per_block': 48 * 2**10,
    'shared_memory_per_block_optin': 227 * 2**10,
    'shared_memory_per_core': 228 * 2**10,
    'threads_per_block_limit': 1024,
    'threads_per_warp': 32,
    'threads_per_core_limit': 2048,
    'block_dim_limit': (2**31 - 1, 65535, 65535),
}

TARGETS = {'h100': H100_SXM}


def target_config(target: dict) -> str:
  """`target` as the text-format GpuTargetConfigProto XLA's GPU compiler reads."""
  major, minor = target['compute_capability']
  x, y, z = target['block_dim_limit']
  fields = {k: v for k, v in target.items()
            if k not in ('name', 'compute_capability', 'block_dim_limit')}
  lines = [f'  {k}: {v}' for k, v in fields.items()]
  lines += [f'  block_dim_limit_x: {x}', f'  block_dim_limit_y: {y}',
            f'  block_dim_limit_z: {z}',
            f'  cuda_compute_capability {{ major: {major} minor: {minor} }}']
  return '\n'.join(['gpu_device_info {', *lines, '}', 'platform_name: "CUDA"',
                    f'device_description_str: "{target["name"]}"', ''])
