"""The CAM template (docs/language.md#the-cam-template) and heatmap math: ``S = ReLU(sum_k W_k A_k)``, bilinear
upsampling to the input size and per-image min-max normalization."""

from .heatmaps import MAX_ELEMENTS, heatmaps, layer_saliency, normalize_upsampled
from .saliency import minmax_normalize, normalized_saliency, saliency
from .upsampling import Upsampler, upsample

__all__ = ["MAX_ELEMENTS", "Upsampler", "heatmaps", "layer_saliency", "minmax_normalize", "normalize_upsampled",
           "normalized_saliency", "saliency", "upsample"]
