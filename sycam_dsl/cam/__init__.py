"""The CAM engine: models, images, terminals and heatmaps."""
