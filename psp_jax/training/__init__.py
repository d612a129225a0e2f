"""Training: the train loop, the pure step and its pmap, losses, optimizer, checkpoints, the
workdir lock and preemption. Imports every layer below it."""
