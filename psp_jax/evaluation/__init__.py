"""Evaluation: IoU metrics, test protocols, the evaluator, the TensorBoard preview and colour
masks. Imports base and models; a run's data comes in as an object."""
