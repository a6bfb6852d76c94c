"""The ``calculator`` tool: arithmetic the model should not do in its head.

Evaluated by simpleeval (never ``eval``) restricted further: numbers, ``+ - * / // % **`` (``^`` is
a power too; ``×``, ``÷`` and ``−`` are read as ``*``, ``/``, ``-``), parentheses, and the functions
and constants in ``FUNCTIONS`` and ``NAMES``. No names, attributes, subscripts, strings,
comparisons or statements; input is at most ``MAX_CHARS`` characters, an integer result of a power,
a product or a factorial at most ``MAX_INT_BITS`` bits, so no call can run long or eat memory.

Why simpleeval over asteval: asteval interprets a Python subset with statements, loops and
function definitions, which a calculator does not need and which is more to keep safe; simpleeval
evaluates one expression over an explicit table of node types, operators and functions (this module
removes the ones it does not want), and is pure Python without dependencies.
"""
from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

import anyio
from simpleeval import InvalidExpression, SimpleEval

from features.plugins.base import ToolContext, ToolOutcome, ToolSpec, short, text_arg
from features.plugins.errors import CalculationError, PluginError
from i18n import _

__all__ = [
    "FUNCTIONS",
    "MAX_CHARS",
    "MAX_FACTORIAL",
    "MAX_INT_BITS",
    "NAMES",
    "OPERATORS",
    "Calculator",
    "evaluate",
    "format_number",
]

MAX_CHARS = 500  # input length
MAX_INT_BITS = 10_000  # an integer result (about 3,000 decimal digits)
MAX_FACTORIAL = 1000

_Number = int | float


def _check_int(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculationError(f"the result is too large (over {MAX_INT_BITS} bits)")
    return value


def _power(a: _Number, b: _Number) -> _Number:
    if isinstance(a, int) and isinstance(b, int) and b > 0 and abs(a) > 1 and b * math.log2(abs(a)) > MAX_INT_BITS:
        raise CalculationError(f"{short(str(a), 20)} ** {short(str(b), 20)} is too large (over {MAX_INT_BITS} bits)")
    try:
        result = operator.pow(a, b)
    except OverflowError:
        raise CalculationError("the result is too large for a floating-point number") from None
    if isinstance(result, complex):
        raise CalculationError("the result is not a real number (a fractional power of a negative number)")
    return result


def _mult(a: _Number, b: _Number) -> _Number:
    if isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
        raise CalculationError(f"the result is too large (over {MAX_INT_BITS} bits)")
    return _check_int(operator.mul(a, b))


def _factorial(n: _Number) -> int:
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or n < 0:
        raise CalculationError("factorial needs a whole number ≥ 0")
    if n > MAX_FACTORIAL:
        raise CalculationError(f"factorial({n}) is too large (at most factorial({MAX_FACTORIAL}))")
    return math.factorial(n)


def _log(x: _Number, base: _Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


def _round(x: _Number, digits: int | None = None) -> _Number:
    if digits is not None and (not isinstance(digits, int) or abs(digits) > 100):
        raise CalculationError("round's digits must be a whole number between -100 and 100")
    return round(x) if digits is None else round(x, digits)


OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: _mult, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: _power, ast.BitXor: _power,
    ast.USub: operator.neg, ast.UAdd: operator.pos,
}
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "cbrt": math.cbrt, "exp": math.exp, "log": _log, "ln": math.log, "log10": math.log10,
    "log2": math.log2, "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos,
    "atan": math.atan, "atan2": math.atan2, "sinh": math.sinh, "cosh": math.cosh, "tanh": math.tanh,
    "degrees": math.degrees, "radians": math.radians, "hypot": math.hypot, "abs": abs, "round": _round,
    "floor": math.floor, "ceil": math.ceil, "trunc": math.trunc, "min": min, "max": max,
    "factorial": _factorial, "gcd": math.gcd, "lcm": math.lcm,
}
NAMES: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}
_SPELLINGS = str.maketrans({"×": "*", "·": "*", "÷": "/", "−": "-", "–": "-", "²": "**2", "³": "**3", "π": "pi"})


class _Evaluator(SimpleEval):
    """simpleeval with only numbers, names, unary and binary operators and calls left."""

    def __init__(self) -> None:
        super().__init__(operators=OPERATORS, functions=FUNCTIONS, names=NAMES)
        keep = {ast.Name, ast.UnaryOp, ast.BinOp, ast.Call, ast.Constant}
        self.nodes = {node: handler for node, handler in self.nodes.items() if node in keep}  # type: ignore[has-type]

    def _eval_constant(self, node: ast.Constant) -> Any:
        if type(node.value) not in (int, float):
            raise CalculationError(f"only numbers can be calculated, not {short(repr(node.value), 30)}")
        return node.value

    def _eval_name(self, node: ast.Name) -> Any:
        if node.id not in self.names:
            raise CalculationError(f"unknown name {node.id!r}; known: {', '.join(NAMES)}")
        return self.names[node.id]

    def _eval_call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name):
            raise CalculationError("not arithmetic: only the calculator's functions can be called, no methods")
        if node.func.id not in self.functions:
            raise CalculationError(f"unknown function {short(node.func.id, 30)!r}; known: {', '.join(FUNCTIONS)}")
        if node.keywords:
            raise CalculationError("functions take positional arguments only")
        return _check_int(self.functions[node.func.id](*(self._eval(a) for a in node.args)))


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic ``expression`` (``"2*(3+4)"`` → 14, ``"sqrt(2)"`` → 1.414…).

    Raises ``CalculationError`` for anything else: not arithmetic (names, attributes, strings,
    ``__import__``…), longer than ``MAX_CHARS``, a result too large (``MAX_INT_BITS``, float overflow),
    not real, or undefined (division by zero, ``sqrt(-1)``). Pure CPU, bounded; may be called anywhere.
    """
    text = expression.translate(_SPELLINGS).strip()
    if len(text) > MAX_CHARS:
        raise CalculationError(f"the expression is longer than {MAX_CHARS} characters")
    if not text:
        raise CalculationError("the expression is empty")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CalculationError(f"not an arithmetic expression: {short(expression, 80)!r}") from None
    try:
        value = _Evaluator().eval(text, previously_parsed=tree.body)
    except PluginError:
        raise
    except ZeroDivisionError:
        raise CalculationError("division by zero") from None
    except OverflowError:
        raise CalculationError("the result is too large for a floating-point number") from None
    except InvalidExpression:  # a node type or an operator left out above: attributes, comparisons, bits…
        raise CalculationError(f"not arithmetic: {short(expression, 80)!r} (numbers, + - * / // % ** ^, "
                               "parentheses and the calculator's functions only)") from None
    except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:  # math domain errors, wrong arguments
        raise CalculationError(f"cannot calculate {short(expression, 80)!r}: {exc}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalculationError(f"not a number: {short(expression, 80)!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculationError("the result is undefined" if math.isnan(value) else "the result is too large for a floating-point number")
    return value


def format_number(value: int | float) -> str:
    """``value`` for the model: integers exactly, floats to 15 significant digits (``0.1+0.2`` → 0.3)."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return format(value, ".15g")


class Calculator:
    """The ``calculator`` tool (plugin ``calculator``): args ``{"expression": "2*(3+4)"}`` →
    ``"2*(3+4) = 14"``; a refused or undefined expression is an error outcome saying why."""

    plugin = "calculator"
    spec = ToolSpec(
        name="calculator",
        description=("Evaluate an arithmetic expression exactly. Supports + - * / // % ** (or ^), parentheses, "
                     f"the functions {', '.join(FUNCTIONS)} (angles in radians) and the constants pi, e, tau. "
                     "Use it for any calculation instead of computing in your head."),
        parameters={
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "e.g. 2*(3+4), sqrt(2)/3, 1.07^10*1500"}},
            "required": ["expression"],
        },
    )

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> ToolOutcome:
        """See the class; evaluates in a worker thread (bounded, but CPU)."""
        try:
            expression = text_arg(args, "expression", max_chars=MAX_CHARS)
            assert expression is not None
            value = await anyio.to_thread.run_sync(evaluate, expression, abandon_on_cancel=True)
        except PluginError as exc:
            return ToolOutcome(str(exc), error=True)
        return ToolOutcome(f"{expression} = {format_number(value)}")

    def notice(self, args: dict[str, Any]) -> str:
        expression = args.get("expression") if isinstance(args, dict) else None
        return _("🧮 calculated {expression}", expression=short(str(expression or "?"), 60))
