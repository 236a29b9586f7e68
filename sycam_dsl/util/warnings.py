"""Warning filters."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_deprecations() -> Iterator[None]:
    """Silence PyTorch's deprecation notices for TorchScript / torch.export inside the block.

    PyTorch deprecates TorchScript; the notices are about PyTorch's plans, not about anything a
    sycam-dsl user did, so our own calls should not print them. Other warnings pass through."""
    pattern = r"(?s).*(torch\.jit|torchscript|torch\.export)"
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", message=pattern, category=category)
        yield
