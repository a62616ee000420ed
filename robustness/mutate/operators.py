"""Mutation operators: each one rewrites one AST node the way a real numerical bug looks.

An operator looks at one node of a function (with what :class:`Scope` knows about that
function: its parameters and which local names hold tensors) and proposes zero or more
replacements, each a separate mutant. Operators only build new nodes; they never edit the
node they are given (generation deep-copies the module first, see
:mod:`robustness.mutate.generation`).

*Numerical* operators model bug classes seen in loss and metric code (the corpus in
``robustness/mutants/`` holds hand-written instances of most); *generic* operators are
mutmut-style operator swaps, off by default and always reported apart.
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = [
    "GENERIC",
    "NUMERICAL",
    "OPERATORS",
    "Operator",
    "Scope",
    "operator_names",
]


@dataclass
class Scope:
    """What an operator may know about the function (or module / class body) being mutated.

    Attributes:
        qualname: the code object's qualified name (``MultiTaskLoss.compute_count_loss``,
            ``<module>`` for module-level code).
        params: parameter names (``self``/``cls`` excluded): the function's inputs.
        inputs: ``params`` plus local names that alias an input (``pred = check(x)``).
        tensors: names that (by a light static guess) hold tensors.
    """

    qualname: str
    kind: str = "function"  # function | class | module
    params: frozenset[str] = frozenset()
    inputs: set[str] = field(default_factory=set)
    tensors: set[str] = field(default_factory=set)


Propose = Callable[[ast.AST, Scope], Iterator[ast.AST]]


@dataclass(frozen=True)
class Operator:
    """One mutation operator: a name, the bug class in one line, and how it proposes."""

    name: str
    description: str
    propose: Propose
    generic: bool = False


# --------------------------------------------------------------------------- helpers


def _call_name(node: ast.AST) -> str | None:
    """``torch.where(...)`` / ``x.where(...)`` / ``where(...)`` -> ``"where"``."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


def _is_method(node: ast.Call) -> bool:
    """A method call on a value (``x.clamp(...)``), not a module function (``torch.clamp``)."""
    func = node.func
    if not isinstance(func, ast.Attribute):
        return False
    base = func.value
    while isinstance(base, ast.Attribute):
        base = base.value
    return not (isinstance(base, ast.Name) and base.id in ("torch", "F", "nn", "math", "np"))


def _torch(attr: str) -> ast.Attribute:
    return ast.Attribute(value=ast.Name(id="torch", ctx=ast.Load()), attr=attr, ctx=ast.Load())


def _call(func: ast.expr, *args: ast.expr, **kwargs: ast.expr) -> ast.Call:
    return ast.Call(
        func=func,
        args=list(args),
        keywords=[ast.keyword(arg=k, value=v) for k, v in kwargs.items()],
    )


def _method(receiver: ast.expr, name: str, *args: ast.expr) -> ast.Call:
    return _call(ast.Attribute(value=receiver, attr=name, ctx=ast.Load()), *args)


def _number(node: ast.AST) -> float | None:
    """The value of a numeric literal (``-1e-6`` included), else ``None``."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _number(node.operand)
        return None if inner is None else -inner
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    ):
        return float(node.value)
    return None


def _literal(value: float, like: ast.AST) -> ast.expr:
    """A literal for ``value`` (an int where ``like`` was an int)."""
    integral = isinstance(like, ast.Constant) and isinstance(like.value, int)
    number: int | float = int(value) if integral and value == int(value) else value
    if number < 0:
        return ast.UnaryOp(op=ast.USub(), operand=ast.Constant(value=-number))
    return ast.Constant(value=number)


def _text(node: ast.AST) -> str:
    return ast.unparse(node).lower()


def _is_eps(node: ast.AST) -> bool:
    """An epsilon: a literal with ``0 < |c| <= 1e-3``, ``...eps``/``...tiny`` names, finfo."""
    value = _number(node)
    if value is not None:
        return 0.0 < abs(value) <= 1e-3
    if isinstance(node, ast.Name | ast.Attribute):
        name = node.id if isinstance(node, ast.Name) else node.attr
        return "eps" in name.lower() or "tiny" in name.lower()
    return False


def _is_zeroish(node: ast.AST) -> bool:
    if _number(node) == 0.0:
        return True
    return _call_name(node) in ("zeros_like", "new_zeros", "zeros")


def _where_args(node: ast.AST) -> tuple[ast.expr, ast.expr, ast.expr] | None:
    """``(condition, selected, other)`` of ``torch.where(c, a, b)`` or ``a.where(c, b)``."""
    if _call_name(node) != "where" or not isinstance(node, ast.Call) or node.keywords:
        return None
    if _is_method(node) and len(node.args) == 2:
        assert isinstance(node.func, ast.Attribute)
        return node.args[0], node.func.value, node.args[1]
    if not _is_method(node) and len(node.args) == 3:
        return node.args[0], node.args[1], node.args[2]
    return None


def _receiver_or_first(node: ast.Call) -> ast.expr | None:
    """The tensor a call works on: the receiver of a method, else the first argument."""
    if _is_method(node):
        assert isinstance(node.func, ast.Attribute)
        return node.func.value
    return node.args[0] if node.args else None


# --------------------------------------------------------------------------- numerical


def _selection_to_multiplication(node: ast.AST, scope: Scope) -> Iterator[ast.AST]:
    """``torch.where(m, x, 0)`` -> ``x * m``; ``torch.where(m, x, y)`` -> ``x * m + y * ~m``."""
    args = _where_args(node)
    if args is None:
        return
    condition, selected, other = args
    masked = ast.BinOp(left=copy.deepcopy(selected), op=ast.Mult(), right=copy.deepcopy(condition))
    if _is_zeroish(other):
        yield masked
        return
    rest = ast.BinOp(
        left=copy.deepcopy(other),
        op=ast.Mult(),
        right=ast.UnaryOp(op=ast.Invert(), operand=copy.deepcopy(condition)),
    )
    yield ast.BinOp(left=masked, op=ast.Add(), right=rest)


_CLAMPS = ("clamp", "clamp_min", "clamp_max", "clip", "clamp_", "clamp_min_", "clamp_max_")


def _guard_removed(node: ast.AST, scope: Scope) -> Iterator[ast.AST]:
    """A guard dropped: a ``where`` keeps only its guarded value, a clamp or an eps vanishes."""
    args = _where_args(node)
    if args is not None:
        yield copy.deepcopy(args[1])
        return
    name = _call_name(node)
    if isinstance(node, ast.Call) and name in _CLAMPS:
        tensor = _receiver_or_first(node)
        if tensor is not None:
            yield copy.deepcopy(tensor)
        return
    if isinstance(node, ast.Call) and name in ("maximum", "max", "fmax") and len(node.args) == 2:
        # max(x, eps): the floor is the guard.
        if _is_eps(node.args[1]):
            yield copy.deepcopy(node.args[0])
        return
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
        if _is_eps(node.right):
            yield copy.deepcopy(node.left)
        elif isinstance(node.op, ast.Add) and _is_eps(node.left):
            yield copy.deepcopy(node.right)


def _counts_valid(node: ast.AST) -> bool:
    text = _text(node)
    return any(word in text for word in ("mask", "valid"))


def _denominator_changed(node: ast.AST, scope: Scope) -> Iterator[ast.AST]:
    """A mean's denominator wrong: the valid count becomes numel, ``sum`` becomes ``mean``."""
    name = _call_name(node)
    if not isinstance(node, ast.Call):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div | ast.Mult):
            # sum(x) / n (or sum(x) * (1/n)) -> mean(x) / n: averages over the padded rectangle
            for side in ("left", "right"):
                operand = getattr(node, side)
                if (
                    isinstance(operand, ast.Call)
                    and _call_name(operand) in ("sum", "nansum")
                    and isinstance(operand.func, ast.Attribute)
                ):
                    mutated = copy.deepcopy(node)
                    target = getattr(mutated, side)
                    target.func.attr = "mean"
                    yield mutated
        return
    if name == "count_nonzero" and node.args:
        tensor = node.args[0] if not _is_method(node) else _receiver_or_first(node)
        assert tensor is not None
        yield _method(_call(_torch("ones_like"), copy.deepcopy(tensor)), "sum")
        return
    if name == "sum" and _is_method(node) and not node.args and not node.keywords:
        receiver = _receiver_or_first(node)
        if receiver is not None and _counts_valid(receiver):
            # valid.sum() -> ones_like(valid).sum(): the count of every position, padding too
            yield _method(_call(_torch("ones_like"), copy.deepcopy(receiver)), "sum")


_FLOAT_DTYPES = ("float32", "float64", "double", "float")


def _is_dtype(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute) and node.attr in _FLOAT_DTYPES:
        return True
    text = _text(node)
    return "dtype" in text or "promote_types" in text or "result_type" in text


def _upcast_removed(node: ast.AST, scope: Scope) -> Iterator[ast.AST]:
    """An upcast dropped: ``x.to(float64)`` / ``x.double()`` / ``dtype=`` keeps the input dtype."""
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return
    name = node.func.attr
    receiver = node.func.value
    if name == "to" and _is_method(node):
        dtype_args = [a for a in node.args if _is_dtype(a)]
        dtype_kw = [k for k in node.keywords if k.arg == "dtype"]
        if (dtype_args or dtype_kw) and len(node.args) + len(node.keywords) == 1:
            yield copy.deepcopy(receiver)
        return
    if name in ("double", "float") and _is_method(node) and not node.args:
        yield copy.deepcopy(receiver)
        return
    for index, keyword in enumerate(node.keywords):
        if keyword.arg == "dtype" and _is_dtype(keyword.value) and name != "to":
            if name in ("sum", "mean", "cumsum", "prod", "softmax", "log_softmax"):
                mutated = copy.deepcopy(node)
                del mutated.keywords[index]
                yield mutated


def _naive_form(node: ast.AST, scope: Scope) -> Iterator[ast.AST]:
    """A stable primitive replaced by its textbook form: ``log(sum(exp(x)))``, ``log(softmax)``."""
    if not isinstance(node, ast.Call):
        return
    name = _call_name(node)
    tensor = _receiver_or_first(node)
    if tensor is None:
        return
    rest = node.args[0:] if _is_method(node) else node.args[1:]
    rest = [copy.deepcopy(a) for a in rest]
    keywords = [copy.deepcopy(k) for k in node.keywords]
    if name == "logsumexp":
        summed = ast.Call(
            func=ast.Attribute(
                value=_call(_torch("exp"), copy.deepcopy(tensor)), attr="sum", ctx=ast.Load()
            ),
            args=rest,
            keywords=keywords,
        )
        yield _call(_torch("log"), summed)
    elif name == "log_softmax":
        soft = ast.Call(
            func=_torch("softmax"), args=[copy.deepcopy(tensor), *rest], keywords=keywords
        )
        yield _call(_torch("log"), soft)
    elif name == "log1p" and not rest:
        one_plus = ast.BinOp(
            left=ast.Constant(value=1.0), op=ast.Add(), right=copy.deepcopy(tensor)
        )
        yield _call(_torch("log"), one_plus)
    elif name == "expm1" and not rest:
        yield ast.BinOp(
            left=_call(_torch("exp"), copy.deepcopy(tensor)), op=ast.Sub(), right=ast.Constant(1.0)
        )


def _is_structural(node: ast.AST) -> bool:
    """``x.ndim``, ``x.shape[i]``, ``x.dim()``, ``len(x)``: sizes, not values."""
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute):
        return node.attr in ("ndim", "shape")
    return _call_name(node) in ("dim", "len", "numel", "size")


def _tensor_name(node: ast.AST, scope: Scope) -> bool:
    return isinstance(node, ast.Name) and node.id in scope.tensors


def _detach_inserted(node: ast.AST, scope: Scope) -> Iterator[ast.AST]:
    """A tensor detached from the graph where it enters arithmetic: its gradient is lost."""
    if not isinstance(node, ast.BinOp) or not isinstance(
        node.op, ast.Add | ast.Sub | ast.Mult | ast.Div | ast.Pow
    ):
        return
    for side in ("left", "right"):
        operand = getattr(node, side)
        if _tensor_name(operand, scope):
            mutated = copy.deepcopy(node)
            setattr(mutated, side, _method(copy.deepcopy(operand), "detach"))
            yield mutated


_INPLACE_BINOPS: dict[type[ast.operator], str] = {
    ast.Add: "add_",
    ast.Sub: "sub_",
    ast.Mult: "mul_",
    ast.Div: "div_",
}
_INPLACE_METHODS = (
    "abs",
    "clamp",
    "exp",
    "log",
    "masked_fill",
    "mul",
    "nan_to_num",
    "neg",
    "sqrt",
    "sub",
    "add",
    "div",
    "square",
)


def _inplace_on_input(node: ast.AST, scope: Scope) -> Iterator[ast.AST]:
    """An input modified in place (``pred - true`` -> ``pred.sub_(true)``)."""
    if isinstance(node, ast.BinOp) and type(node.op) in _INPLACE_BINOPS:
        left = node.left
        if isinstance(left, ast.Name) and left.id in scope.inputs and left.id in scope.tensors:
            yield _method(
                copy.deepcopy(left), _INPLACE_BINOPS[type(node.op)], copy.deepcopy(node.right)
            )
        return
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and _is_method(node):
        receiver = node.func.value
        if (
            node.func.attr in _INPLACE_METHODS
            and isinstance(receiver, ast.Name)
            and receiver.id in scope.inputs
            and receiver.id in scope.tensors
        ):
            mutated = copy.deepcopy(node)
            assert isinstance(mutated.func, ast.Attribute)
            mutated.func.attr = f"{node.func.attr}_"
            yield mutated


def _keepdim_squeeze(node: ast.AST, scope: Scope) -> Iterator[ast.AST]:
    """A shape slip: ``keepdim`` flipped, or a ``squeeze``/``unsqueeze`` dropped (broadcasting)."""
    if not isinstance(node, ast.Call):
        return
    for index, keyword in enumerate(node.keywords):
        if keyword.arg == "keepdim" and isinstance(keyword.value, ast.Constant):
            mutated = copy.deepcopy(node)
            mutated.keywords[index].value = ast.Constant(value=not keyword.value.value)
            yield mutated
    if _call_name(node) in ("squeeze", "unsqueeze") and _is_method(node):
        tensor = _receiver_or_first(node)
        assert tensor is not None
        yield copy.deepcopy(tensor)


def _raise_removed(node: ast.AST, scope: Scope) -> Iterator[ast.AST]:
    """A validation ``raise`` deleted: bad input flows on into the arithmetic."""
    if isinstance(node, ast.Raise) and node.exc is not None:
        yield ast.Pass()


_BOUND_CALLS = (*_CLAMPS, "maximum", "minimum", "isclose", "allclose", "nan_to_num")
_TOLERANCE_KEYWORDS = ("min", "max", "rtol", "atol", "eps", "nan", "posinf", "neginf")


def _constant_changed(node: ast.AST, scope: Scope) -> Iterator[ast.AST]:
    """A meaningful constant changed: an eps (x1000, 0), a bound or tolerance (x10, n-1 -> n)."""
    if not isinstance(node, ast.Call):
        return
    if _call_name(node) not in _BOUND_CALLS and not any(
        k.arg in _TOLERANCE_KEYWORDS[2:5] for k in node.keywords
    ):
        return
    positions: list[tuple[str, int, ast.expr]] = []
    first = 0 if not _is_method(node) else -1  # a function's first argument is the tensor
    positions += [("args", i, a) for i, a in enumerate(node.args) if i > first]
    positions += [
        ("keywords", i, k.value)
        for i, k in enumerate(node.keywords)
        if k.arg in _TOLERANCE_KEYWORDS
    ]
    for where, index, value in positions:
        for replacement in _changed_bound(value):
            mutated = copy.deepcopy(node)
            if where == "args":
                mutated.args[index] = replacement
            else:
                mutated.keywords[index].value = replacement
            yield mutated


def _changed_bound(value: ast.expr) -> Iterator[ast.expr]:
    number = _number(value)
    if number is not None:
        if _is_eps(value):
            yield _literal(number * 1000.0, value)
            yield _literal(0.0, value)
        elif number == 0.0:
            yield _literal(1.0, value)
        else:
            yield _literal(number * 10.0, value)
        return
    # n - 1 -> n: an off-by-one upper bound (ids clamped into range, not out of it)
    if (
        isinstance(value, ast.BinOp)
        and isinstance(value.op, ast.Sub)
        and _number(value.right) == 1.0
    ):
        yield copy.deepcopy(value.left)


_FLIP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.NotEq: ast.Gt,
}


def _boundary_flipped(node: ast.AST, scope: Scope) -> Iterator[ast.AST]:
    """A threshold's boundary moved (``x > 0`` <-> ``x >= 0``, ``x != 0`` -> ``x > 0``)."""
    if not isinstance(node, ast.Compare) or len(node.ops) != 1:
        return
    op = type(node.ops[0])
    if op not in _FLIP or (_number(node.comparators[0]) is None and _number(node.left) is None):
        return
    if _is_structural(node.left) or _is_structural(node.comparators[0]):
        return  # shape and rank checks are validation (raise-removed covers them), not numerics
    mutated = copy.deepcopy(node)
    mutated.ops = [_FLIP[op]()]
    yield mutated


# --------------------------------------------------------------------------- generic

_ARITH_SWAP: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
}
_COMPARE_SWAP: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
}


def _arithmetic_swap(node: ast.AST, scope: Scope) -> Iterator[ast.AST]:
    """Mutmut's swap: ``+`` <-> ``-``, ``*`` <-> ``/``."""
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH_SWAP:
        mutated = copy.deepcopy(node)
        mutated.op = _ARITH_SWAP[type(node.op)]()
        yield mutated


def _compare_swap(node: ast.AST, scope: Scope) -> Iterator[ast.AST]:
    """Mutmut's swap: ``==`` <-> ``!=``, ``<`` <-> ``>=``, ``>`` <-> ``<=``."""
    if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in _COMPARE_SWAP:
        mutated = copy.deepcopy(node)
        mutated.ops = [_COMPARE_SWAP[type(node.ops[0])]()]
        yield mutated


NUMERICAL: tuple[Operator, ...] = (
    Operator(
        "selection-to-multiplication",
        "masking by multiplication instead of selection: torch.where(m, x, 0) becomes x * m, "
        "so NaN/inf at masked positions leak (0 * inf = NaN)",
        _selection_to_multiplication,
    ),
    Operator(
        "guard-removed",
        "a numerical guard dropped: a where keeps only its guarded branch (the inner where of "
        "a double-where), a clamp or an eps disappears",
        _guard_removed,
    ),
    Operator(
        "denominator-changed",
        "a mean over the wrong count: the valid count becomes numel, sum/n becomes mean/n "
        "(a mean over the padded rectangle)",
        _denominator_changed,
    ),
    Operator(
        "upcast-removed",
        "a dtype upcast dropped (.to(float32/float64), .double(), dtype=): half inputs "
        "accumulate in their own dtype",
        _upcast_removed,
    ),
    Operator(
        "naive-form",
        "a stable primitive replaced by its textbook form: logsumexp -> log(sum(exp)), "
        "log_softmax -> log(softmax), log1p/expm1 -> log(1+x)/exp(x)-1",
        _naive_form,
    ),
    Operator(
        "detach-inserted",
        "a tensor detached where it enters arithmetic: the loss stops training what it depends on",
        _detach_inserted,
    ),
    Operator(
        "inplace-on-input",
        "an input modified in place (pred - true -> pred.sub_(true), x.clamp -> x.clamp_): "
        "the caller's tensor changes",
        _inplace_on_input,
    ),
    Operator(
        "keepdim-or-squeeze",
        "a shape slip: keepdim flipped, or a squeeze/unsqueeze dropped so broadcasting "
        "silently changes the result",
        _keepdim_squeeze,
    ),
    Operator(
        "raise-removed",
        "a validation raise deleted: bad shapes, ids or non-finite values flow into the arithmetic",
        _raise_removed,
    ),
    Operator(
        "constant-changed",
        "a numerically meaningful constant changed: an eps (x1000 or 0), a clamp bound "
        "(x10, 0 -> 1, n - 1 -> n) or a tolerance",
        _constant_changed,
    ),
    Operator(
        "boundary-flipped",
        "a threshold's boundary moved (x > 0 <-> x >= 0, x != 0 -> x > 0): the edge case "
        "(zero count, zero weight, NaN) goes the wrong way",
        _boundary_flipped,
    ),
)

GENERIC: tuple[Operator, ...] = (
    Operator(
        "arithmetic-swap",
        "generic (mutmut-style): + <-> -, * <-> /",
        _arithmetic_swap,
        generic=True,
    ),
    Operator(
        "compare-swap",
        "generic (mutmut-style): == <-> !=, < <-> >=, > <-> <=",
        _compare_swap,
        generic=True,
    ),
)

#: Every operator by name, numerical first.
OPERATORS: dict[str, Operator] = {op.name: op for op in (*NUMERICAL, *GENERIC)}


def operator_names(*, generic: bool = False) -> tuple[str, ...]:
    """The default operator selection: numerical ones, plus generic ones when asked."""
    return tuple(op.name for op in OPERATORS.values() if generic or not op.generic)
