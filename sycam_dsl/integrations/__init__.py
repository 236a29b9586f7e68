"""Synthesized CAM methods inside other libraries' pipelines: ``gradcam.SyCAMGradCAM`` (a
pytorch-grad-cam ``BaseCAM``) and ``torchcam.SyCAMTorchCAM`` (a torchcam ``_CAM``). Each module needs
its library (``pip install 'sycam-dsl[gradcam]'`` / ``'sycam-dsl[torchcam]'``); this package imports
neither."""
