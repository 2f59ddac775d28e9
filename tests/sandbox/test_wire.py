"""The wire between trainer and jail: what round-trips, and what a hostile writer cannot make us decode."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch

from sandbox.wire import HEADER, MAX_DEPTH, Channel, ChannelClosed, ProtocolError, decode, encode, select_wait


def roundtrip(message: dict) -> dict:
    frame = encode(message)
    size, _ = HEADER.unpack(frame[: HEADER.size])
    return decode(frame[HEADER.size : HEADER.size + size], frame[HEADER.size + size :])


@pytest.mark.parametrize(
    "dtype",
    [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.uint8, torch.bool],
)
def test_tensors_of_every_allowed_dtype_round_trip_exactly(dtype):
    t = (torch.randn(3, 5) * 7).to(dtype)
    got = roundtrip({"args": [t, t.T, t[:, 1], torch.empty(0, 4, dtype=dtype)], "beta": 0.1, "n": 3, "s": None})
    assert torch.equal(got["args"][0], t) and got["args"][0].dtype == dtype
    assert torch.equal(got["args"][1], t.T) and torch.equal(got["args"][2], t[:, 1])
    assert got["args"][3].shape == (0, 4)
    assert got["beta"] == 0.1 and got["n"] == 3 and got["s"] is None


def test_non_finite_floats_stay_distinguishable_from_strings():
    got = roundtrip({"values": [float("nan"), float("inf"), float("-inf"), "text"]})
    assert got["values"][0] != got["values"][0] and got["values"][1:3] == [float("inf"), float("-inf")]
    assert got["values"][3] == "text"


def test_a_decoded_tensor_owns_its_memory():
    got = roundtrip({"x": torch.ones(4)})
    got["x"].add_(1.0)  # writable, and no other tensor of the message shares it
    assert torch.equal(got["x"], torch.full((4,), 2.0))


def _frame(document: dict, payload: bytes = b"") -> tuple[bytes, bytes]:
    return json.dumps(document).encode(), payload


@pytest.mark.parametrize(
    ("document", "payload", "why"),
    [
        ({"tree": {"x": {"__tensor__": 0}}, "tensors": [["float32", [4]]]}, b"\0" * 8, "run past the payload"),
        ({"tree": {"x": {"__tensor__": 0}}, "tensors": [["float32", [1]]]}, b"\0" * 8, "no tensor describes"),
        ({"tree": {"x": {"__tensor__": 0}}, "tensors": [["object", [1]]]}, b"\0" * 8, "malformed tensor"),
        ({"tree": {"x": {"__tensor__": 0}}, "tensors": [["float32", [-1]]]}, b"", "bad tensor shape"),
        ({"tree": {"x": {"__tensor__": 3}}, "tensors": []}, b"", "malformed tensor reference"),
        ({"tree": {"__class__": 1}, "tensors": []}, b"", "reserved key"),
        ({"tree": [1, 2], "tensors": []}, b"", "a message is a dict"),
        ({"tree": {"s": "x" * 5000}, "tensors": []}, b"", "longer than"),
        ({"tensors": []}, b"", "lacks its tree"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(document, payload, why):
    with pytest.raises(ProtocolError, match=why):
        decode(*_frame(document, payload))


def test_nesting_and_unsendable_values_are_refused():
    deep: dict = {}
    node = deep
    for _ in range(MAX_DEPTH + 2):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(ProtocolError, match="nested deeper"):
        encode({"tree": deep})
    with pytest.raises(ProtocolError, match="cannot send a function"):
        encode({"f": lambda: 1})
    with pytest.raises(ProtocolError, match="not a plain string"):
        encode({"d": {1: 2}})
    with pytest.raises(ProtocolError, match="header is not JSON"):
        decode(b"{not json", b"")


def test_a_channel_carries_messages_larger_than_the_pipe_and_refuses_oversize_payloads():
    a_read, b_write = os.pipe()
    b_read, a_write = os.pipe()
    big = torch.randn(300_000)  # 1.2 MB: more than a pipe buffer, so reads and writes interleave
    import threading

    def echo() -> None:
        peer = Channel(a_read, a_write)
        peer.send(peer.receive())

    thread = threading.Thread(target=echo)
    thread.start()
    ours = Channel(b_read, b_write, wait=select_wait)
    import time

    ours.send({"x": big}, time.monotonic() + 30)
    assert torch.equal(ours.receive(time.monotonic() + 30)["x"], big)
    thread.join()
    small = Channel(b_read, b_write, wait=select_wait, max_payload=16)
    os.write(a_write, HEADER.pack(2, 1 << 20) + b"{}")
    with pytest.raises(ProtocolError, match="bytes of tensors"):
        small.receive(time.monotonic() + 5)
    with pytest.raises(ChannelClosed, match="in time"):
        Channel(a_read, os.dup(a_write), wait=select_wait).receive(time.monotonic() + 0.2)
    for fd in (a_read, b_write, b_read, a_write):
        os.close(fd)


def test_a_header_that_asks_for_too_much_json_is_refused():
    r, w = os.pipe()
    os.write(w, struct.pack("<II", 1 << 30, 0))
    with pytest.raises(ProtocolError, match="header of"):
        Channel(r, w).receive()
    os.close(r)
    os.close(w)
