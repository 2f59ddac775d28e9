"""Turn an LLM reply into a :class:`Proposal` (name, thought, code) or a one-line reason why not.

Three reply formats are understood, tried in this order:

``tags``
    ``<thought>...</thought> <name>...</name> <code>...</code>``; the code may itself sit in a
    ```` ``` ```` fence inside the tag. An unclosed ``<code>`` (a truncated reply) takes the rest.
``json``
    an object ``{"thought": ..., "name": ..., "code": ...}``, bare or in a ```` ```json ```` fence,
    with prose around it allowed (raw newlines inside strings and trailing commas are tolerated).
``markdown``
    the last fenced Python block (```` ```python ````, ```` ```py ```` or unlabelled) defining
    ``def <slot>(``; the name comes from a ``Name: foo`` / ``**Name:** foo`` line or the slot
    function's docstring, the thought is the prose before the block.

As a last resort a reply that is nothing but Python source defining the slot is accepted
(format ``raw``).

Every rejection raises :class:`ReplyError` whose ``reason`` is a single line meant to be shown
back to the LLM in its next prompt.
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
from dataclasses import dataclass

from sandbox.text import one_line

MAX_CODE_CHARS = 20_000
MAX_NAME_CHARS = 60
FALLBACK_NAME = "unnamed"

__all__ = ["MAX_CODE_CHARS", "Proposal", "ReplyError", "parse_reply"]


@dataclass
class Proposal:
    """One candidate extracted from a reply."""

    name: str
    thought: str
    code: str
    format: str  # "tags" | "json" | "markdown" | "raw"


class ReplyError(ValueError):
    """The reply holds no usable candidate; ``reason`` is one line for the next prompt."""

    def __init__(self, reason: str):
        reason = one_line(reason, 300) or "unusable reply"
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# helpers


def _tag(text: str, tag: str) -> tuple[str | None, bool]:
    """Content of the first ``<tag>`` (and whether it was closed); an unclosed tag runs to the end.

    Two linear scans rather than one ``<tag>(.*?)</tag>`` regex, which is quadratic on replies
    with many unclosed tags.
    """
    opened = re.search(rf"<{tag}[ \t]*>", text, re.IGNORECASE)
    if not opened:
        return None, False
    closed = re.compile(rf"</{tag}[ \t]*>", re.IGNORECASE).search(text, opened.end())
    if not closed:
        return text[opened.end() :], False
    return text[opened.end() : closed.start()], True


# A fence: ``` or ~~~ (3+), an optional info string, a newline, the body, then a closing fence on
# its own line or the end of the text (an unclosed fence means a truncated reply).
_FENCE = re.compile(
    r"^[ \t]*(?P<fence>`{3,12}|~{3,12})[ \t]*(?P<lang>[\w+.-]*)[^\n]*\n(?P<body>.*?)"
    r"(?:^[ \t]*(?P=fence)[ \t]*$|\Z)",
    re.MULTILINE | re.DOTALL,
)
_PY_LANGS = {"", "python", "py", "python3", "py3"}

_NAME_LINE = re.compile(
    r"^[ \t>#*_-]*name[*_]*[ \t]*[:=][ \t]*[*_]*[ \t]*(?P<name>\S.*?)[ \t]*$",
    re.IGNORECASE | re.MULTILINE,
)


def _def_re(slot_name: str) -> re.Pattern[str]:
    return re.compile(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(slot_name)}[ \t]*\(", re.MULTILINE)


@dataclass
class _Fence:
    lang: str
    body: str
    start: int
    end: int


def _fences(text: str) -> list[_Fence]:
    return [_Fence(m.group("lang").lower(), m.group("body"), m.start(), m.end()) for m in _FENCE.finditer(text)]


def _unfence(code: str, slot_name: str) -> str:
    """The code inside a fence if ``code`` holds one (preferring the block defining the slot)."""
    blocks = [f for f in _fences(code) if f.lang in _PY_LANGS]
    if not blocks:
        return code
    defining = [f for f in blocks if _def_re(slot_name).search(f.body)]
    return (defining or blocks)[-1].body


def _normalize_code(code: str) -> str:
    code = code.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4)
    code = textwrap.dedent(code.strip("\n"))
    return code.strip() + "\n" if code.strip() else ""


def _clean_name(raw: str | None) -> str:
    if not raw:
        return ""
    for line in str(raw).splitlines():
        line = line.strip().strip("*_`#\"'[]").strip()
        line = "".join(ch for ch in line if ch.isprintable())
        line = " ".join(line.split())
        if line:
            return line[:MAX_NAME_CHARS].rstrip()
    return ""


def _docstring_name(code: str, slot_name: str) -> str:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return ""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == slot_name:
            doc = ast.get_docstring(node) or ""
            first = doc.strip().splitlines()[0] if doc.strip() else ""
            first = re.split(r"(?<=[.!?])\s", first, maxsplit=1)[0].rstrip(".!?:")
            return " ".join(first.split()[:8])
    return ""


def _finish(name: str | None, thought: str | None, code: str, fmt: str, slot_name: str) -> Proposal:
    code = _normalize_code(code)
    if not code:
        raise ReplyError("the code section is empty")
    if len(code) > MAX_CODE_CHARS:
        raise ReplyError(f"code is too long ({len(code)} chars > {MAX_CODE_CHARS})")
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise ReplyError(f"code does not parse: line {e.lineno}: {e.msg}") from None
    except (ValueError, RecursionError, MemoryError) as e:  # e.g. null bytes
        raise ReplyError(f"code does not parse: {e}") from None
    top_level = any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == slot_name for n in tree.body)
    if not top_level:
        where = " at top level" if _def_re(slot_name).search(code) else ""
        raise ReplyError(f"code does not define {slot_name}(...){where}")
    clean = _clean_name(name) or _clean_name(_docstring_name(code, slot_name)) or FALLBACK_NAME
    return Proposal(name=clean, thought=(thought or "").strip(), code=code, format=fmt)


# --------------------------------------------------------------------------------------------
# formats


def _parse_tags(text: str, slot_name: str) -> Proposal | None:
    code, _ = _tag(text, "code")  # unclosed: a truncated reply, take the rest
    if code is None:
        return None
    name, name_closed = _tag(text, "name")
    thought, thought_closed = _tag(text, "thought")
    return _finish(
        name if name_closed else None,
        thought if thought_closed else None,
        _unfence(code, slot_name),
        "tags",
        slot_name,
    )


_MAX_JSON_TRIES = 200  # bare `{"` candidates decoded at most (keeps pathological replies fast)
_MAX_LENIENT_TRIES = 3  # of which re-decoded without trailing commas (O(len(text)) each)
_TRAILING_COMMA = re.compile(r",(\s*[}\]])")


def _decode_object(text: str, pos: int) -> tuple[object, int] | json.JSONDecodeError:
    decoder = json.JSONDecoder(strict=False)  # strict=False: raw newlines inside strings
    try:
        return decoder.raw_decode(text, pos)
    except json.JSONDecodeError as e:
        return e


def _loads_lenient(text: str) -> object:
    decoder = json.JSONDecoder(strict=False)
    try:
        return decoder.decode(text)
    except json.JSONDecodeError:
        return decoder.decode(_TRAILING_COMMA.sub(r"\1", text))


class _BadJSON(Exception):
    pass


def _json_candidates(text: str, fences: list[_Fence]) -> list[dict]:
    found: list[dict] = []
    bad: str | None = None
    for f in fences:
        if f.lang in ("json", "json5", "jsonc"):
            try:
                obj = _loads_lenient(f.body.strip())
            except json.JSONDecodeError as e:
                bad = f"line {e.lineno}: {e.msg}"
                continue
            if isinstance(obj, dict):
                found.append(obj)
    if found:
        return found
    # Bare objects: every `{"` not inside a non-JSON fence; skip past each decoded object.
    skip = [(f.start, f.end) for f in fences if f.lang not in ("json", "json5", "jsonc")]
    pos = 0
    first_error: str | None = None
    tries = 0
    for m in re.finditer(r"\{\s*\"", text):
        start = m.start()
        if start < pos or any(a <= start < b for a, b in skip):
            continue
        tries += 1
        if tries > _MAX_JSON_TRIES:
            break
        decoded = _decode_object(text, start)
        if isinstance(decoded, json.JSONDecodeError):
            error = decoded
            end = text.rfind("}") + 1
            if tries <= _MAX_LENIENT_TRIES and end > start:
                # Retry with trailing commas removed, up to the last closing brace.
                try:
                    decoded = (_loads_lenient(text[start:end]), end)
                except json.JSONDecodeError:
                    pass
            if isinstance(decoded, json.JSONDecodeError):
                if first_error is None and '"code"' in text[start:]:
                    line = text.count("\n", start, error.pos) + 1
                    first_error = f"line {line}: {error.msg}"
                continue
        obj, end = decoded
        if isinstance(obj, dict):
            found.append(obj)
            pos = end
    if not any("code" in o for o in found) and (bad or first_error):
        raise _BadJSON(bad or first_error)
    return found


def _parse_json(text: str, slot_name: str, fences: list[_Fence]) -> Proposal | None:
    try:
        objs = [o for o in _json_candidates(text, fences) if "code" in o]
    except _BadJSON as e:
        # Looks like JSON but does not decode; only an error if nothing else follows.
        if not any(f.lang in _PY_LANGS and _def_re(slot_name).search(f.body) for f in fences):
            raise ReplyError(f"JSON reply does not parse: {e}") from None
        return None
    if not objs:
        return None
    obj = objs[-1]
    code = obj.get("code")
    if not isinstance(code, str):
        raise ReplyError("JSON field 'code' is not a string")
    thought = obj.get("thought", obj.get("reasoning", ""))
    name = obj.get("name")
    return _finish(
        name if isinstance(name, str) else None,
        thought if isinstance(thought, str) else json.dumps(thought),
        _unfence(code, slot_name),
        "json",
        slot_name,
    )


def _parse_markdown(text: str, slot_name: str, fences: list[_Fence]) -> Proposal | None:
    blocks = [f for f in fences if f.lang in _PY_LANGS]
    if not blocks:
        return None
    defining = [f for f in blocks if _def_re(slot_name).search(f.body)]
    block = (defining or blocks)[-1]
    prose = text[: block.start]
    outside = _FENCE.sub("", text)  # name line anywhere outside code
    m = _NAME_LINE.search(outside)
    name = m.group("name") if m else None
    thought = _NAME_LINE.sub("", _FENCE.sub("", prose)).strip()
    return _finish(name, thought, block.body, "markdown", slot_name)


def _parse_raw(text: str, slot_name: str) -> Proposal | None:
    if not _def_re(slot_name).search(text):
        return None
    try:
        ast.parse(_normalize_code(text))
    except (SyntaxError, ValueError):
        return None
    return _finish(None, "", text, "raw", slot_name)


# --------------------------------------------------------------------------------------------


def parse_reply(text: str, slot_name: str) -> Proposal:
    """Extract the candidate from ``text``; raise :class:`ReplyError` with a one-line reason."""
    if text is None or not str(text).strip():
        raise ReplyError("empty reply")
    text = str(text).replace("\r\n", "\n").replace("\r", "\n")
    fences = _fences(text)
    for attempt in (
        lambda: _parse_tags(text, slot_name),
        lambda: _parse_json(text, slot_name, fences),
        lambda: _parse_markdown(text, slot_name, fences),
        lambda: _parse_raw(text, slot_name),
    ):
        proposal = attempt()
        if proposal is not None:
            return proposal
    if _def_re(slot_name).search(text):
        raise ReplyError(f"no code block or <code> tag found (put {slot_name}(...) in a ```python block)")
    raise ReplyError("no code block or <code> tag found")
