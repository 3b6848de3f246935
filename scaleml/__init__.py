"""ScaleML: sparse and quantized collectives for data-parallel machine learning over MPI.

>>> from mpi4py import MPI
>>> import scaleml
>>> comm = scaleml.Comm(MPI.COMM_WORLD)          # drop-in for the mpi4py communicator
>>> comm.Allreduce(grad, out, op=MPI.SUM)
>>> total = scaleml.sparse_allreduce(indices, values, n, MPI.COMM_WORLD)
>>> ef = scaleml.compress.ErrorFeedback(scaleml.compress.TopK(ratio=0.01))
>>> g = scaleml.topk_allreduce(grad, MPI.COMM_WORLD, error_feedback=ef, name="fc1")
>>> state = scaleml.AdaptiveAllreduceState(pi=32)
>>> g = scaleml.adaptive_allreduce(weight_grad, MPI.COMM_WORLD, state=state, name="fc1")
>>> req = comm.Iallreduce(grad, out)               # nonblocking: req.Wait()
>>> q = scaleml.compress.QSGD(bits=4)             # gradient compression
>>> grad_hat = q.decode(q.encode(grad))
>>> avg = scaleml.quantized_allreduce(grad, MPI.COMM_WORLD, q, average=True)  # 4-bit on the wire
"""

from __future__ import annotations

from mpi4py import MPI  # noqa: F401  (loads libmpi before the extension does)

from . import algorithms, compress, config, cost_model, nonblocking, timeline
from ._native import BUILT_MPI_VENDOR, MalformedMessageError, ScaleMLError
from ._version import __version__ as __version__  # its one source (pyproject.toml reads it too)
from .adaptive_allreduce import AdaptiveAllreduceInfo, AdaptiveAllreduceState, adaptive_allreduce, iadaptive_allreduce
from .comm import Comm
from .errors import DeviceError
from .quantized import iquantized_allreduce, quantized_allreduce
from .sparse import AllreduceInfo, SparseVector, index_dtype, isparse_allreduce, sparse_allreduce
from .topk_allreduce import itopk_allreduce, topk_allreduce
from .watchdog import set_timeout
from .zipml_linear import QuantizedMatrix, ZipMLComparison, compare_estimators, quantize_matrix, sgd_least_squares

__all__ = [
    "DeviceError",
    "BUILT_MPI_VENDOR",
    "AdaptiveAllreduceInfo",
    "AdaptiveAllreduceState",
    "AllreduceInfo",
    "Comm",
    "MalformedMessageError",
    "ScaleMLError",
    "SparseVector",
    "adaptive_allreduce",
    "algorithms",
    "compress",
    "config",
    "cost_model",
    "iadaptive_allreduce",
    "index_dtype",
    "iquantized_allreduce",
    "isparse_allreduce",
    "itopk_allreduce",
    "nonblocking",
    "quantized_allreduce",
    "set_timeout",
    "sparse_allreduce",
    "timeline",
    "topk_allreduce",
    # ZipML least squares on low-precision data (scaleml.zipml_linear)
    "QuantizedMatrix",
    "ZipMLComparison",
    "compare_estimators",
    "quantize_matrix",
    "sgd_least_squares",
]
