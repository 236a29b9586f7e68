"""The bundled benchmark: synthetic shapes with exact masks and a small CNN trained on them."""

from ..models.small_cnn import (
                                CLASSES,
                                INPUT_SIZE,
                                NORMALIZATION,
                                TARGET_LAYER,
                                WEIGHTS_PATH,
                                SmallCNN,
                                load_bundled_model,
)
from .data import EVAL_SEED, bundled_images, write_bundled
from .shapes import render

__all__ = ["CLASSES", "EVAL_SEED", "INPUT_SIZE", "NORMALIZATION", "TARGET_LAYER", "WEIGHTS_PATH", "SmallCNN",
           "bundled_images", "load_bundled_model", "render", "write_bundled"]
