"""The wire between the trusted trainer and a jailed slot function: framed messages over pipes, and
the names and job spec both sides agree on (the session directory's files, the slot kinds,
:class:`JailSpec`).

A message is a header ``<II`` (JSON length, payload length), a JSON document and a payload of
raw tensor bytes. The JSON holds a tree of numbers, strings, ``None``, lists and string-keyed
dicts; a tensor in it is ``{"__tensor__": i}``, the i-th entry of the document's ``tensors``
list (``[dtype, shape]``), whose bytes follow each other in the payload.

Decoding is strict, because the trusted side decodes what a candidate wrote: bounded sizes
and depth, an allow-listed dtype, a shape whose size matches its bytes exactly, no reserved
keys. Nothing in a message is ever executed or unpickled; a message that breaks a rule raises
:class:`ProtocolError` with one line saying which.
"""

from __future__ import annotations

import json
import math
import os
import select
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from sandbox.base import Limits

# -- the session directory and the job spec ----------------------------------------------------

#: the job spec (:class:`JailSpec`) in a session's directory
SPEC_FILE = "job.json"
#: the FIFOs of one session: requests into the jail, replies out of it
TO_JAIL = "to_jail"
FROM_JAIL = "from_jail"
#: the fields of a ``{"failure": {...}}`` message: how the jail saw the candidate fail
#: (``line`` is the candidate's own line, -1 when none; ``error_class`` and ``message`` are the
#: exception's, when it raised one)
FAILURE_FIELDS = ("status", "stage", "reason", "line", "error_class", "message")
#: written by the trusted side: the wall-clock time (``time.time()``) at which the job is killed
DEADLINE_FILE = "deadline"
#: the file name the candidate's code is compiled under (tracebacks and stack dumps name it)
CANDIDATE_FILE = "candidate.py"
#: environment variable that tells a jail started as root which uid its jobs run as
UID_VARIABLE = "DISCOVERY_SANDBOX_UID"
#: slot kinds: a function whose gradient flows back (losses), a per-parameter update rule
DIFFERENTIABLE = "differentiable"
UPDATE_RULE = "update_rule"


@dataclass
class JailSpec:
    """All a function server is told: the candidate and how to call it (no task, config or seed)."""

    source: str
    slot: str
    kind: str = DIFFERENTIABLE
    allowed_imports: tuple[str, ...] = ("torch", "torch.nn.functional", "math")
    limits: Limits = field(default_factory=Limits)
    #: the jail computes on the CPU: the trainer's tensors are copied in and out of it
    device: str = "cpu"
    #: run the candidate under the run-time guard (sandbox/jail/guard.py); only a trusted-side test of the
    #: OS walls behind it (the hostile corpus) turns it off
    guarded: bool = True

    def write(self, directory: Path) -> None:
        """Write ``job.json`` into ``directory``."""
        (Path(directory) / SPEC_FILE).write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, directory: Path) -> JailSpec:
        """The spec written by :meth:`write`."""
        data = json.loads((Path(directory) / SPEC_FILE).read_text())
        data["limits"] = Limits(**data["limits"])
        data["allowed_imports"] = tuple(data["allowed_imports"])
        return cls(**data)


# -- framed messages ---------------------------------------------------------------------------

HEADER = struct.Struct("<II")
#: bytes of JSON one message may carry (the tree of a slot's arguments is small)
MAX_JSON_BYTES = 1 << 20
#: bytes of tensor data one message may carry by default
MAX_PAYLOAD_BYTES = 1 << 28
MAX_DEPTH = 8
MAX_TENSORS = 4096
MAX_DIMS = 8
MAX_STRING = 4096
TENSOR_KEY = "__tensor__"
DTYPES: dict[str, torch.dtype] = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.float32,
        torch.float64,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}
ITEM_BYTES = {dtype: torch.empty((), dtype=dtype).element_size() for dtype in DTYPES.values()}
#: pipe buffer asked for (Linux F_SETPIPE_SZ): fewer wake-ups for the tensors of one call
PIPE_BYTES = 1 << 20
#: bytes one read asks for at least: a whole small message (header, JSON, tensors) in one system call
READ_BYTES = 1 << 16
F_SETPIPE_SZ = 1031


class ProtocolError(Exception):
    """A message that breaks the wire format (one-line reason)."""


class ChannelClosed(Exception):
    """The other side went away, or did not answer in time."""


def _encode_tree(value: Any, tensors: list[torch.Tensor], depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise ProtocolError(f"nested deeper than {MAX_DEPTH} levels")
    if type(value) is torch.Tensor or isinstance(value, torch.Tensor):
        tensors.append(value)
        return {TENSOR_KEY: len(tensors) - 1}
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # "nan" / "inf" stay distinguishable
    if isinstance(value, (list, tuple)):
        return [_encode_tree(v, tensors, depth + 1) for v in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str) or key.startswith("__"):
                raise ProtocolError(f"dict key {key!r} is not a plain string")
            out[key] = _encode_tree(item, tensors, depth + 1)
        return out
    raise ProtocolError(f"cannot send a {type(value).__name__}")


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    if tensor.requires_grad:
        tensor = tensor.detach()
    if tensor.device.type != "cpu" or not tensor.is_contiguous():
        tensor = tensor.to("cpu").contiguous()
    if tensor.dtype is torch.bfloat16:  # numpy has no bfloat16: go through its bytes
        tensor = tensor.reshape(-1).view(torch.uint8)
    return tensor.numpy().tobytes()


def encode(message: dict[str, Any]) -> bytes:
    """One framed message: header, JSON, tensor bytes."""
    tensors: list[torch.Tensor] = []
    tree = _encode_tree(message, tensors)
    meta = [[str(t.dtype).removeprefix("torch."), list(t.shape)] for t in tensors]
    for dtype, _ in meta:
        if dtype not in DTYPES:
            raise ProtocolError(f"cannot send a tensor of dtype {dtype}")
    document = json.dumps({"tree": tree, "tensors": meta}, separators=(",", ":")).encode()
    payload = b"".join(_tensor_bytes(t) for t in tensors)
    return HEADER.pack(len(document), len(payload)) + document + payload


def _decode_tree(value: Any, tensors: list[torch.Tensor], depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise ProtocolError(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        if TENSOR_KEY in value:
            index = value[TENSOR_KEY]
            if len(value) != 1 or not isinstance(index, int) or not 0 <= index < len(tensors):
                raise ProtocolError("malformed tensor reference")
            return tensors[index]
        for key in value:
            if key.startswith("__"):
                raise ProtocolError(f"reserved key {key[:40]!r}")
        return {k: _decode_tree(v, tensors, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode_tree(v, tensors, depth + 1) for v in value]
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise ProtocolError(f"string longer than {MAX_STRING} characters")
        return float(value) if value in ("nan", "inf", "-inf") else value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    raise ProtocolError(f"unexpected {type(value).__name__}")


def decode(document: bytes, payload: bytes) -> dict[str, Any]:
    """The message of one frame's JSON and payload (strict; raises ProtocolError)."""
    try:
        data = json.loads(document)
    except ValueError as exc:
        raise ProtocolError(f"header is not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tensors"), list) or "tree" not in data:
        raise ProtocolError("header lacks its tree or tensor list")
    meta = data["tensors"]
    if len(meta) > MAX_TENSORS:
        raise ProtocolError(f"more than {MAX_TENSORS} tensors")
    tensors: list[torch.Tensor] = []
    view = memoryview(payload)
    offset = 0
    for entry in meta:
        if not (isinstance(entry, list) and len(entry) == 2 and entry[0] in DTYPES and isinstance(entry[1], list)):
            raise ProtocolError("malformed tensor description")
        dtype, shape = DTYPES[entry[0]], entry[1]
        if len(shape) > MAX_DIMS or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ProtocolError(f"bad tensor shape {str(shape)[:60]}")
        count = math.prod(shape)
        size = count * ITEM_BYTES[dtype]
        if offset + size > len(view):
            raise ProtocolError("tensor bytes run past the payload")
        if count:  # a writable copy of its own bytes: the tensor owns its memory
            tensor = torch.frombuffer(bytearray(view[offset : offset + size]), dtype=dtype)
            if len(shape) != 1:
                tensor = tensor.reshape(shape)
        else:
            tensor = torch.empty(shape, dtype=dtype)
        tensors.append(tensor)
        offset += size
    if offset != len(view):
        raise ProtocolError("payload holds bytes no tensor describes")
    tree = _decode_tree(data["tree"], tensors)
    if not isinstance(tree, dict):
        raise ProtocolError("a message is a dict")
    return tree


def enlarge_pipe(fd: int) -> None:
    """Ask for a bigger pipe buffer (best effort: Linux only, capped by /proc/sys/fs/pipe-max-size)."""
    try:
        import fcntl

        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)
    except (OSError, ImportError, ValueError):
        pass


#: ``wait(fd, for_write, deadline)``: block until ``fd`` is ready, or raise ChannelClosed
Waiter = Callable[[int, bool, float], None]


def select_wait(fd: int, for_write: bool, deadline: float) -> None:
    """Wait for ``fd`` with select until ``deadline`` (``time.monotonic()``); ChannelClosed after."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ChannelClosed("no answer in time")
    ready = select.select([], [fd], [], remaining) if for_write else select.select([fd], [], [], remaining)
    if not any(ready):
        raise ChannelClosed("no answer in time")


class Channel:
    """Framed messages over a pair of descriptors. ``wait`` decides how to block (the trusted side
    passes one that also watches the jail's process and its deadline); without it the descriptors
    are used blocking (the jail's side)."""

    def __init__(self, read_fd: int, write_fd: int, wait: Waiter | None = None, max_payload: int = MAX_PAYLOAD_BYTES):
        self.read_fd, self.write_fd, self.wait, self.max_payload = read_fd, write_fd, wait, max_payload
        self._ahead = bytearray()
        if wait is not None:
            os.set_blocking(read_fd, False)
            os.set_blocking(write_fd, False)

    def send(self, message: dict[str, Any], deadline: float = math.inf) -> None:
        """Write one message (all of it, or ChannelClosed)."""
        view = memoryview(encode(message))
        while view:
            try:
                written = os.write(self.write_fd, view)
            except BlockingIOError:  # the pipe is full: wait (watching the other side) and retry
                if self.wait is not None:
                    self.wait(self.write_fd, True, deadline)
                continue
            except OSError as exc:
                raise ChannelClosed(f"the other side closed the channel ({exc.strerror})") from None
            view = view[written:]

    def _read_exactly(self, count: int, deadline: float) -> bytes:
        """``count`` bytes: from what was read ahead, then from the pipe (one read takes all there is)."""
        while len(self._ahead) < count:
            try:
                chunk = os.read(self.read_fd, max(count - len(self._ahead), READ_BYTES))
            except BlockingIOError:  # nothing there yet: wait (watching the other side) and retry
                if self.wait is not None:
                    self.wait(self.read_fd, False, deadline)
                continue
            if not chunk:
                raise ChannelClosed("the other side closed the channel")
            self._ahead += chunk
        data = bytes(self._ahead[:count])
        del self._ahead[:count]
        return data

    def receive(self, deadline: float = math.inf) -> dict[str, Any]:
        """Read and decode one message (ProtocolError when it breaks the format)."""
        size, payload_size = HEADER.unpack(self._read_exactly(HEADER.size, deadline))
        if size > MAX_JSON_BYTES:
            raise ProtocolError(f"header of {size} bytes (at most {MAX_JSON_BYTES})")
        if payload_size > self.max_payload:
            raise ProtocolError(f"{payload_size} bytes of tensors (at most {self.max_payload})")
        document = self._read_exactly(size, deadline)
        payload = self._read_exactly(payload_size, deadline) if payload_size else b""
        return decode(document, payload)
