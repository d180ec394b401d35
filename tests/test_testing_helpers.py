"""flowsift.testing: what module authors use in their own tests."""
import inspect
import json
import re
import textwrap

import pytest

from flowsift.modules import Module, ModuleError, Option
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
    """Strict: the hook's own exception reaches the test, raised where the module raised it (it
    came as a ModuleError made from the worker's message, its type and frames lost)."""
    cap = segments_capture(tmp_path, client=[b"hello ", b"world"], server=[b"hi"])
    with pytest.raises(ValueError, match="boom at close") as raised:
        run_module(Echo, cap)
    assert raised.type is ValueError
    last = raised.traceback[-1]
    assert str(last.path) == __file__ and last.name == "on_close"
    # in worker processes, as `flowsift chain` runs it: the message names the hook and its line
    with pytest.raises(ModuleError, match="module echo_test: on_close\\(\\) raised ValueError: boom at close") as raised:
        run_module(Echo, cap, inline=False)
    assert f'File "{__file__}", line {last.lineno + 1}, in on_close' in str(raised.value)
    result = run_module(Echo, cap, strict=False)
    assert "".join(e["text"] for e in result.of_kind("said")) == "hello world"
    assert result.counters("echo_test")["errors"] == 1 and result.summary["mode"] == "inline"


class Sized(Module):
    """Emits its options.

    Synopsis: sized
    """
    name = "sized"
    options = {"big": Option(int, 10, "a size"), "ratio": Option(float, 1.0, "a ratio"),
               "on": Option(bool, False, "a switch"), "words": Option(list, [], "words")}

    def on_open(self, flow):
        self.emit("config", **self.config)


def test_keyword_arguments_are_the_modules_options(tmp_path):
    """They were handed to the chain runner: `big=500` was a TypeError from deep inside it."""
    cap = segments_capture(tmp_path, client=[b"hi"], server=[b"yo"])
    mod = tmp_path / "sized.py"
    mod.write_text("from flowsift.modules import Module, Option\n\n" + textwrap.dedent(inspect.getsource(Sized)))

    def config(spec, **kw):
        (e,) = run_module(spec, cap, **kw).of_kind("config")
        return {k: e[k] for k in Sized.options}
    want = {"big": 500, "ratio": 1.0, "on": False, "words": []}
    assert config(str(mod), big=500) == config(Sized, big="500") == config(f"{mod}:Sized", big=500) == want
    assert config(Sized, ratio=2, on="yes", words=("a", "b")) == {**want, "big": 10, "ratio": 2, "on": True,
                                                                 "words": ["a", "b"]}
    assert config(Sized) == {**want, "big": 10}                 # defaults again: nothing stays from a run
    for kw, needle in (({"bog": 1}, "module sized: no option 'bog' (options: big, ratio, on, words)"),
                       ({"big": "x"}, "module sized: option big='x' is not an integer"),
                       ({"big": 1.5}, "module sized: option big=1.5 is not an integer"),
                       ({"big": True}, "module sized: option big=True is not an integer"),
                       ({"on": 1}, "module sized: option on=1 is not true or false")):
        with pytest.raises(ModuleError, match=re.escape(needle)):
            run_module(Sized, cap, **kw)
    for spec in (f"{mod},counter", f"{mod}(big=2)"):
        with pytest.raises(TypeError, match="keyword options \\(big\\) are for one module"):
            run_module(spec, cap, big=1)


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


class Numbers(Module):
    """Emits numpy values, and a NaN when told.

    Synopsis: numbers
    """
    name = "numbers"
    options = {"bad": Option(str, "", "a field to make NaN or infinite")}

    def on_close(self, flow, reason):
        import numpy as np
        bad = self.config["bad"]
        fields = {"total": flow.records()["payload_len"].sum(), "i": np.int64(5), "f": np.float32(1.5),
                  "yes": np.bool_(True), "sizes": flow.records()["payload_len"][:3], "plain": 2.5}
        if bad:
            fields[bad] = {"nan": float("nan"), "inf": float("inf"), "list": [1.0, np.float64("-inf")],
                           "np": np.float32("nan")}[bad]
        self.emit("numbers", **fields)


def test_numpy_values_are_json_numbers_and_nan_is_a_hook_error(tmp_path):
    """numpy scalars were written as strings ("312"), NaN and infinities as NaN and Infinity,
    which no JSON reader takes."""
    cap = segments_capture(tmp_path, client=[b"hello ", b"world"], server=[b"hi"])
    (e,) = run_module(Numbers, cap).of_kind("numbers")
    assert e["total"] == 13 and type(e["total"]) is int and e["i"] == 5 and e["f"] == 1.5 and e["yes"] is True
    assert e["sizes"] == [0, 0, 6] and e["plain"] == 2.5
    for bad in ("nan", "inf", "list", "np"):
        with pytest.raises(ModuleError, match=re.escape(f"module numbers: event 'numbers': field {bad!r} holds NaN "
                                                        f"or an infinity, which JSON has no number for")):
            run_module(Numbers, cap, bad=bad)
    result = run_module(Numbers, cap, strict=False, bad="nan")
    assert result.events == [] and result.counters("numbers")["errors"] == 1


class Deep(Module):
    """Emits long doubles, or a list that contains itself.

    Synopsis: deep
    """
    name = "deep"
    options = {"what": Option(str, "long", "what to emit")}

    def on_close(self, flow, reason):
        import numpy as np
        what = self.config["what"]
        if what == "long":
            self.emit("deep", one=np.longdouble(1.5), many=np.array([0.5, 2], dtype=np.longdouble))
        elif what == "nan":
            self.emit("deep", v=np.longdouble("nan"))
        elif what == "complex":
            self.emit("deep", v=np.clongdouble(1 + 2j))
        else:
            loop = [1]
            loop.append(loop)
            self.emit("deep", fine=1, v={"in": loop})


@pytest.mark.parametrize("events", [True, False])
def test_long_doubles_are_numbers_and_a_value_that_contains_itself_is_a_module_error(tmp_path, events):
    """Both were a RecursionError: numpy gives a long double back from tolist(), and the encoder
    does not look for cycles."""
    cap = segments_capture(tmp_path, client=[b"hello"], server=[b"hi"])
    if events:
        (e,) = run_module(Deep, cap).of_kind("deep")
        assert e["one"] == 1.5 and type(e["one"]) is float and e["many"] == [0.5, 2.0]
    for what, needle in (("nan", "field 'v' holds NaN or an infinity, which JSON has no number for"),
                         ("complex", "field 'v' holds a value of type numpy.clongdouble, which JSON cannot carry"),
                         ("loop", "field 'v' holds a value that contains itself, which JSON cannot write")):
        if events:
            with pytest.raises(ModuleError, match=re.escape(f"module deep: event 'deep': {needle}")):
                run_module(Deep, cap, what=what)
        else:
            # no event line made (no --events): the same error
            from flowsift.chain import run_chain
            from flowsift.testing import _register
            from flowsift.modules import loader
            key = _register(Deep, {"what": what})
            try:
                with pytest.raises(ModuleError, match=re.escape(f"module deep: event 'deep': {needle}")):
                    run_chain(key, str(cap), events=None, strict=True, inline=True, store=str(tmp_path / f"s{what}"),
                              advise=False)
            finally:
                loader.GIVEN.pop(key, None)


def test_segments_are_checked_and_the_limit_is_said(tmp_path):
    """A segment over what an IPv4 packet carries was a struct.error, one that is not bytes
    "can't concat tuple to bytes", a bare bytes a TypeError about ints."""
    import flowsift.testing
    most = 65_535 - 20 - 20
    assert getattr(flowsift.testing, "MAX_SEGMENT", most) == most
    cap = segments_capture(tmp_path, client=[b"x" * most, bytearray(b"y"), memoryview(b"z")])
    assert run_module("counter", cap).of_kind("flow")[0]["bytes"][0] == most + 2
    for kw, error, needle in (
            ({"client": [b"x" * 70000]}, ValueError, "segments_capture: client[0] has 70,000 bytes: a segment carries "
                                                     "at most 65,495 (an IPv4 packet's 65,535 less its IP and TCP headers)"),
            ({"server": [b"ok", (b"a", b"b")]}, TypeError, "segments_capture: server[1] is a tuple: a segment is bytes"),
            ({"client": [b"ok", "text"]}, TypeError, "segments_capture: client[1] is a str: a segment is bytes"),
            ({"client": b"hello"}, TypeError, "segments_capture: client is a list of segments, not one bytes"),
            ({"client": 5}, TypeError, "segments_capture: client is a list of segments (bytes), not a int"),
            ({"port": 70000}, ValueError, "segments_capture: port=70000: the server's port, from 1 to 65535")):
        with pytest.raises(error, match=re.escape(needle)):
            segments_capture(tmp_path, **kw)


def test_an_option_of_a_type_of_the_modules_own_says_its_own_words(tmp_path):
    """The type's message was dropped: "option port='70000' is not a port", not why."""
    from flowsift.modules import parse_chain
    mod = tmp_path / "porty.py"
    mod.write_text(textwrap.dedent('''
        from flowsift.modules import Module, Option

        class port(int):
            def __new__(cls, text):
                value = int(text)
                if not 0 < value < 65536:
                    raise ValueError(f"{value} is not from 1 to 65535")
                return super().__new__(cls, value)

        class Porty(Module):
            """Takes a port.

            Synopsis: porty
            """
            name = "porty"
            options = {"port": Option(port, port("80"), "a port")}
    '''))
    ((_, config),) = parse_chain(f"{mod}(port=8080)")
    assert config["port"] == 8080
    with pytest.raises(ModuleError, match=re.escape("module porty: option port='70000' is not a port: "
                                                    "70000 is not from 1 to 65535")):
        parse_chain(f"{mod}(port=70000)")
    # a message that only repeats the text adds nothing: the kind alone
    with pytest.raises(ModuleError, match=re.escape("module dns: option ports='0' is not a list of ports "
                                                    "(1 to 65535, parted by ';')") + "$"):
        parse_chain("dns(ports=0)")


def test_an_editing_module_is_tested_by_its_edits_and_its_output(tmp_path):
    """The example of docs/modules.md: Result.edits holds what the gateway accepted and
    refused, with the old and new values, and `write` the edited capture."""
    from flowsift.modules import Module

    class Mask(Module):
        """Masks the password of a login line.

        Synopsis: mask
        """
        name = "mask"
        reads = {"stream"}
        writes = {"payload"}

        def on_data(self, flow, stream):
            at = stream.find(b"PASS ")
            end = stream.find(b"\r\n", at) if at >= 0 else -1
            if end >= 0:
                secret = stream.peek_bytes(end - stream.tell())[at + 5 - stream.tell():]
                stream.replace(at + 5, b"*" * len(secret), old=secret)
                stream.replace(at + 5, b"x" * len(secret), old=secret)     # masked already: refused
            stream.skip()

    cap = segments_capture(tmp_path, client=[b"USER bob\r\n", b"PASS hunter2\r\n"], server=[b"331 ok\r\n"])
    out = tmp_path / "out.pcap"
    result = run_module(Mask, cap, write=str(out))
    (edit,) = result.accepted("mask")
    assert (edit["field"], bytes.fromhex(edit["old"]), bytes.fromhex(edit["new"])) == \
        ("payload[0]@15", b"hunter2", b"*******")
    assert [e["reason"] for e in result.rejected("mask")] == ["the stream holds b'*******' at 15, not b'hunter2'"]
    assert b"PASS *******\r\n" in out.read_bytes() and b"hunter2" not in out.read_bytes()


class Odd(Module):
    """Emits what JSON cannot carry, as told.

    Synopsis: odd
    """
    name = "odd"
    options = {"bad": Option(str, "", "what to emit")}

    def on_close(self, flow, reason):
        bad = self.config["bad"]
        if bad == "kind":
            self.emit(123, v=1)
        elif bad == "empty":
            self.emit("", v=1)
        else:
            value = {"object": object(), "nested": [1, {"a": object()}], "key": {(1, 2): 3},
                     "path": __import__("pathlib").Path("/x")}[bad]
            self.emit("odd", fine=1, v=value)


ODD = [("object", "module odd: event 'odd': field 'v' holds a value of type object, which JSON cannot carry "
                  "(bytes, sets and numpy values are converted, nothing else): convert it first, e.g. str(value)"),
       ("nested", "module odd: event 'odd': field 'v' holds a value of type object"),
       ("path", "module odd: event 'odd': field 'v' holds a value of type pathlib.PosixPath"),
       ("key", "module odd: event 'odd': field 'v' holds a dict JSON cannot carry: keys must be"),
       ("kind", "module odd: emit(123, ...): an event's kind is text, e.g. emit(\"request\", ...), not int"),
       ("empty", "module odd: emit('', ...): an event's kind is text, e.g. emit(\"request\", ...), not empty text")]


@pytest.mark.parametrize("bad,needle", ODD)
def test_an_event_value_json_cannot_carry_is_an_error_naming_the_field(tmp_path, bad, needle):
    """An object emit has no conversion for was written as its repr (a memory address, another at
    every run), and a kind that is no text as whatever JSON made of it."""
    cap = segments_capture(tmp_path, client=[b"hello"], server=[b"hi"])
    with pytest.raises(ModuleError, match=re.escape(needle)):
        run_module(Odd, cap, bad=bad)
    result = run_module(Odd, cap, strict=False, bad=bad)
    assert result.events == [] and result.counters("odd")["errors"] == 1 and result.summary["events"] == 0


@pytest.mark.parametrize("inline", [["--inline"], []])
def test_an_event_json_cannot_carry_is_an_error_without_event_output_too(tmp_path, inline):
    """Without --events no line was made, so a NaN (or an object) went through: the run's
    outcome depended on whether its events were written."""
    from conftest import run_cli
    mod = tmp_path / "odd.py"
    mod.write_text(f"from flowsift.modules import Module, Option\n\n{inspect.getsource(Odd)}")
    cap = segments_capture(tmp_path, client=[b"hello"], server=[b"hi"])
    for bad, needle in ODD[:1] + ODD[-2:-1]:
        res = run_cli("chain", f"{mod}(bad={bad})", cap, "--strict", "--store", tmp_path / f"s{bad}", *inline)
        assert res.returncode != 0 and needle in res.stderr, res.stderr
    res = run_cli("chain", f"{mod}(bad=object)", cap, "--json", "--store", tmp_path / "s", *inline)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["modules"]["odd"]["errors"] == 1 and summary["events"] == 0


def test_the_docs_test_example_runs_as_shown(tmp_path, monkeypatch, capfd):
    """docs/modules.md showed a test of a mask.py that was not shipped; and run_module without
    write= said on stderr to add -w OUT.pcap, advice for a command line."""
    from conftest import ROOT
    docs = (ROOT / "docs" / "modules.md").read_text()
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", docs, re.S) if "def test_mask" in b]
    monkeypatch.chdir(ROOT)
    scope = {}
    exec(compile(code, "docs/modules.md", "exec"), scope)
    scope["test_mask"](tmp_path)
    cap = segments_capture(tmp_path, client=[b"PASS x\r\n"])
    assert run_module("examples/mask.py", cap).counters("mask") == {"masked": 1, "errors": 0}
    assert capfd.readouterr().err == ""
