"""A CAM method to deploy: one weight expression (``Node``) or a per-class ``Dispatch``, from an
s-expression, a file holding one, or a search's output folder / ``result.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import SycamError
from ..lang.ast import Node
from ..lang.sexpr import parse_expr
from ..lang.terminals import TERMINALS, terminal_types
from ..lang.types import Type
from ..run.result import front_index
from ..synthesis.dispatch import Dispatch

Method = Node | Dispatch


class MethodError(SycamError):
    """A method that cannot be read or deployed."""


def per_class_result(text: str) -> dict | None:
    """``{"classes": {class: expression}, "fallback": expression}`` when ``text`` names the
    result.json of a per-class search, else None."""
    p = Path(text)
    if p.suffix != ".json" or not p.is_file():
        return None
    try:
        data = json.loads(p.read_text())
    except ValueError:
        return None
    pc = data.get("per_class") if isinstance(data, dict) else None
    if not pc:
        return None
    classes = pc.get("classes") if isinstance(pc, dict) else None
    if not isinstance(classes, dict) or not all(
            isinstance(c, str) and c.isdigit() and isinstance(part, dict) for c, part in classes.items()):
        raise SycamError(f"{p}: per_class.classes must map class indices (0, 1, ...) to their searches")
    return {"classes": {c: part.get("expression") for c, part in classes.items()}, "fallback": pc.get("fallback")}


def _weight_node(node: Node, what: str) -> Node:
    if not node.type.is_tensor:
        raise MethodError(f"{what} is a {node.type}; a weight expression must be a Vec or a Map")
    return node


def front_member(data: Any, member: int | str, where: str) -> str:
    """The expression of front member ``member`` (its number, or ``knee``) of a ``result.json``'s content."""
    front = data.get("front") if isinstance(data, dict) else None
    if not isinstance(front, dict) or not isinstance(front.get("members"), list):
        raise MethodError(f"{where} has no Pareto front (its search optimized one metric): drop the member choice")
    members = front["members"]
    try:
        k = front_index(front.get("knee") if member == "knee" else member, len(members))
    except SycamError as e:
        raise MethodError(f"{where}: {e}") from None
    expression = members[k].get("expression") if isinstance(members[k], dict) else None
    if not isinstance(expression, str):
        raise MethodError(f"{where}: front.members[{k}] has no expression")
    return expression


def load_method(method: Any, types: dict[str, Type] | None = None, member: int | str | None = None) -> Method:
    """``method`` as a ``Node`` or ``Dispatch``: one already, an s-expression string, a ``.sexp`` /
    ``.txt`` file, or a search's output folder or its ``result.json`` (a per-class result gives its
    ``Dispatch``; ``member``: of a search over several metrics, that front member, a number or
    ``knee``; None: the result's expression, which is the knee member's)."""
    types = types if types is not None else terminal_types()
    if member is not None and (isinstance(method, (Node, Dispatch)) or not _is_result(method)):
        raise MethodError("a front member is chosen from a search's output folder or its result.json only")
    if isinstance(method, Dispatch):
        return method
    if isinstance(method, Node):
        return _weight_node(method, "the expression")
    if not isinstance(method, (str, Path)):
        raise MethodError(f"a method must be an expression string, a Node, a Dispatch or a result folder, "
                          f"got {type(method).__name__}")
    text = str(method)
    p = Path(text)
    if p.is_dir():
        p = p / "result.json"
        if not p.is_file():
            raise MethodError(f"no result.json in {text!r}; give the output folder of a sycam-dsl synth run")
    if p.suffix == ".json" and p.is_file():
        per_class = per_class_result(str(p))
        if per_class is not None:
            if member is not None:
                raise MethodError(f"{p} is a per-class result, not a Pareto front: drop the member choice")
            if not isinstance(per_class["fallback"], str):
                raise MethodError(f"{p} holds no expression (its search scored no candidate)")
            classes = {int(c): _weight_node(parse_expr(e, types, source=str(p)), f"class {c}'s expression")
                       for c, e in per_class["classes"].items() if e}
            return Dispatch(classes, _weight_node(parse_expr(per_class["fallback"], types, source=str(p)),
                                                  "the fallback"))
        try:
            data = json.loads(p.read_text())
            expression = data["expression"] if member is None else front_member(data, member, str(p))
        except (ValueError, KeyError, TypeError):
            raise MethodError(f"{p}: expected a JSON object with an 'expression' field") from None
        if not isinstance(expression, str):
            raise MethodError(f"{p} holds no expression (its search scored no candidate)")
        return _weight_node(parse_expr(expression, types, source=str(p)), str(p))
    if not text.lstrip().startswith("(") and p.suffix in (".sexp", ".txt") and p.is_file():
        text = p.read_text()
    return _weight_node(parse_expr(text.strip(), types), text.strip())


def result_settings(method: Any) -> tuple[Path, dict[str, Any]] | None:
    """(the ``result.json``, its ``settings``: the model, weights and layer searched on) when ``method`` names a
    search's output folder or its ``result.json`` that records them, else None."""
    if not _is_result(method):
        return None
    p = Path(method)
    p = p / "result.json" if p.is_dir() else p
    try:
        settings = json.loads(p.read_text()).get("settings")
    except (OSError, ValueError, AttributeError):  # load_method says what is wrong with the file
        return None
    return (p, settings) if isinstance(settings, dict) and settings else None


def _is_result(method: Any) -> bool:
    """Whether ``method`` names a search's output folder or a ``.json`` file."""
    if not isinstance(method, (str, Path)):
        return False
    p = Path(method)
    return p.is_dir() or (p.suffix == ".json" and p.is_file())


def method_terminals(method: Method) -> list[str]:
    """The terminals ``method`` reads (every expression of a dispatch), in ``TERMINALS``' order."""
    nodes = [method] if isinstance(method, Node) else [*method.per_class.values(), method.fallback]
    used = {name for node in nodes for name in node.terminals()}
    return [name for name in TERMINALS if name in used]


def method_type(method: Method) -> Type:
    """Vec or Map: the type of the weights (a dispatch's expressions share one, ``compile_dispatch`` checks)."""
    return method.type if isinstance(method, Node) else method.fallback.type


def method_text(method: Method) -> str:
    """The expression, or the dispatch as ``{"3": "(sexpr)", ..., "fallback": "(sexpr)"}`` JSON."""
    from ..lang.ast import to_sexpr

    return to_sexpr(method) if isinstance(method, Node) else json.dumps(method.describe())
