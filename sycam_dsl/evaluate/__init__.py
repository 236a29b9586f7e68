"""Evaluation of expressions on terminal tensors."""

from .evaluator import evaluate, evaluate_with
from .terminal_values import Terminals

__all__ = ["Terminals", "evaluate", "evaluate_with"]
