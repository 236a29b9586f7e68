"""Classifiers for CAM: loading by spec through a registry of model kinds, weights, devices, target
layers and the bundled SmallCNN. ``models`` imports neither ``cam`` nor ``bundled``."""

from .devices import resolve_device
from .errors import LayerError, ModelError
from .kinds import register_builtin_kinds
from .layers import call_name, default_layer, kind, resolve_layer, split_call
from .loaded import EFFICIENTNET_LITE, IMAGENET, LoadedModel, Normalization
from .precision import float32_model
from .registry import ModelKind, load_model, model_kinds, register_model_kind, unregister_model_kind
from .weights import apply_state_dict, random_seed, read_state_dict

register_builtin_kinds()

__all__ = ["EFFICIENTNET_LITE", "IMAGENET", "LayerError", "LoadedModel", "ModelError", "ModelKind", "Normalization",
           "apply_state_dict", "call_name", "default_layer", "float32_model", "kind", "load_model", "model_kinds",
           "random_seed", "read_state_dict", "register_model_kind", "resolve_device", "resolve_layer", "split_call",
           "unregister_model_kind"]
