"""Evaluation of expressions on terminal tensors."""

from .evaluator import evaluate, evaluate_with
from .terminals import Terminals

__all__ = ["Terminals", "evaluate", "evaluate_with"]
