"""What a task's CEL condition refers to, read from its parse tree.

A condition may read ``params`` and ``outputs.<task>`` (or ``outputs["<task>"]``) of
tasks that finish before it, i.e. its upstream tasks, direct or not; naming any
other task can never be satisfied, so apply refuses it.
"""

from __future__ import annotations

import celpy
from celpy.celparser import CELParseError
from lark import Token, Tree

from strata.core.errors import InvalidArgumentError


def referenced_outputs(expression: str, field: str) -> set[str]:
    """Task ids whose outputs ``expression`` reads; InvalidArgumentError if it does not compile."""
    try:
        tree = celpy.Environment().compile(expression)
    except CELParseError as error:
        column = getattr(error, "column", None)
        where = f" at column {column}" if column else ""
        raise InvalidArgumentError(
            field, f"{expression!r} is not a valid CEL expression (syntax error{where})"
        ) from None
    names: set[str] = set()
    for node in tree.iter_subtrees():
        if node.data in ("member_dot", "member_index") and _is_outputs(node.children[0]):
            key = node.children[1]
            if isinstance(key, Token):
                names.add(str(key))
            elif isinstance(key, Tree) and (literal := _string_literal(key)) is not None:
                names.add(literal)
    return names


def _is_outputs(node: object) -> bool:
    """Whether ``node`` is the bare identifier ``outputs`` (member -> primary -> ident)."""
    while isinstance(node, Tree) and node.data in ("member", "primary") and len(node.children) == 1:
        node = node.children[0]
    return isinstance(node, Tree) and node.data == "ident" and str(node.children[0]) == "outputs"


def _string_literal(node: Tree[Token]) -> str | None:
    """The value of a string literal expression, or None for anything else."""
    current: object = node
    while isinstance(current, Tree) and len(current.children) == 1:
        if current.data == "literal":
            break
        current = current.children[0]
    if not (isinstance(current, Tree) and current.data == "literal"):
        return None
    token = current.children[0]
    if isinstance(token, Token) and token.type in ("STRING_LIT", "MLSTRING_LIT"):
        return str(token)[1:-1] if str(token)[:1] in "'\"" else None
    return None
