"""Compiled weight expressions that run without sycam-dsl (docs/deploy.md#compiled-weight-files).

Two formats, both computing the same generated code (one fused function over the terminal
tensors the expression uses, batched ``[N, K]`` / ``[N, K, h, w]``):

* TorchScript, ``.pt`` (``save_torchscript``): load with ``torch.jit.load``; ``forward`` returns
  ``W`` and ``saliency`` returns ``S``. Runs wherever torch runs (including C++ via libtorch),
  with any batch shape, dtype and device. Choose it for today's deployments, but TorchScript is
  deprecated upstream (PyTorch 2.15 warns on ``torch.jit.save``/``load``).
* ``torch.export``, ``.pt2`` (``save_export``): load with ``torch.export.load(path).module()``.
  The future-proof path. One entry per file (``forward`` or ``saliency``). All of ``N``, ``K``,
  ``h``, ``w`` are exported dynamic; should a future operator need a fixed size, that dimension is
  specialized to the example's size, so pass an ``example`` with the real ``K, h, w``.

Per-class results (class-based decomposition) compile to one TorchScript module that dispatches
on the model's predicted class (``save_dispatch``): ``forward(classes, ...)`` and
``saliency(activations, classes, ...)``; see ``dispatch``.
"""

from .codegen import CompileError, signature
from .dispatch_module import compile_dispatch, generate_dispatch_source, save_dispatch
from .export import export_program, python_module, save_export
from .torchscript import compile_torchscript, generate_source, save_torchscript

__all__ = ["CompileError", "compile_dispatch", "compile_torchscript", "export_program", "generate_dispatch_source",
           "generate_source", "python_module", "save_dispatch", "save_export", "save_torchscript", "signature"]
