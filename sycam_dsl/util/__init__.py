"""Small shared utilities: atomic file writes, digests, module modes, warning filters and progress
display (a progress bar and the search's status line).

``util`` imports nothing else from sycam_dsl."""

from .digests import file_sha256, update_digest
from .files import atomic_torch_save, atomic_write_json, atomic_write_text
from .modes import eval_mode
from .warnings import quiet_deprecations

__all__ = ["atomic_torch_save", "atomic_write_json", "atomic_write_text", "eval_mode", "file_sha256",
           "quiet_deprecations", "update_digest"]
