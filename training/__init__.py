"""Training side (needs TensorFlow): datasets, architectures, the training loop, evaluation.

The data loader and metrics import only numpy and the runtime, so they work without
TensorFlow; ``train`` and ``architectures`` need the ``train`` extra.
"""
