"""The shared syntax helpers (sandbox/static/syntax.py): scopes, names and imports of parsed source."""

import ast
import textwrap

from sandbox.static import syntax


def parse(src: str) -> ast.Module:
    return ast.parse(textwrap.dedent(src))


def first(src: str) -> ast.stmt:
    return parse(src).body[0]


def expr(src: str) -> ast.expr:
    return ast.parse(src, mode="eval").body


# ------------------------------------------------------------------------------------------ spelling


def test_dotted_spells_attribute_chains_on_a_name_only():
    assert syntax.dotted(expr("torch.nn.functional.relu")) == "torch.nn.functional.relu"
    assert syntax.dotted(expr("x")) == "x"
    assert syntax.dotted(expr("f().relu")) is None
    assert syntax.dotted(expr("x[0].y")) is None
    assert syntax.dotted(expr("1 + 2")) is None


def test_dotted_does_not_recurse_on_long_chains():
    node: ast.expr = ast.Name("a", ast.Load())
    for _ in range(5000):
        node = ast.Attribute(node, "b", ast.Load())
    assert syntax.dotted(node) == "a" + ".b" * 5000


def test_docstrings_are_recognised_and_replaced_or_inserted():
    fn = first('def f():\n    "old"\n    return 1\n')
    assert syntax.is_docstring(fn.body[0]) and not syntax.is_docstring(fn.body[1])
    syntax.set_docstring(fn, "new")
    assert ast.get_docstring(fn) == "new" and len(fn.body) == 2
    bare = first("def g():\n    return 1\n")
    syntax.set_docstring(bare, "added")
    assert ast.get_docstring(bare) == "added" and len(bare.body) == 2
    assert not syntax.is_docstring(first("1\n")) and not syntax.is_docstring(first("b'bytes'\n"))


# ------------------------------------------------------------------------------------------- imports


def test_alias_names_of_every_import_form():
    names = {
        ast.unparse(s): [syntax.alias_name(a) for a in s.names]
        for s in parse("""
        import torch
        import torch.nn.functional
        import torch.nn.functional as F
        from math import log as ln, exp
        from math import *
    """).body
    }
    assert names == {
        "import torch": ["torch"],
        "import torch.nn.functional": ["torch"],
        "import torch.nn.functional as F": ["F"],
        "from math import log as ln, exp": ["ln", "exp"],
        "from math import *": ["*"],
    }


def test_import_bindings_give_what_each_name_is_bound_to():
    tree = parse("""
        import torch.nn.functional
        import torch.nn.functional as F
        from math import log as ln
        from ..pkg import helper as h
    """)
    got = [(name, target) for stmt in tree.body for _, name, target in syntax.import_bindings(stmt)]
    assert got == [("torch", "torch"), ("F", "torch.nn.functional"), ("ln", "math.log"), ("h", "..pkg.helper")]


def test_import_table_holds_top_level_absolute_imports_only():
    tree = parse("""
        import torch as T
        import math
        from torch.nn import functional as F
        from . import sibling
        from math import *

        def loss(x):
            import numpy as np
            return x

        import torch as T2
        from math import exp as T
    """)
    assert syntax.import_table(tree) == {
        "T": ("math.exp", True),  # the later binding wins
        "math": ("math", False),
        "F": ("torch.nn.functional", True),
        "T2": ("torch", False),
    }


# ---------------------------------------------------------------------------------- one node, one statement


def test_parameters_in_declaration_groups():
    fn = first("def f(a, /, b, *rest, c, d=1, **kw): pass\n")
    assert [a.arg for a in syntax.parameters(fn.args)] == ["a", "b", "c", "d", "rest", "kw"]
    lam = expr("lambda: 0")
    assert syntax.parameters(lam.args) == []


def test_binding_names_per_node():
    tree = parse("""
        x = y
        del z
        def f(p): pass
        class C: pass
        try:
            pass
        except ValueError as err:
            pass
    """)
    bound = {n for node in ast.walk(tree) for n in syntax.binding_names(node)}
    assert bound == {"x", "z", "f", "p", "C", "err"}  # y is only read


def test_capture_names_of_match_patterns():
    tree = parse("""
        match v:
            case [first, *others]:
                pass
            case {"k": 1, **extra}:
                pass
            case (1 | 2) as alt:
                pass
            case _:
                pass
    """)
    assert {n for node in ast.walk(tree) for n in syntax.capture_names(node)} == {"first", "others", "extra", "alt"}


def test_all_bound_names_ignores_scopes_and_imports():
    tree = parse("""
        import torch as T
        K = 2
        def f(a, *args, b=K, **kw):
            inner = lambda lam_arg: lam_arg
            vals = [c for c in a]
            with open(a) as fh:
                pass
            for i, (j, k) in enumerate(vals):
                pass
            if (w := a):
                pass
            return T.exp(a)
    """)
    assert syntax.all_bound_names(tree) == {
        "K", "f", "a", "args", "b", "kw", "inner", "lam_arg", "vals", "c", "fh", "i", "j", "k", "w",
    }  # fmt: skip


def test_statement_names_of_top_level_statements():
    tree = parse("""
        def loss(x):
            y = 1
        import torch.nn.functional as F, math
        A, (B, C) = 1, (2, 3)
        D = E = 0
        for i in range(2):
            acc = i
        X[0] = 1
        class K: pass
    """)
    assert [syntax.statement_names(s) for s in tree.body] == [
        ["loss"],
        ["F", "math"],
        ["A", "B", "C"],
        ["D", "E"],
        ["i", "acc"],
        [],
        ["K"],
    ]


def test_identifiers_spelled_as_names_but_not_attributes_or_keywords():
    tree = parse("""
        import torch.nn.functional as F
        import numpy.linalg
        def f(a, *, key=None):
            return F.relu(a, inplace=key).sum(dim=Z)
    """)
    assert syntax.identifiers(tree) == {"F", "numpy", "f", "a", "key", "Z"}


# -------------------------------------------------------------------------------------------- scopes


def test_scope_nodes_enter_only_the_parts_a_nested_scope_evaluates_outside():
    fn = first("""
        def loss(x):
            @deco
            def helper(p: Ann = default) -> Ret:
                hidden = p
            g = lambda q=lam_default: q + lam_body
            vals = [elt for item in first_iter for elt in second_iter]
            return vals
    """)
    seen = {n.id for n in syntax.scope_nodes(fn.body) if isinstance(n, ast.Name)}
    assert {"deco", "Ann", "default", "Ret", "lam_default", "first_iter", "g", "vals"} <= seen
    assert not seen & {"hidden", "p", "q", "lam_body", "elt", "item", "second_iter"}


def test_scope_nodes_are_in_source_order():
    fn = first("def f():\n    a = 1\n    b = a\n    return b\n")
    names = [n.id for n in syntax.scope_nodes(fn.body) if isinstance(n, ast.Name)]
    assert names == ["a", "b", "a", "b"]


def test_outer_parts():
    fn = first("@d1\n@d2\ndef f(a: A, b=B, *, c=C) -> R: pass\n")
    assert [ast.unparse(p) for p in syntax.outer_parts(fn)] == ["d1", "d2", "B", "C", "A", "R"]
    cls = first("@dc\nclass K(Base, metaclass=Meta): pass\n")
    assert [ast.unparse(p) for p in syntax.outer_parts(cls)] == ["dc"]  # bases are not walked
    comp = expr("[x for x in xs if x for y in ys]")
    assert [ast.unparse(p) for p in syntax.outer_parts(comp)] == ["xs"]
    assert [ast.unparse(p) for p in syntax.outer_parts(expr("lambda a=1, *, b=2: a"))] == ["1", "2"]


def test_scope_bindings_of_a_function_with_nested_scopes():
    fn = first("""
        def outer(arg):
            import torch.nn.functional as F, math
            from math import log as ln
            from math import *
            total = 0
            def inner(p, q=(default := 3)):
                hidden = p
                return hidden
            lam = lambda lam_arg: lam_arg * 2
            squares = [sq * sq for sq in range(3)]
            pairs = {k: v for k, v in zip(arg, arg)}
            for i, (j, _) in enumerate(squares):
                total += i
            with ctx() as (handle, other):
                pass
            try:
                pass
            except ValueError as err:
                del err
            return inner, lam, pairs
    """)
    bound, declared = syntax.scope_bindings(fn.body)
    assert bound == [
        "F",
        "math",
        "ln",
        "total",
        "inner",
        "default",
        "lam",
        "squares",
        "pairs",
        "i",
        "j",
        "_",
        "handle",
        "other",
        "err",
    ]
    assert declared == set()


def test_scope_bindings_leave_out_global_and_nonlocal_names():
    fn = first("""
        def f():
            global G
            G = 1
            count = 0
            def bump():
                nonlocal count
                count = count + 1
            return bump
    """)
    assert syntax.scope_bindings(fn.body) == (["count", "bump"], {"G"})
    bump = fn.body[3]
    assert syntax.scope_bindings(bump.body) == ([], {"count"})


def test_scope_bindings_of_a_lambda_body_and_of_match_captures():
    lam = expr("lambda x: (y := x) + [z for z in x][0]")
    assert syntax.scope_bindings([lam.body]) == (["y"], set())  # z belongs to the comprehension
    fn = first("""
        def f(v):
            match v:
                case [a, *rest]:
                    pass
                case {**more}:
                    pass
    """)
    assert syntax.scope_bindings(fn.body)[0] == ["a", "rest", "more"]


def test_comprehension_targets_in_order_without_repeats():
    comp = expr("[x + y for (x, y) in pairs for x in other if x]")
    assert syntax.comprehension_targets(comp) == ["x", "y"]
    assert syntax.comprehension_targets(expr("{k: v for k, v in d.items()}")) == ["k", "v"]
