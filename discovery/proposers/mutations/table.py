"""The operator table: which operators and crossover modes exist and how often each is tried, the
unary functions they swap and insert, the kinds of slot arguments, and the two small types every
module of the package shares (:class:`Mutant`, the result; :class:`NotApplicable`, an operator's
"not here")."""

from __future__ import annotations

import ast
from dataclasses import dataclass

OPERATORS = ("swap_function", "swap_operator", "insert_term", "drop_term", "perturb_constant", "rescale_scalar")
#: how often each operator is tried first
OPERATOR_WEIGHTS = {
    "swap_function": 0.25,
    "swap_operator": 0.2,
    "insert_term": 0.2,
    "drop_term": 0.1,
    "perturb_constant": 0.25,
    "rescale_scalar": 0.15,
}
#: operators that apply to (almost) any program, tried when the chosen ones cannot apply
FALLBACK_OPERATORS = ("perturb_constant", "insert_term")
CROSSOVER_MODES = ("splice", "convex", "max", "min")
CROSSOVER_WEIGHTS = {"splice": 0.4, "convex": 0.3, "max": 0.15, "min": 0.15}
#: slot arguments that are positive Python scalars, not per-example tensors
SCALAR_ARGS = frozenset({"beta", "lr"})
#: slot arguments that are neither float tensors nor positive scalars (a state dict, a step counter,
#: class-index targets: an int64 tensor that float functions such as sigmoid reject)
OPAQUE_ARGS = frozenset({"state", "step", "targets"})
HELPER_A, HELPER_B = "parent_a_loss", "parent_b_loss"
TAU_RANGE = (0.02, 1.0)

ATTEMPTS = 40  # candidates examined per operator before giving up on it


@dataclass
class Mutant:
    """A proposed candidate program and how it was obtained."""

    code: str
    name: str  # short descriptive, e.g. "dpo~swap_fn(logsigmoid->softplus)"
    thought: str  # one sentence: what changed and why it might help
    operator: str  # one of OPERATORS, "gate_blend" or "crossover"
    parents: list[str]  # parent ids, as passed in


@dataclass(frozen=True)
class UnaryFn:
    """A unary elementwise function, written as an expression of the placeholder ``X``."""

    label: str
    template: str
    group: str
    equiv: str = ""  # entries sharing a non-empty tag compute the same function


#: compatible unary functions: a swap stays within a group
UNARY_FUNCTIONS: tuple[UnaryFn, ...] = (
    # increasing, <= 0, -> 0 for large x: the log-likelihood-like terms of DPO-style losses
    UnaryFn("logsigmoid", "F.logsigmoid(X)", "logsigmoid", "logsigmoid"),
    UnaryFn("-softplus(-x)", "-F.softplus(-X)", "logsigmoid", "logsigmoid"),
    UnaryFn("-relu(-x)", "-torch.relu(-X)", "logsigmoid"),
    UnaryFn("-exp(-x)", "-torch.exp(-X)", "logsigmoid"),
    UnaryFn("-relu(1-x)", "-torch.relu(1 - X)", "logsigmoid"),
    UnaryFn("-sqhinge(1-x)", "-torch.square(torch.relu(1 - X))", "logsigmoid"),
    # increasing, >= 0 (elu: > -1), convex
    UnaryFn("softplus", "F.softplus(X)", "softplus", "softplus"),
    UnaryFn("-logsigmoid(-x)", "-F.logsigmoid(-X)", "softplus", "softplus"),
    UnaryFn("relu", "torch.relu(X)", "softplus"),
    UnaryFn("exp", "torch.exp(X)", "softplus"),
    UnaryFn("elu", "F.elu(X)", "softplus"),
    UnaryFn("sqrelu", "torch.square(torch.relu(X))", "softplus"),
    # increasing, bounded in [0, 1]
    UnaryFn("sigmoid", "torch.sigmoid(X)", "sigmoid"),
    UnaryFn("tanh01", "0.5 * (torch.tanh(X) + 1)", "sigmoid"),
    UnaryFn("hardsigmoid", "F.hardsigmoid(X)", "sigmoid"),
    UnaryFn("softsign01", "0.5 * (F.softsign(X) + 1)", "sigmoid"),
    # odd, increasing, saturating
    UnaryFn("tanh", "torch.tanh(X)", "odd"),
    UnaryFn("softsign", "F.softsign(X)", "odd"),
    UnaryFn("atan", "torch.atan(X)", "odd"),
    UnaryFn("hardtanh", "F.hardtanh(X)", "odd"),
    UnaryFn("2sigmoid-1", "2 * torch.sigmoid(X) - 1", "odd"),
    # even, >= 0
    UnaryFn("abs", "torch.abs(X)", "even"),
    UnaryFn("square", "torch.square(X)", "even", "square"),
    UnaryFn("pow2", "X ** 2", "even", "square"),
    UnaryFn("log1p(x^2)", "torch.log1p(torch.square(X))", "even"),
    UnaryFn("pseudo_huber", "torch.sqrt(1 + torch.square(X)) - 1", "even"),
)

GROUP_RATIONALE = {
    "logsigmoid": "a different penalty on small or negative margins (smooth, hinge or exponential tail) "
    "may trade robustness to noisy labels against sharper separation",
    "softplus": "a different growth of the penalty (smooth, hinge-like or exponential) changes how hard "
    "the loss pushes on badly ranked pairs",
    "sigmoid": "a differently shaped bounded weight changes which pairs dominate the gradient",
    "odd": "a different saturation changes how much confidently ranked pairs keep contributing",
    "even": "a different growth of the penalty with distance (linear, quadratic or logarithmic) "
    "changes the sensitivity to outlying pairs",
}

#: unary functions used by insert_term: (label, template, what the added term does)
INSERT_FUNCTIONS = (
    ("square", "torch.square(X)", "quadratic in it, as in IPO"),
    ("abs", "torch.abs(X)", "linear in its magnitude"),
    ("softplus", "F.softplus(X)", "a smooth hinge on it"),
    ("softplus(-x)", "F.softplus(-X)", "a smooth hinge on its negative"),
    ("sigmoid", "torch.sigmoid(X)", "bounded and saturating"),
    ("tanh", "torch.tanh(X)", "bounded and odd"),
    ("relu", "torch.relu(X)", "a hinge on its positive part"),
    ("relu(-x)", "torch.relu(-X)", "a hinge on its negative part"),
    ("logsigmoid", "F.logsigmoid(X)", "log-likelihood-like"),
)

OP_SWAPS: dict[type[ast.operator], tuple[type[ast.operator], ...]] = {
    ast.Add: (ast.Sub, ast.Mult),
    ast.Sub: (ast.Add, ast.Mult),
    ast.Mult: (ast.Add, ast.Sub, ast.Div),
    ast.Div: (ast.Mult,),
}
OP_SYMBOLS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
OP_WORDS = {ast.Add: "a sum", ast.Sub: "a difference", ast.Mult: "a product", ast.Div: "a ratio"}

# keyword arguments whose constants are structural (dimensions, flags), never perturbed
STRUCTURAL_KWARGS = frozenset(
    {"dim", "axis", "keepdim", "dtype", "reduction", "diagonal", "num_classes", "start_dim", "end_dim"}
)


class NotApplicable(Exception):
    """An operator cannot be applied at this site."""
