import ipaddress

from flowsift.modules.base import Module, ModuleError, Option


def _endpoint(text, what):
    # ip, ip:port, [ipv6] or [ipv6]:port; a bare IPv6 address is an address alone (its last
    # group could not be told from a port)
    bad = ModuleError(f"module nat: {what}={text!r} is not ip, ip:port, [ipv6] or [ipv6]:port")
    port = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or ":" not in host or (rest and not rest.startswith(":")):
            raise bad
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host = text
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise bad from None
    if port is None:
        return addr, None
    # checked here, not by the gateway at each edit: a port it would refuse is a chain that
    # rewrites nothing
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ModuleError(f"module nat: {what}={text!r}: port {port or '(none)'} is not a number from 1 to 65535")
    return addr, int(port)


class Nat(Module):
    """Rewrites a server's address and port: the destination of client-to-server packets and
    the source of the answers (a destination NAT). Edits are verified by the gateway.

    Synopsis: nat(to=IP[:PORT], match=IP[:PORT])
    Reads: packets (records)
    Writes: ip.src, ip.dst, tcp.sport, tcp.dport, udp.sport, udp.dport
    Options: to (str) the new server address, optionally with a port; IPv6 with a port in
             brackets ([2001:db8::2]:8080; a bare IPv6 address is an address alone)
             match (str) only flows to this server (ip or ip:port); default: every flow of
             to's address family (a flow's family cannot change)
    Counters: rewritten, rejected, flows, other_family (flows of the other address family,
             which pass unchanged)
    Example: flowsift chain "nat(to=10.0.0.2:8080,match=93.184.216.34:80)" in.pcap -w out.pcap
    """
    name = "nat"
    writes = frozenset({"ip.src", "ip.dst", "tcp.sport", "tcp.dport", "udp.sport", "udp.dport"})
    options = {"to": Option(str, "", "new server ip[:port]"), "match": Option(str, "", "server ip[:port] to rewrite")}

    def __init__(self, config=None):
        super().__init__(config)
        if not self.config.get("to"):
            raise ModuleError("module nat: option to=IP[:PORT] is required")
        self.to_ip, self.to_port = _endpoint(self.config["to"], "to")
        self.match = _endpoint(self.config["match"], "match") if self.config.get("match") else None
        if self.match is not None and self.match[0].version != self.to_ip.version:
            raise ModuleError(f"module nat: match={self.config['match']!r} is IPv{self.match[0].version} and "
                              f"to={self.config['to']!r} IPv{self.to_ip.version}: a flow's address family "
                              f"cannot change")

    def on_open(self, flow):
        host, _, port = flow.server.rpartition(":")
        addr = ipaddress.ip_address(host.strip("[]"))
        ok = self.match is None or (addr == self.match[0] and (self.match[1] is None or self.match[1] == int(port)))
        flow.state["nat"] = ok and addr.version == self.to_ip.version
        if flow.state["nat"]:
            self.count("flows")
        elif ok:
            self.count("other_family")          # (every flow: those of the other family pass as they are)

    def on_packet(self, flow, record):
        if not flow.state.get("nat"):
            return
        proto = "tcp" if record.proto == 6 else "udp"
        if record.dir == 0:
            fields = {"ip_dst": str(self.to_ip)}
            if self.to_port is not None:
                fields[f"{proto}_dport"] = self.to_port
        else:
            fields = {"ip_src": str(self.to_ip)}
            if self.to_port is not None:
                fields[f"{proto}_sport"] = self.to_port
        result = flow.edit(record, **fields)
        self.count("rewritten" if result else "rejected")
