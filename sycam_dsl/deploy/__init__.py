"""Deploying a synthesized method where users work: the self-contained explainer file
(``explainer``, ``sycam-dsl export``) and the grad-cam-style ``SyCAM`` API (``api``)."""
