import json

import pytest

from discovery.proposers.reply_parser import MAX_CODE_CHARS, Proposal, ReplyError, parse_reply

LOSS = '''import torch


def loss(logits, labels):
    """Smoothed hinge on the margin. Works well."""
    return torch.nn.functional.softplus(-(logits * labels)).mean()
'''


def reason(text: str, slot: str = "loss") -> str:
    with pytest.raises(ReplyError) as info:
        parse_reply(text, slot)
    assert "\n" not in info.value.reason
    assert str(info.value) == info.value.reason
    return info.value.reason


# ---- tags ------------------------------------------------------------------------------------


def test_tags():
    text = f"<thought>Try a softplus margin.</thought>\n<name>softplus margin</name>\n<code>\n{LOSS}</code>"
    p = parse_reply(text, "loss")
    assert isinstance(p, Proposal)
    assert (p.format, p.name, p.thought) == ("tags", "softplus margin", "Try a softplus margin.")
    assert p.code == LOSS


def test_tags_with_fenced_code_and_surrounding_prose():
    text = (
        "Sure! Here is my idea.\n<THOUGHT>\nmultiline\nthought\n</THOUGHT>\n"
        "<name>  **Hinge v2**  \nextra</name>\n"
        f"<code>\n```python\n{LOSS}```\n</code>\nHope it helps."
    )
    p = parse_reply(text, "loss")
    assert p.format == "tags"
    assert p.name == "Hinge v2"
    assert p.thought == "multiline\nthought"
    assert p.code == LOSS


def test_tags_indented_code_is_dedented():
    indented = "\n".join("        " + line if line else "" for line in LOSS.splitlines())
    p = parse_reply(f"<name>x</name><code>\n{indented}\n</code>", "loss")
    assert p.code == LOSS


def test_tags_missing_name_falls_back_to_docstring():
    p = parse_reply(f"<code>{LOSS}</code>", "loss")
    assert p.name == "Smoothed hinge on the margin"
    assert p.thought == ""


def test_tags_truncated_code():
    truncated = LOSS[: LOSS.index("softplus(") + 9]
    r = reason(f"<thought>t</thought><name>n</name><code>\n{truncated}")
    assert r.startswith("code does not parse: line 6:")


def test_tags_without_slot():
    r = reason("<name>n</name><code>def other(x):\n    return x\n</code>")
    assert r == "code does not define loss(...)"


def test_tags_slot_only_nested():
    r = reason("<code>class A:\n    def loss(self, x):\n        return x\n</code>")
    assert r == "code does not define loss(...) at top level"


def test_tags_empty_code():
    assert reason("<name>n</name><code>   </code>") == "the code section is empty"


# ---- JSON ------------------------------------------------------------------------------------


def test_json_bare():
    text = json.dumps({"thought": "because", "name": "json one", "code": LOSS})
    p = parse_reply(text, "loss")
    assert (p.format, p.name, p.thought, p.code) == ("json", "json one", "because", LOSS)


def test_json_in_fence_with_prose():
    obj = json.dumps({"thought": "t", "name": "fenced", "code": LOSS}, indent=2)
    text = f'Here is my proposal:\n\n```json\n{obj}\n```\n\nLet me know {{"what": 1}} you think.'
    p = parse_reply(text, "loss")
    assert (p.format, p.name, p.code) == ("json", "fenced", LOSS)


def test_json_with_prose_no_fence_and_trailing_comma():
    obj = json.dumps({"thought": "t", "name": "commas", "code": LOSS})[:-1] + ",}"
    p = parse_reply(f"My answer is {obj} -- enjoy", "loss")
    assert (p.format, p.name, p.code) == ("json", "commas", LOSS)


def test_json_with_raw_newlines_in_strings():
    text = '{"thought": "line one\nline two", "name": "raw nl", "code": "' + LOSS.replace('"', '\\"') + '"}'
    p = parse_reply(text, "loss")
    assert p.thought == "line one\nline two"
    assert p.code == LOSS


def test_json_code_inside_fence_string():
    text = json.dumps({"name": "f", "code": f"```python\n{LOSS}```"})
    assert parse_reply(text, "loss").code == LOSS


def test_json_code_not_string():
    assert reason('{"name": "x", "code": 3}') == "JSON field 'code' is not a string"


def test_json_missing_slot():
    r = reason(json.dumps({"name": "x", "code": "def foo():\n    pass\n"}))
    assert r == "code does not define loss(...)"


def test_json_truncated():
    text = json.dumps({"thought": "t", "name": "cut", "code": LOSS})[:-40]
    assert reason(f"```json\n{text}").startswith("JSON reply does not parse:")


def test_json_name_sanitized():
    text = json.dumps({"name": "a" * 100 + "\nsecond line", "code": LOSS})
    p = parse_reply(text, "loss")
    assert p.name == "a" * 60


# ---- markdown --------------------------------------------------------------------------------


def test_markdown_last_defining_block():
    text = (
        "**Name:** Focal margin\n\nI think the margin should be focal.\n\n"
        "```python\ndef helper(x):\n    return x\n```\n\n"
        "First draft:\n```python\ndef loss(logits, labels):\n    return 0\n```\n\n"
        f"Final version:\n```python\n{LOSS}```\n\nThat is all."
    )
    p = parse_reply(text, "loss")
    assert p.format == "markdown"
    assert p.name == "Focal margin"
    assert p.code == LOSS
    assert p.thought.startswith("I think the margin should be focal.")
    assert "Final version:" in p.thought
    assert "Name" not in p.thought and "```" not in p.thought


@pytest.mark.parametrize(
    "line,name",
    [("Name: foo_bar", "foo_bar"), ("## Name: Big idea", "Big idea"), ("**Name**: `tilt`", "tilt")],
)
def test_markdown_name_lines(line, name):
    p = parse_reply(f"{line}\n\n```py\n{LOSS}```", "loss")
    assert p.name == name


def test_markdown_docstring_name_and_unlabelled_fence():
    p = parse_reply(f"Here you go:\n```\n{LOSS}```", "loss")
    assert p.name == "Smoothed hinge on the margin"
    assert p.thought == "Here you go:"


def test_markdown_unnamed():
    p = parse_reply("```python\ndef loss(a, b):\n    return a\n```", "loss")
    assert p.name == "unnamed"


def test_markdown_missing_slot():
    r = reason("Idea:\n```python\ndef objective(a, b):\n    return a\n```", "loss")
    assert r == "code does not define loss(...)"


def test_markdown_truncated_block():
    text = "Name: cut\n```python\nimport torch\n\ndef loss(logits, labels):\n    return torch.mean(("
    r = reason(text)
    assert r.startswith("code does not parse: line 4:")


def test_markdown_syntax_error_reports_line():
    r = reason("```python\ndef loss(a, b):\n    return a +\n```")
    assert r.startswith("code does not parse: line 2:")


def test_markdown_python_dict_not_taken_for_json():
    code = 'def loss(a, b):\n    cfg = {"code": "x"}\n    return a\n'
    p = parse_reply(f"```python\n{code}```", "loss")
    assert p.format == "markdown"
    assert p.code == code


def test_crlf_reply():
    p = parse_reply(f"Name: crlf\r\n```python\r\n{LOSS}```\r\n".replace("\n", "\r\n"), "loss")
    assert p.code == LOSS


# ---- raw and rejections ----------------------------------------------------------------------


def test_raw_code_reply():
    p = parse_reply(LOSS, "loss")
    assert (p.format, p.code, p.name) == ("raw", LOSS, "Smoothed hinge on the margin")


@pytest.mark.parametrize("text", ["", "   \n\t  ", None])
def test_empty(text):
    assert reason(text) == "empty reply"


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, I cannot help with that.",
        "asdf }{ ]] ``` not really",
        '{"thought": "no code here", "name": "x"}',
        "\x00\x01 garbage \ufffd",
    ],
)
def test_garbage(text):
    assert reason(text) == "no code block or <code> tag found"


def test_prose_with_unfenced_code():
    r = reason("You could write def loss(a, b): return a - b which is neat.")
    assert r.startswith("no code block or <code> tag found")


def test_code_too_long():
    body = "\n".join(f"    x{i} = {i}" for i in range(3000))
    r = reason(f"```python\ndef loss(a, b):\n{body}\n    return a\n```")
    assert r.startswith("code is too long (")
    assert str(MAX_CODE_CHARS) in r


def test_other_slot_name():
    p = parse_reply("<code>def step(params, grads):\n    return params\n</code>", "step")
    assert p.code.startswith("def step(")


@pytest.mark.parametrize(
    "text",
    [
        "<code>" * 20_000,
        "<code>x</code>" + "<thought>" * 10_000,
        '{"a' * 30_000,
        "\n" * 100_000 + "x",
        "`" * 100_000,
        "```\n" * 25_000,
        "def loss(" * 10_000,
        '{"code": "' + "a" * 100_000,
    ],
)
def test_pathological_replies_are_fast(text):
    import time

    t0 = time.monotonic()
    with pytest.raises(ReplyError):
        parse_reply(text, "loss")
    assert time.monotonic() - t0 < 1.0
