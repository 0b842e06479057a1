"""Pure tensor math for distribution matching: MMD kernels and moment diagnostics.

Nothing here does I/O or knows about models, data or Ray.
"""
from m3d_condense.kernels.mmd import ESTIMATORS, KERNELS, kernel_matrix, mmd2
from m3d_condense.kernels.moments import MOMENT_ORDERS, moment_gaps

__all__ = ["KERNELS", "ESTIMATORS", "kernel_matrix", "mmd2", "MOMENT_ORDERS", "moment_gaps"]
