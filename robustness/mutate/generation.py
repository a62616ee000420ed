"""Generate mutants of a source file: one change at one place each, with a stable id.

A :class:`Mutant` is located by the index of its node in ``ast.walk`` order of the module and
applied to a deep copy of the tree; the mutated module is ``ast.unparse``'d (what runs), and
its diff is computed with difflib against the original source lines, splicing only the
changed node's text (what a person reads).

The id hashes what a reader would use to find the change again: the file path relative to
the directory holding its top-level package, the enclosing function's qualified name, the
operator, the original node's text and the replacement's (both normalized by
``ast.unparse``), and the occurrence index of that (operator, text) pair within the function.
Moving, reformatting or editing *other* code leaves an id unchanged.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from robustness.mutate.operators import OPERATORS, Operator, Scope

__all__ = ["Mutant", "SourceFile", "apply", "generate", "mutants_of"]

ID_LENGTH = 10


@dataclass(frozen=True)
class SourceFile:
    """A file to mutate: its path, module name, and path relative to its package root."""

    path: Path
    module: str
    relpath: str

    def text(self) -> str:
        """The file's source."""
        return self.path.read_text(encoding="utf-8")


@dataclass(frozen=True)
class Mutant:
    """One mutant: where it is, what it changes, and how to rebuild it."""

    id: str
    operator: str
    generic: bool
    file: str  # relpath
    module: str
    line: int
    end_line: int
    function: str  # qualified name of the enclosing code object
    scope: str  # function | class | module
    original: str  # ast.unparse of the original node
    replacement: str  # ast.unparse of the replacement
    node_index: int  # index in ast.walk order of the parsed module

    @property
    def label(self) -> str:
        """``file:line``."""
        return f"{self.file}:{self.line}"


# --------------------------------------------------------------------------- scopes

_SKIPPED_FIELDS = frozenset({"annotation", "returns", "decorator_list", "type_comment"})


def _children(node: ast.AST) -> Iterator[ast.AST]:
    """Children to mutate: no annotations, no decorators, no default values of a def."""
    for name, value in ast.iter_fields(node):
        if name in _SKIPPED_FIELDS:
            continue
        if isinstance(value, ast.AST):
            yield value
        elif isinstance(value, list):
            yield from (v for v in value if isinstance(v, ast.AST))


def _scope_nodes(body: Sequence[ast.stmt]) -> Iterator[ast.AST]:
    """Every node of a scope's statements, not descending into nested defs or classes."""
    stack: list[ast.AST] = list(reversed(body))
    while stack:
        node = stack.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # docstrings and bare constants
        yield node
        stack.extend(reversed(list(_children(node))))


def _scopes(tree: ast.Module) -> Iterator[tuple[Scope, Sequence[ast.stmt]]]:
    """``(scope, body)`` for the module, each class body and each function, nested included."""

    def visit(
        body: Sequence[ast.stmt], qualname: str, prefix: str
    ) -> Iterator[tuple[Scope, Sequence[ast.stmt]]]:
        scope = _function_scope(qualname, body, None)
        scope.kind = "module" if qualname == "<module>" else "class"
        yield scope, body
        for stmt in _direct_defs(body):
            name = f"{prefix}{stmt.name}"
            if isinstance(stmt, ast.ClassDef):
                yield from visit(stmt.body, name, f"{name}.")
            else:
                yield from _visit_function(stmt, name)

    def _visit_function(
        fn: ast.FunctionDef | ast.AsyncFunctionDef, name: str
    ) -> Iterator[tuple[Scope, Sequence[ast.stmt]]]:
        yield _function_scope(name, fn.body, fn), fn.body
        for stmt in _direct_defs(fn.body):
            inner = f"{name}.<locals>.{stmt.name}"
            if isinstance(stmt, ast.ClassDef):
                yield from visit(stmt.body, inner, f"{inner}.")
            else:
                yield from _visit_function(stmt, inner)

    yield from visit(tree.body, "<module>", "")


def _direct_defs(
    body: Sequence[ast.stmt],
) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    """Defs and classes of a scope, including those nested in if/with/try blocks."""
    for node in _walk_statements(body):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node


def _walk_statements(body: Sequence[ast.stmt]) -> Iterator[ast.stmt]:
    for stmt in body:
        yield stmt
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        for field in ("body", "orelse", "finalbody"):
            yield from _walk_statements(getattr(stmt, field, []) or [])
        for handler in getattr(stmt, "handlers", []) or []:
            yield from _walk_statements(handler.body)


_NOT_TENSOR_ATTRS = frozenset({"shape", "ndim", "dtype", "device", "is_floating_point", "numel"})
_NOT_TENSOR_CALLS = frozenset(
    {"int", "float", "len", "bool", "str", "item", "tolist", "numel", "dim", "size", "range"}
)


def _tensorish(value: ast.AST, tensors: set[str]) -> bool:
    """A light guess: does this expression produce a tensor?"""
    if isinstance(value, ast.Attribute) and value.attr in _NOT_TENSOR_ATTRS:
        return False
    if isinstance(value, ast.Subscript) and isinstance(value.value, ast.Attribute):
        if value.value.attr in _NOT_TENSOR_ATTRS:
            return False
    if isinstance(value, ast.Call):
        func = value.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in _NOT_TENSOR_CALLS:
            return False
    if isinstance(value, ast.Constant):
        return False
    for node in ast.walk(value):
        if isinstance(node, ast.Name) and (node.id in tensors or node.id == "torch"):
            return True
    return False


def _function_scope(
    qualname: str, body: Sequence[ast.stmt], fn: ast.FunctionDef | ast.AsyncFunctionDef | None
) -> Scope:
    params: set[str] = set()
    tensors: set[str] = set()
    if fn is not None:
        arguments = fn.args
        every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
        for arg in every:
            if arg.arg in ("self", "cls"):
                continue
            params.add(arg.arg)
            annotation = ast.unparse(arg.annotation) if arg.annotation else ""
            if "Tensor" in annotation:
                tensors.add(arg.arg)
    inputs = set(params)
    for stmt in _walk_statements(body):
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(stmt, ast.Assign):
            targets, value = list(stmt.targets), stmt.value
        elif isinstance(stmt, ast.AnnAssign | ast.AugAssign) and stmt.value is not None:
            targets, value = [stmt.target], stmt.value
        if value is None:
            continue
        names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
        if _tensorish(value, tensors):
            tensors.update(names)
        # An alias of an input: ``pred = check(term, "x", x)`` or ``x = x``.
        direct = isinstance(value, ast.Name) and value.id in inputs
        helper = (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name)
            and any(isinstance(a, ast.Name) and a.id in inputs for a in value.args)
        )
        if direct or helper:
            inputs.update(names)
            if any(isinstance(a, ast.Name) and a.id in tensors for a in getattr(value, "args", [])):
                tensors.update(names)
    return Scope(qualname=qualname, params=frozenset(params), inputs=inputs, tensors=tensors)


# --------------------------------------------------------------------------- generation


def _mutant_id(relpath: str, qualname: str, operator: str, key: str, occurrence: int) -> str:
    text = "\0".join((relpath, qualname, operator, key, str(occurrence)))
    return hashlib.sha1(text.encode()).hexdigest()[:ID_LENGTH]


def mutants_of(
    source: SourceFile, operators: Iterable[Operator] | None = None, text: str | None = None
) -> list[Mutant]:
    """Every mutant of one file, in source order (then operator order).

    Raises:
        SyntaxError: if the file does not parse.
    """
    code = source.text() if text is None else text
    tree = ast.parse(code, filename=str(source.path))
    index = {id(node): i for i, node in enumerate(ast.walk(tree))}
    chosen = list(OPERATORS.values()) if operators is None else list(operators)
    found: list[Mutant] = []
    for scope, body in _scopes(tree):
        seen: dict[tuple[str, str], int] = {}
        for node in _scope_nodes(body):
            if not hasattr(node, "lineno"):
                continue
            for operator in chosen:
                for replacement in operator.propose(node, scope):
                    original = ast.unparse(node)
                    new = ast.unparse(replacement)
                    if new == original:
                        continue
                    key = f"{original}\0{new}"
                    occurrence = seen.get((operator.name, key), 0)
                    seen[(operator.name, key)] = occurrence + 1
                    found.append(
                        Mutant(
                            id=_mutant_id(
                                source.relpath, scope.qualname, operator.name, key, occurrence
                            ),
                            operator=operator.name,
                            generic=operator.generic,
                            file=source.relpath,
                            module=source.module,
                            line=node.lineno,
                            end_line=getattr(node, "end_lineno", None) or node.lineno,
                            function=scope.qualname,
                            scope=scope.kind,
                            original=original,
                            replacement=new,
                            node_index=index[id(node)],
                        )
                    )
    found.sort(key=lambda m: (m.line, m.node_index, list(OPERATORS).index(m.operator)))
    return found


def generate(
    sources: Iterable[SourceFile], operators: Iterable[Operator] | None = None
) -> list[Mutant]:
    """Every mutant of every file, file by file.

    Raises:
        ValueError: if two mutants get the same id (a hash collision: never seen).
    """
    chosen = None if operators is None else list(operators)
    every = [m for source in sources for m in mutants_of(source, chosen)]
    ids = [m.id for m in every]
    if len(set(ids)) != len(ids):
        raise ValueError("mutant id collision; report this as a bug of robustness mutate")
    return every


def apply(mutant: Mutant, text: str) -> tuple[ast.Module, ast.AST, ast.AST]:
    """Apply ``mutant`` to the source ``text``: ``(mutated tree, original node, replacement)``.

    Raises:
        LookupError: if ``text`` no longer holds the mutant (the file changed since listing).
    """
    tree = ast.parse(text)
    nodes = list(ast.walk(tree))
    if mutant.node_index >= len(nodes):
        raise LookupError(f"mutant {mutant.id} is stale: {mutant.file} changed")
    target = nodes[mutant.node_index]
    scope = next(
        (s for s, body in _scopes(tree) if s.qualname == mutant.function), Scope(mutant.function)
    )
    if ast.unparse(target) != mutant.original:
        raise LookupError(f"mutant {mutant.id} is stale: {mutant.file} changed")
    replacement = next(
        (
            r
            for r in OPERATORS[mutant.operator].propose(target, scope)
            if ast.unparse(r) == mutant.replacement
        ),
        None,
    )
    if replacement is None:
        raise LookupError(f"mutant {mutant.id} is stale: {mutant.file} changed")
    parents = {id(child): parent for parent in nodes for child in ast.iter_child_nodes(parent)}
    parent = parents[id(target)]
    for name, value in ast.iter_fields(parent):
        if value is target:
            setattr(parent, name, replacement)
            break
        if isinstance(value, list) and any(v is target for v in value):
            value[next(i for i, v in enumerate(value) if v is target)] = replacement
            break
    ast.copy_location(replacement, target)
    ast.fix_missing_locations(tree)
    return tree, target, replacement


def mutated_source(mutant: Mutant, text: str) -> str:
    """The whole mutated module as ``ast.unparse`` writes it (what runs)."""
    tree, _, _ = apply(mutant, text)
    return ast.unparse(tree) + "\n"


_NEEDS_PARENS = (ast.BinOp, ast.BoolOp, ast.Compare, ast.UnaryOp, ast.IfExp, ast.Lambda)


def diff(mutant: Mutant, text: str, *, context: int = 1) -> str:
    """A minimal unified diff: only the changed node's text is replaced in the source lines."""
    _, target, replacement = apply(mutant, text)
    lines = text.splitlines(keepends=True)
    first = target.lineno - 1  # type: ignore[attr-defined]
    last = target.end_lineno - 1  # type: ignore[attr-defined]
    if isinstance(target, ast.stmt):
        indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
        new_lines = [f"{indent}{ast.unparse(replacement)}\n"]
    else:
        start, end = target.col_offset, target.end_col_offset  # type: ignore[attr-defined]
        new = ast.unparse(replacement)
        if isinstance(replacement, _NEEDS_PARENS) and not isinstance(target, _NEEDS_PARENS):
            new = f"({new})"
        line_bytes = [line.encode() for line in lines[first : last + 1]]
        head = line_bytes[0][:start].decode()
        tail = line_bytes[-1][end:].decode()
        new_lines = [f"{head}{new}{tail}"]
    mutated = [*lines[:first], *new_lines, *lines[last + 1 :]]
    return "".join(
        difflib.unified_diff(lines, mutated, f"a/{mutant.file}", f"b/{mutant.file}", n=context)
    )
