"""Offline proposer: new candidates by mutation and crossover of the syntax tree (no LLM).

:func:`mutate` applies one of five operators to a parent program:

``swap_function``
    replace a unary elementwise function by another of the same family, e.g.
    ``F.logsigmoid(x)`` -> ``-torch.exp(-x)`` or ``torch.abs(x)`` -> ``torch.square(x)``
    (see :data:`UNARY_FUNCTIONS`; exactly equivalent spellings are never swapped for each other);
``swap_operator``
    change one binary operator among ``+ - *``; ``*`` becomes ``/`` only when the divisor
    is provably non-zero, ``/`` may become ``*``;
``insert_term``
    add ``+ c * u(s)`` to a returned expression, with ``s`` one of its subexpressions (or
    a local defined before the return), ``u`` a unary function and ``c`` a small constant;
``drop_term``
    remove one operand of a ``+``/``-`` chain in the returned expression;
``perturb_constant``
    multiply a numeric constant by ``exp(N(0, 0.3))`` (add ``N(0, 0.1)`` to a zero); a
    program without constants gets a multiplicative constant on a function's argument;
``rescale_scalar``
    give a scalar hyper-parameter argument (``beta``) an effective value: a first statement
    ``beta = c * beta``, ``min(beta, c)`` or ``c * beta ** p`` (replacing an earlier one), so
    that how strongly the loss reacts to the setting it is given can itself be discovered.

:func:`crossover` and :func:`gate_blend` inline both parents as helper functions
``parent_a_loss`` / ``parent_b_loss`` and combine their per-example losses (convex weight,
elementwise max or min, or an LRML-style sigmoid gate on the shared margin). Crossover
may also *splice*: replace a subexpression of A's returned expression by one of B's,
with B's locals inlined so that it only refers to the slot's arguments.

Every result parses, defines exactly one top-level slot function with the parent's
arguments, and differs from its parent(s) by :func:`normalized_hash`. Mutations that would
put a possibly zero or negative value under a division, ``log``, ``sqrt`` or fractional
power are refused (a small sign analysis proves positivity). When the chosen operator
cannot apply, others are tried, then ``perturb_constant`` and ``insert_term``. Everything
is a deterministic function of the ``random.Random`` passed in.

The package, one job per module (each imports only those above it):

``table``
    the operator table: operators, crossover modes and their weights, the unary-function tables,
    slot-argument kinds, :class:`Mutant` and :class:`NotApplicable`;
``trees``
    reading and rewriting one program's tree (returns, subexpressions, tensor names, literals);
``names``
    module names in generated code, fresh names, renaming a parent's top-level names;
``patterns``
    templates of ``X`` matched against and instantiated in a program;
``signs``
    the sign analysis and the domain checks every candidate passes;
``parents``
    a parsed parent, a proposed edit, and the acceptance test;
``operators``
    the six mutation operators;
``combine``
    crossover: blends and splices of two parents;
``api``
    :func:`mutate`, :func:`crossover` and :func:`gate_blend`.

Scopes, names and imports are read with :mod:`sandbox.static.syntax`, shared with the code hash,
the static policy and the exporter.
"""

from discovery.proposers.mutations.api import crossover, gate_blend, mutate
from discovery.proposers.mutations.table import (
    CROSSOVER_MODES,
    CROSSOVER_WEIGHTS,
    FALLBACK_OPERATORS,
    HELPER_A,
    HELPER_B,
    OPAQUE_ARGS,
    OPERATOR_WEIGHTS,
    OPERATORS,
    SCALAR_ARGS,
    TAU_RANGE,
    UNARY_FUNCTIONS,
    Mutant,
    NotApplicable,
    UnaryFn,
)

__all__ = [
    "CROSSOVER_MODES",
    "CROSSOVER_WEIGHTS",
    "FALLBACK_OPERATORS",
    "HELPER_A",
    "HELPER_B",
    "OPAQUE_ARGS",
    "OPERATORS",
    "OPERATOR_WEIGHTS",
    "SCALAR_ARGS",
    "TAU_RANGE",
    "UNARY_FUNCTIONS",
    "Mutant",
    "NotApplicable",
    "UnaryFn",
    "crossover",
    "gate_blend",
    "mutate",
]
