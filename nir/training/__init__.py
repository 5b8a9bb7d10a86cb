"""Training: the Lightning module (:mod:`~nir.training.module`), the training values and the
data module (:mod:`~nir.training.batches`), losses, metrics, the optimiser, optimizer steps
inside one call (CUDA graphs), the callbacks (TensorBoard views, progress, guards) and the
run's fault handling (signals, the run directory's lock).

Lightning is imported only by the modules that hold Lightning objects (batches' data module,
module, callbacks); losses, metrics, steps and optim are plain torch (tested).
"""
