"""flowsift.testing: what module authors use in their own tests."""
import pytest

from flowsift.modules import Module, ModuleError
from flowsift.testing import run_module, segments_capture


def test_hand_made_segments_through_a_builtin(tmp_path):
    cap = segments_capture(tmp_path, client=[b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"],
                           server=[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"HTTP/1.1 404 No\r\nContent-Length: 0\r\n\r\n"])
    result = run_module("http", cap)
    assert [(e["uri"], e["status"]) for e in result.of_kind("response")] == [("/a", 200), ("/b", 404)]
    assert result.counters("http")["requests"] == 2


class Echo(Module):
    """Emits what the client sent.

    Synopsis: echo
    """
    name = "echo_test"

    def on_data(self, flow, stream):
        if stream.direction == 0:
            self.emit("said", text=bytes(stream.read()).decode())

    def on_close(self, flow, reason):
        if flow.client.endswith(":40000"):
            raise ValueError("boom at close")


def test_a_module_class_directly_and_strict_errors(tmp_path):
    cap = segments_capture(tmp_path, client=[b"hello ", b"world"], server=[b"hi"])
    with pytest.raises(ModuleError, match="boom at close"):
        run_module(Echo, cap)
    result = run_module(Echo, cap, strict=False)
    assert "".join(e["text"] for e in result.of_kind("said")) == "hello world"


def test_each_class_given_is_run_itself(tmp_path):
    """Classes were registered by name, once for the session: a second class named like an
    earlier one (or like a built-in) ran the earlier one, and a class defined in a function could
    not be found at all."""
    from flowsift.modules import Module
    cap = segments_capture(tmp_path, client=[b"hi"], server=[b"yo"])

    def make(tag, name="hello"):
        class Hello(Module):
            """Says hello.

            Synopsis: hello
            """
            def on_open(self, flow):
                self.emit("hi", tag=tag)
        Hello.name = name
        return Hello

    assert [e["tag"] for e in run_module(make("a"), cap).events] == ["a"]
    assert [e["tag"] for e in run_module(make("b"), cap).events] == ["b"]
    assert [e["tag"] for e in run_module(make("c", name="counter"), cap).events] == ["c"]
    assert [e["kind"] for e in run_module("counter", cap).events] == ["flow"]          # the built-in still
