"""What the gateway accepts of writing modules' edits, and how it says so."""
import pytest

from flowsift.modules import Module, Option
from flowsift.testing import run_module, segments_capture

REQUEST = [b"GET / HTTP/1.1\r\n", b"Host: example.com\r\n", b"Accept: */*\r\n\r\n"]


class GoesBack(Module):
    """Reads the client's bytes, then goes back to the start and masks 4 bytes.

    Synopsis: goesback(mode=seek)
    """
    name = "goesback"
    reads = {"stream", "gaps"}
    writes = {"payload"}
    options = {"mode": Option(str, "seek", "seek or resume")}

    def on_data(self, flow, stream):
        stream.skip()
        if stream.direction == 0:
            if stream.tell() > 0 and not flow.state.get("done"):
                flow.state["done"] = True
                (stream.seek if self.config["mode"] == "seek" else stream.resume)(0)
                r = stream.replace(0, b"XXXX")
                self.emit("late", accepted=r.accepted, reason=r.reason)
                stream.skip()


class FirstBytes(Module):
    """Read-only: the first bytes of the client's stream as it reads them.

    Synopsis: firstbytes
    """
    name = "firstbytes"
    reads = {"stream"}

    def on_data(self, flow, stream):
        if stream.direction == 0 and stream.tell() == 0 and stream.available >= 4:
            self.emit("first", b=stream.peek_bytes(4))
        stream.skip()


@pytest.mark.parametrize("batch", ["1", None])
@pytest.mark.parametrize("inline", [False, True])
@pytest.mark.parametrize("mode", ["seek", "resume"])
def test_going_back_does_not_make_bytes_read_past_editable(tmp_path, monkeypatch, batch, inline, mode):
    if batch:
        monkeypatch.setenv("FLOWSIFT_BATCH", batch)
    cap = segments_capture(tmp_path, client=REQUEST, server=[b"HTTP/1.1 200 OK\r\n", b"\r\n", b""])
    from flowsift.testing import _register
    chain = f"{_register(GoesBack, {'mode': mode})},{_register(FirstBytes)}"
    res = run_module(chain, cap, inline=inline)
    late = res.of_kind("late")
    assert late
    assert all(not e["accepted"] and "behind the module's position (it read to" in e["reason"] for e in late)
    assert [e["b"] for e in res.of_kind("first")] == ["GET "]
    assert res.summary["edits"]["rejected"] == {"goesback: behind the module's position": len(late)}


class HostSwap(Module):
    """Replaces the Host header's value of requests, saying what it replaces.

    Synopsis: hostswap(host=example.org)
    """
    name = "hostswap"
    reads = {"stream", "gaps"}
    writes = {"payload"}
    options = {"host": Option(str, "example.org", "the new host"), "claim": Option(str, "", "old bytes claimed")}

    def on_data(self, flow, stream):
        if stream.direction == 0:
            at = stream.find(b"Host: ")
            end = stream.find(b"\r\n", at) if at >= 0 else -1
            if end < 0:
                if stream.closed:
                    stream.skip()
                return
            old = stream.peek_bytes(end - stream.tell())[at + 6 - stream.tell():]
            r = stream.replace(at + 6, self.config["host"].encode(), old=self.config["claim"].encode() or old)
            self.emit("swap", accepted=r.accepted, reason=r.reason)
        stream.skip()


@pytest.mark.parametrize("host,claim,accepted,reason", [
    ("example.org", "", True, None),                                   # same length: merged
    ("example.co", "", False, "replacing 11 bytes with 10: length-changing edits are not supported yet"),
    ("example.com.evil", "", False, "replacing 11 bytes with 16: length-changing edits are not supported yet"),
    ("example.org", "EXAMPLE.COM", False, "the stream holds b'example.com' at 22, not b'EXAMPLE.COM'")])
def test_a_replacement_says_what_it_replaces(tmp_path, host, claim, accepted, reason):
    cap = segments_capture(tmp_path, client=[b"".join(REQUEST)], server=[b"HTTP/1.1 200 OK\r\n\r\n"])
    out = tmp_path / "out.pcap"
    res = run_module(HostSwap, cap, host=host, claim=claim, write=str(out))
    (swap,) = res.of_kind("swap")
    assert swap["accepted"] is accepted
    assert reason is None and swap["reason"] is None or swap["reason"].startswith(reason)
    client = b"".join(REQUEST)
    if accepted:
        client = client.replace(b"example.com", host.encode())
    assert client in out.read_bytes()                  # nothing else of the request overwritten
    if not accepted:
        kind = "length change" if not claim else "old bytes differ"
        assert res.summary["edits"]["rejected"] == {f"hostswap: {kind}": 1}


class Hdr(Module):
    """Sets header fields of the client's packets.

    Synopsis: hdr(dst=, ttl=0, dport=0)
    """
    name = "hdr"
    reads = {"records"}
    writes = {"ip.dst", "ip.ttl", "tcp.dport"}
    options = {"dst": Option(str, "", ""), "ttl": Option(int, 0, ""), "dport": Option(int, 0, "")}

    def on_packet(self, flow, record):
        if record.dir == 0:
            c = self.config
            kw = {k: v for k, v in (("ip_dst", c["dst"]), ("ip_ttl", c["ttl"]), ("tcp_dport", c["dport"])) if v}
            flow.edit(record, **kw)


class Hdr2(Hdr):
    """Sets header fields of the client's packets too.

    Synopsis: hdr2(dst=, ttl=0, dport=0)
    """
    name = "hdr2"


class SeeHdr(Module):
    """Read-only: the ports and destination of the client's packets, as it is handed them.

    Synopsis: seehdr
    """
    name = "seehdr"
    reads = {"records"}

    def on_packet(self, flow, record):
        if record.dir == 0:
            self.emit("see", dport=record.dport, dst=".".join(map(str, record.dst[:4])),
                      column=int(flow.records()["dport"][record.index]))


@pytest.mark.parametrize("inline", [False, True])
def test_a_later_module_sees_earlier_header_edits_and_an_override_is_reported(tmp_path, inline):
    from flowsift.testing import _register
    cap = segments_capture(tmp_path, client=[b"abc", b"def"], server=[b"ok"])
    chain = (f"{_register(Hdr, {'dst': '10.8.8.8', 'ttl': 7, 'dport': 81})},"
             f"{_register(Hdr2, {'dst': '10.7.7.7', 'ttl': 9})},{_register(SeeHdr)}")
    out = tmp_path / "out.pcap"
    res = run_module(chain, cap, inline=inline, write=str(out))
    seen = res.of_kind("see")
    assert seen and all(e == {**e, "dport": 81, "column": 81, "dst": "10.7.7.7"} for e in seen)
    n = len(seen)
    assert res.summary["edits"]["overridden"] == {"hdr2 over hdr: ip.dst": n, "hdr2 over hdr: ip.ttl": n}
    over = [e for e in res.edits if e.get("over")]
    assert {(e["field"], e["old"], e["new"], e["over"]) for e in over} == {("ip.dst", "10.8.8.8", "10.7.7.7", "hdr"),
                                                                          ("ip.ttl", 7, 9, "hdr")}


@pytest.mark.parametrize("inline", [False, True])
def test_a_module_after_nat_sees_the_new_port(tmp_path, inline):
    from flowsift.testing import _register
    cap = segments_capture(tmp_path, client=[b"abc"], server=[b"ok"])
    res = run_module(f"nat(to=10.0.0.2:8080),{_register(SeeHdr)}", cap, inline=inline)
    assert {(e["dport"], e["dst"]) for e in res.of_kind("see")} == {(8080, "10.0.0.2")}
    assert "overridden" not in res.summary["edits"]


class Misuse(Module):
    """Asks for edits with arguments of the wrong kind.

    Synopsis: misuse
    """
    name = "misuse"
    reads = {"stream", "records", "gaps"}
    writes = {"payload", "ip.ttl", "drop"}

    def on_packet(self, flow, record):
        if record.index == 0:
            import numpy as np
            for label, r in (("None", None), ("0", 0), ("row", flow.records()[0]), ("tuple", tuple(record))):
                for call in (lambda r: flow.edit(r, ip_ttl=42), flow.drop):
                    try:
                        call(r)
                    except TypeError as e:
                        self.emit("record", label=label, error=str(e))
            assert flow.edit(record._replace(index=np.int64(0)), ip_ttl=42)

    def on_data(self, flow, stream):
        import numpy as np
        if stream.direction == 0 and not flow.state.get("done"):
            flow.state["done"] = True
            for off, data in ((True, b"AB"), ("0", b"AB"), (None, b"AB"), (0.0, b"AB"), (0, "AB"), (0, [65, 66]),
                              (0, None)):
                try:
                    stream.replace(off, data)
                except TypeError as e:
                    self.emit("replace", error=str(e))
            self.emit("numpy", accepted=stream.replace(np.int64(0), bytearray(b"AB")).accepted)
            self.emit("far", reason=stream.replace(10**8, b"x").reason)
            self.emit("far", reason=stream.replace(10**9 + 7, b"x").reason)
        stream.skip()


def test_arguments_of_the_wrong_kind_are_a_type_error_naming_them(tmp_path):
    cap = segments_capture(tmp_path, client=[b"GET / HTTP/1.1\r\n\r\n"], server=[b"ok"])
    res = run_module(Misuse, cap)
    errors = [e["error"] for e in res.of_kind("replace")]
    assert errors == ["stream.replace: offset is a bool (True), not an integer",
                      "stream.replace: offset is a str ('0'), not an integer",
                      "stream.replace: offset is a NoneType (None), not an integer",
                      "stream.replace: offset is a float (0.0), not an integer",
                      "stream.replace: new_bytes is a str, not bytes (bytes, bytearray or memoryview)",
                      "stream.replace: new_bytes is a list, not bytes (bytes, bytearray or memoryview)",
                      "stream.replace: new_bytes is a NoneType, not bytes (bytes, bytearray or memoryview)"]
    records = res.of_kind("record")
    assert len(records) == 8
    assert {e["error"].split(":")[0] for e in records} == {"flow.edit", "flow.drop"}
    assert all("record is" in e["error"] and "not a record" in e["error"] for e in records)
    assert [e["accepted"] for e in res.of_kind("numpy")] == [True]
    # rejections are counted by kind: the numbers are in the reasons, not the keys
    assert len({e["reason"] for e in res.of_kind("far")}) == 2
    assert res.summary["edits"]["rejected"] == {"misuse: outside the stream": 2}


LATE = '''
from flowsift.modules import Module, Option

class Late(Module):
    """Keeps the client's records and stream pointer; edits them when the connection ends.

    Synopsis: late(skip=false, data=false)
    """
    name = "late"
    reads = {"records", "stream"}
    writes = {"ip.dst", "payload"}
    options = {"skip": Option(bool, False, "skip the connection once it has the client's pointer"),
               "data": Option(bool, False, "edit the records kept so far in on_data instead")}

    def on_packet(self, flow, record):
        if record.dir == 0:
            flow.cache.setdefault("records", []).append(record)

    def on_data(self, flow, stream):
        if stream.direction == 1:
            stream.skip()
            return
        flow.cache["stream"] = stream        # (it reads nothing of it: what follows is its to edit)
        if self.config["data"]:
            self.on_close(flow, None)
            flow.cache["records"] = []
        if self.config["skip"]:
            flow.skip()

    def on_close(self, flow, reason):
        for r in flow.cache.get("records", []):
            e = flow.edit(r, ip_dst="10.9.9.9")
            self.emit("hdr", index=r.index, accepted=e.accepted, reason=e.reason)
        sp = flow.cache.get("stream")
        if sp is not None and reason is not None:
            e = sp.replace(0, b"ZZZZ")
            self.emit("pay", accepted=e.accepted, reason=e.reason)
'''

SEE = '''
from flowsift.modules import Module

class See(Module):
    """Read-only: counts the client packets sent to 10.9.9.9 or not, and ZZZZ in the client's bytes.

    Synopsis: see
    """
    name = "see"
    reads = {"records", "stream"}

    def on_packet(self, flow, record):
        if record.dir == 0:
            self.count("new_dst" if record.dst[:4] == bytes([10, 9, 9, 9]) else "old_dst")

    def on_data(self, flow, stream):
        if stream.direction == 0:
            self.count("zzzz", stream.read_bytes().count(b"ZZZZ"))
        else:
            stream.skip()
'''


def late_chain(tmp_path, skip=True, data=False):
    late, see = tmp_path / "late.py", tmp_path / "see.py"
    late.write_text(LATE)
    see.write_text(SEE)
    return f"{late}(skip={str(skip).lower()},data={str(data).lower()})", str(see)


def run_chain_cli(tmp_path, spec, src, mode, write=None):
    """`flowsift chain` in one of its modes: (summary, events)."""
    import json
    from conftest import run_cli
    ev = tmp_path / "ev.jsonl"
    args = {"inline": ["--inline"], "workers": [], "shards": ["--shards", "2"],
            "shards_inline": ["--shards", "2", "--inline"]}[mode]
    res = run_cli("chain", spec, src, "--json", "--events", ev, *args, *(["-w", write] if write else []))
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    return json.loads(res.stdout), [json.loads(line) for line in ev.read_text().splitlines()]


@pytest.mark.parametrize("mode", ["inline", "workers", "shards"])
def test_an_edit_of_what_a_later_stage_has_read_is_refused(tmp_path, monkeypatch, corpus, mode):
    """A writing module that edits in on_close the records and bytes it kept: what the stages
    after it were handed already (the records of earlier batches; the bytes of a connection it
    skipped) is refused as read by a later stage, the rest accepted and seen by them. It was all
    accepted, and the later stage never saw most of it. -w writes what was accepted."""
    monkeypatch.setenv("FLOWSIFT_BATCH", "16")
    src = corpus / "http__tcpflow__jpegs.cap"
    for skip in (False, True):
        late, see = late_chain(tmp_path, skip)
        out = tmp_path / "out.pcap" if mode != "shards" else None
        summary, events = run_chain_cli(tmp_path, f"{late},{see}", src, mode, out)
        hdr = [e for e in events if e["kind"] == "hdr"]
        pay = [e for e in events if e["kind"] == "pay"]
        refused = [e for e in hdr + pay if not e["accepted"]]
        accepted_hdr = sum(e["accepted"] for e in hdr)
        accepted_pay = sum(e["accepted"] for e in pay)
        assert accepted_hdr and accepted_pay and refused
        # skipped, it has read all: its bytes were the later stage's at once; else they wait for it
        assert any(e in refused for e in pay) is skip
        assert all("already handed to the stages after late" in e["reason"] for e in refused)
        assert all(e["reason"].startswith(f"record {e['index']}: ") for e in refused if e["kind"] == "hdr")
        assert all(e["reason"].startswith("bytes at 0: ") for e in refused if e["kind"] == "pay")
        assert summary["edits"]["rejected"] == {"late: already read by a later stage": len(refused)}
        assert summary["modules"]["late"]["edits_rejected"] == len(refused)
        # what the later stage read: the accepted edits, merged, and none of the refused ones
        seen = summary["modules"]["see"]
        assert seen["new_dst"] == accepted_hdr and seen["zzzz"] == accepted_pay
        if out is not None:
            from test_write_back import frames
            after = frames(out)
            assert sum(f[30:34] == bytes([10, 9, 9, 9]) for f in after) == accepted_hdr
            assert sum(f.count(b"ZZZZ") for f in after) == accepted_pay
    # the last stage's edits in on_close: no later stage, nothing refused
    summary, events = run_chain_cli(tmp_path, f"{see},{late}", src, mode)
    assert summary["edits"]["rejected"] == {}
    edits = [e for e in events if e["kind"] in ("hdr", "pay")]
    assert edits and all(e["accepted"] for e in edits)
    assert summary["edits"]["accepted"]["late"] == len(edits)


def test_inline_and_workers_accept_and_refuse_the_same_edits(tmp_path, monkeypatch, corpus):
    """--inline reads a connection stage by stage, as stages run apart do: the module after a
    writing one is handed a batch's records once the writing module is done with them all (its
    on_data included), and a connection's last batch after its on_close. The same edits are
    accepted, and the later module reads the same values. Inline, it read each record before
    the writing module's on_data and on_close edited it."""
    monkeypatch.setenv("FLOWSIFT_BATCH", "16")
    src = corpus / "http__tcpflow__jpegs.cap"
    for skip, data in ((False, False), (True, False), (False, True)):
        late, see = late_chain(tmp_path, skip, data)
        got = []
        for inline in (True, False):
            res = run_module(f"{late},{see}", src, inline=inline)
            edits = sorted((e["conn"], e["kind"], e.get("index"), e["accepted"], e["reason"])
                           for e in res.events if e["kind"] in ("hdr", "pay"))
            seen = {k: v for k, v in res.counters("see").items() if k != "restarts"}
            got.append((edits, seen, res.summary["edits"]["rejected"]))
            assert edits and seen.get("new_dst", 0) == sum(e[3] for e in edits if e[1] == "hdr")
        assert got[0] == got[1]


class Afterwards(Module):
    """Edits the record and bytes it kept of the connection that ended before, in the next one's on_close.

    Synopsis: afterwards
    """
    name = "afterwards"
    reads = {"records", "stream"}
    writes = {"ip.dst", "payload"}
    kept = None

    def on_packet(self, flow, record):
        flow.cache.setdefault("record", record)

    def on_data(self, flow, stream):
        flow.cache.setdefault("stream", stream)
        stream.skip()

    def on_close(self, flow, reason):
        if self.kept is not None:
            before, record, stream = self.kept
            for kind, e in (("hdr", before.edit(record, ip_dst="10.9.9.9")), ("pay", stream.replace(stream.tell(), b"Z"))):
                self.emit(kind, accepted=e.accepted, reason=e.reason)
        self.kept = (flow, flow.cache["record"], flow.cache["stream"]) if "stream" in flow.cache else None


@pytest.mark.parametrize("inline", [True, False])
def test_an_edit_of_a_connection_the_module_is_done_with_is_refused(tmp_path, corpus, inline):
    """Its on_close returned: the record file may be closed, given back or gone. An edit of
    the connection through what the module kept failed in the store (a KeyError or TypeError
    in the module's hook) or, with the file kept (-w), was accepted after the connection was
    over."""
    out = tmp_path / "out.pcap"
    res = run_module(Afterwards, corpus / "http__tcpflow__jpegs.cap", inline=inline, write=str(out))
    edits = res.of_kind("hdr") + res.of_kind("pay")
    assert edits and not any(e["accepted"] for e in edits)
    assert all(e["reason"].startswith("connection ") and e["reason"].endswith(" ended: afterwards was done with it "
                                                                                "(its on_close returned)")
               for e in edits)
    assert res.summary["edits"]["rejected"] == {"afterwards: connection ended": len(edits)}
    assert bytes([10, 9, 9, 9]) not in out.read_bytes() and res.summary["egress"]["edited"] == 0


KEPT_FLOW = '''
from flowsift.modules import Module


class Grabby(Module):
    """Read-only: keeps its first connection's first record, and edits it through that flow
    from another connection's hook.

    Synopsis: grabby
    """
    name = "grabby"
    reads = {"records"}
    kept = None

    def on_packet(self, flow, record):
        if self.kept is None:
            self.kept = (flow, record)
        elif self.kept[0] is not flow and len(self.kept) == 2:
            kept_flow, kept_record = self.kept
            e = kept_flow.edit(kept_record, ip_dst="10.9.9.9")
            self.emit("tried", edited=kept_flow.conn, accepted=e.accepted, reason=e.reason)
            self.kept += (True,)


class Mark(Module):
    """Writes ip.dst, and edits nothing: a writing module that runs on every record.

    Synopsis: mark
    """
    name = "mark"
    reads = {"records"}
    writes = {"ip.dst"}

    def on_packet(self, flow, record):
        pass


class Keeper(Grabby):
    """Writes: drops and edits its first connection's first record from another connection's hook.

    Synopsis: keeper
    """
    name = "keeper"
    writes = {"ip.dst", "drop"}

    def on_packet(self, flow, record):
        if self.kept is not None and self.kept[0] is not flow and len(self.kept) == 2:
            kept_flow, kept_record = self.kept
            e = kept_flow.drop(kept_record)
            self.emit("dropped", edited=kept_flow.conn, accepted=e.accepted, reason=e.reason)
        super().on_packet(flow, record)


class Seen(Module):
    """Read-only: reads every record (it runs on a connection after keeper).

    Synopsis: seen
    """
    name = "seen"
    reads = {"records"}

    def on_packet(self, flow, record):
        self.count("records")
'''


@pytest.mark.parametrize("mode", ["inline", "workers", "shards", "shards_inline"])
def test_an_edit_through_a_flow_kept_from_another_connection_is_the_calling_modules(tmp_path, mode):
    """What a module does through a flow it kept, from a hook for another connection, is its own
    doing, checked as its edits of that connection are, in every mode. Inline, it was charged to
    the module whose hook had run last on that flow: a read-only module's edit went through as
    the writing module's after it (accepted and sent), and a writing module's drop was refused
    as a read-only module's."""
    from pcapgen import interleaved_capture
    mods = tmp_path / "kept.py"
    mods.write_text(KEPT_FLOW)
    cap = interleaved_capture(tmp_path / "six.pcap", 6, [b"conn %d says hello|"])
    out = tmp_path / "out.pcap" if not mode.startswith("shards") else None
    summary, events = run_chain_cli(tmp_path, f"{mods}:Grabby,{mods}:Mark", cap, mode, out)
    tried = [e for e in events if e["kind"] == "tried"]
    assert tried and all(e["edited"] != e["conn"] for e in tried)
    assert all(not e["accepted"] and e["reason"] == "read-only module: ip.dst is not declared in writes"
               for e in tried)
    assert summary["edits"]["accepted"] == {}
    assert summary["edits"]["rejected"] == {"grabby: read-only module": len(tried)}
    assert summary["modules"]["grabby"]["edits_rejected"] == len(tried)
    assert "edits_rejected" not in summary["modules"]["mark"]
    if out is not None:
        from test_write_back import frames
        assert not any(f[30:34] == bytes([10, 9, 9, 9]) for f in frames(out))
    summary, events = run_chain_cli(tmp_path, f"{mods}:Keeper,{mods}:Seen", cap, mode, out)
    dropped, tried = [e for e in events if e["kind"] == "dropped"], [e for e in events if e["kind"] == "tried"]
    assert dropped and len(dropped) == len(tried) and all(e["accepted"] for e in dropped)
    # its own records of that connection, already handed to the stage after it
    assert all(not e["accepted"] and "already handed to the stages after keeper" in e["reason"] for e in tried)
    assert summary["edits"]["dropped"] == len(dropped)
    assert summary["edits"]["rejected"] == {"keeper: already read by a later stage": len(tried)}
    assert "edits_rejected" not in summary["modules"]["seen"]
    if out is not None:
        assert summary["egress"]["dropped"] == len(dropped) == 1


KEPT_STATE = '''
from flowsift.modules import Module


class Recall(Module):
    """Read-only: marks each connection's state as its own, and reads its first connection's
    state through the flow it kept, from other connections' hooks.

    Synopsis: recall
    """
    name = "recall"
    reads = {"records"}
    kept = None

    def on_open(self, flow):
        flow.state["who"] = "recall"
        flow.cache["who"] = "recall"
        if self.kept is None:
            self.kept = flow

    def on_packet(self, flow, record):
        if self.kept is not None and self.kept is not flow:
            self.emit("recalled", of=self.kept.conn, state=self.kept.state.get("who"),
                      cache=self.kept.cache.get("who"))


class Other(Module):
    """Read-only: marks each connection's state as its own.

    Synopsis: other
    """
    name = "other"
    reads = {"records"}

    def on_open(self, flow):
        flow.state["who"] = "other"
        flow.cache["who"] = "other"

    def on_packet(self, flow, record):
        flow.state["seen"] = flow.state.get("seen", 0) + 1
'''


@pytest.mark.parametrize("mode", ["inline", "workers", "shards_inline"])
def test_a_flow_kept_from_another_connection_gives_the_calling_modules_state(tmp_path, mode):
    """flow.state and flow.cache read through a flow a module kept, from its hooks for another
    connection, are that module's own, in every mode. Inline, where the modules share one Flow,
    they were the state of the module whose hook had run last on that flow."""
    from pcapgen import interleaved_capture
    mods = tmp_path / "kept.py"
    mods.write_text(KEPT_STATE)
    cap = interleaved_capture(tmp_path / "six.pcap", 6, [b"conn %d says hello|"])
    summary, events = run_chain_cli(tmp_path, f"{mods}:Recall,{mods}:Other", cap, mode)
    recalled = [e for e in events if e["kind"] == "recalled"]
    assert recalled and all(e["of"] != e["conn"] for e in recalled)
    assert {(e["state"], e["cache"]) for e in recalled} == {("recall", "recall")}


OUTSIDE_HOOK = '''
from flowsift.modules import Module


class Late(Module):
    """Writes ip.dst: keeps a record, and asks to edit it when the chain asks for its summary,
    outside any hook.

    Synopsis: late
    """
    name = "late"
    reads = {"records"}
    writes = {"ip.dst"}
    kept = None

    def on_packet(self, flow, record):
        if self.kept is None:
            self.kept = (flow, record)

    def summary(self):
        flow, record = self.kept
        e = flow.edit(record, ip_dst="10.9.9.9")
        return [{"accepted": e.accepted, "reason": e.reason}]
'''


@pytest.mark.parametrize("mode", ["inline", "workers"])
def test_an_edit_asked_outside_a_hook_is_refused_and_says_so(tmp_path, mode):
    """A writing module's edit asked for outside its hooks (here from summary(), once the
    packets are gone) is refused with the reason, and nothing is written."""
    from pcapgen import interleaved_capture
    mods = tmp_path / "late.py"
    mods.write_text(OUTSIDE_HOOK)
    cap = interleaved_capture(tmp_path / "two.pcap", 2, [b"conn %d says hello|"])
    out = tmp_path / "out.pcap"
    summary, events = run_chain_cli(tmp_path, f"{mods}:Late", cap, mode, out)
    assert summary["tables"]["late"] == [{"accepted": False,
                                          "reason": "flow.edit outside a hook: a module edits from its hooks"}]
    assert summary["edits"]["accepted"] == {} and summary["egress"]["edited"] == 0
    from test_write_back import frames
    assert not any(f[30:34] == bytes([10, 9, 9, 9]) for f in frames(out))
