import hashlib

from discovery.proposers.codehash import normalize_source, normalized_hash

DPO = '''import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """DPO."""
    logits = (policy_chosen_logps - reference_chosen_logps) - (
        policy_rejected_logps - reference_rejected_logps
    )
    return -F.logsigmoid(beta * logits)
'''

# same program: other formatting, comments, no docstring, annotations, another local name
DPO_RESTYLED = """import torch
import torch.nn.functional as F
def loss(policy_chosen_logps,policy_rejected_logps,
         reference_chosen_logps,reference_rejected_logps,beta) -> torch.Tensor:
    # the reward margin
    margin: torch.Tensor = ((policy_chosen_logps-reference_chosen_logps)
              - (policy_rejected_logps-reference_rejected_logps))  # trailing comment
    return -F.logsigmoid(beta*margin)
"""

IPO = '''import torch


def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta):
    """IPO."""
    logits = (policy_chosen_logps - reference_chosen_logps) - (
        policy_rejected_logps - reference_rejected_logps
    )
    return (logits - 1 / (2 * beta)) ** 2
'''


def test_hash_is_hex_sha256():
    digest = normalized_hash(DPO)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert normalized_hash(DPO) == digest


def test_formatting_comments_docstrings_and_local_names_do_not_matter():
    assert normalized_hash(DPO) == normalized_hash(DPO_RESTYLED)


def test_local_names_are_renamed_in_order_of_first_appearance():
    a = "def loss(x, beta):\n    a = x * 2\n    b = a + 1\n    return b * a\n"
    b = "def loss(x, beta):\n    q = x * 2\n    p = q + 1\n    return p * q\n"
    swapped = "def loss(x, beta):\n    a = x * 2\n    b = a + 1\n    return a * b\n"
    assert normalized_hash(a) == normalized_hash(b)
    assert normalized_hash(a) != normalized_hash(swapped)


def test_nested_scopes_are_renamed_consistently():
    a = "def loss(x, beta):\n    f = lambda t: t * beta\n    return sum([f(u) for u in x])\n"
    b = "def loss(x, beta):\n    g = lambda s: s * beta\n    return sum([g(w) for w in x])\n"
    assert normalized_hash(a) == normalized_hash(b)


def test_slot_arguments_module_names_and_attributes_are_kept():
    renamed_arg = DPO.replace("beta", "b")
    assert normalized_hash(renamed_arg) != normalized_hash(DPO)
    aliased = DPO.replace("as F", "as G").replace("F.logsigmoid", "G.logsigmoid")
    assert normalized_hash(aliased) != normalized_hash(DPO)
    glob_a = "TAU = 0.05\n\ndef loss(x, beta):\n    return x / TAU\n"
    glob_b = "T = 0.05\n\ndef loss(x, beta):\n    return x / T\n"
    assert normalized_hash(glob_a) != normalized_hash(glob_b)


def test_changed_constant_operator_or_function_changes_the_hash():
    base = normalized_hash(IPO)
    assert normalized_hash(IPO.replace("1 / (2", "1 / (3")) != base
    assert normalized_hash(IPO.replace("logits - 1", "logits + 1")) != base
    assert normalized_hash(IPO.replace("** 2", "** 3")) != base
    assert normalized_hash(DPO.replace("F.logsigmoid", "F.softplus")) != normalized_hash(DPO)


def test_constants_are_compared_to_six_significant_digits():
    assert normalized_hash(IPO) == normalized_hash(IPO.replace("1 / (2", "1.0 / (2.0"))
    assert normalized_hash(IPO) == normalized_hash(IPO.replace("1 / (2", "1.0000001 / (2"))
    assert normalized_hash(IPO) != normalized_hash(IPO.replace("1 / (2", "1.001 / (2"))


def test_unparseable_source_hashes_its_stripped_text():
    bad = "\n  def loss(:\n    return 1\n\n"
    assert normalize_source(bad) is None
    assert normalized_hash(bad) == hashlib.sha256(bad.strip().encode()).hexdigest()
    assert normalized_hash(bad) == normalized_hash(bad.strip())
    assert normalized_hash(bad) != normalized_hash(bad.replace("1", "2"))
