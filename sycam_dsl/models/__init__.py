"""Classifiers for CAM: loading by spec through a registry of model kinds, weights, devices, target
layers and the bundled SmallCNN. ``models`` imports neither ``cam`` nor ``bundled``."""

from .devices import resolve_device
from .errors import LayerError, ModelError
from .kinds import register_builtin_kinds
from .layers import default_layer, kind, resolve_layer
from .loaded import EFFICIENTNET_LITE, IMAGENET, LoadedModel, Normalization
from .registry import ModelKind, load_model, model_kinds, register_model_kind, unregister_model_kind
from .weights import apply_state_dict, random_seed, read_state_dict

register_builtin_kinds()

__all__ = ["EFFICIENTNET_LITE", "IMAGENET", "LayerError", "LoadedModel", "ModelError", "ModelKind", "Normalization",
           "apply_state_dict", "default_layer", "kind", "load_model", "model_kinds", "random_seed", "read_state_dict",
           "register_model_kind", "resolve_device", "resolve_layer", "unregister_model_kind"]
