"""Names for the reasons a frame is not decoded, and for link types and protocols.

The numbers mirror the ST_* enum in _batch.pxd.
"""

REASONS = {
    1: "bad_interface_id",
    2: "bad_record",
    3: "unsupported_link_type",
    4: "truncated_link_header",
    5: "non_ip",
    6: "truncated_ip_header",
    7: "bad_ip_version",
    8: "bad_ip_header_length",
    9: "bad_ip_total_length",
    10: "truncated_ipv6_extension",
    11: "truncated_tcp_header",
    12: "bad_tcp_data_offset",
    13: "truncated_udp_header",
    14: "bad_udp_length",
    15: "bad_checksum",
}

REASON_HELP = {
    "bad_interface_id": "pcapng packet names an interface its section never described",
    "bad_record": "packet block intact, but its lengths do not fit inside it",
    "unsupported_link_type": "link type flowsift does not decode",
    "truncated_link_header": "frame ends inside its link-layer header",
    "non_ip": "link-layer protocol other than IPv4/IPv6 (ARP, LLDP, ...)",
    "truncated_ip_header": "frame ends inside the IP header (snaplen or short frame)",
    "bad_ip_version": "IP version field is neither 4 nor 6",
    "bad_ip_header_length": "IPv4 header length below 20 bytes",
    "bad_ip_total_length": "IP length field below the header size",
    "truncated_ipv6_extension": "IPv6 extension header chain runs past the packet",
    "truncated_tcp_header": "TCP header cut short (snaplen or IP length)",
    "bad_tcp_data_offset": "TCP data offset below 20 bytes or beyond the segment",
    "truncated_udp_header": "UDP header cut short",
    "bad_udp_length": "UDP length field below 8 or beyond the IP payload",
    "bad_checksum": "IPv4 header, TCP or UDP checksum wrong (--checksums verify only)",
}

# what verifying a packet's checksums found (--checksums verify), by the CK_* codes of
# _decode.pxd: wrong (the packet is not decoded: bad_checksum), not verifiable (decoded all
# the same), or a UDP checksum of 0 over IPv4 (none computed: valid)
CHECKSUM_BAD = {1: "ipv4", 2: "tcp", 3: "udp"}
CHECKSUM_UNVERIFIED = {4: "cut_short", 5: "ip_length_from_frame", 6: "source_routed"}
CHECKSUM_UDP_NONE = 7


def checksum_summary(*counters):
    """The `checksums` object of a summary from {CK_* code: packets} dicts (a Decoder's frames,
    a Defragmenter's rebuilt datagrams: `.checksums()`), added up."""
    n = {}
    for c in counters:
        for k, v in c.items():
            n[k] = n.get(k, 0) + v
    return {"mode": "verify", "bad": {name: n.get(k, 0) for k, name in CHECKSUM_BAD.items()},
            "unverified": {name: n.get(k, 0) for k, name in CHECKSUM_UNVERIFIED.items()},
            "udp_without_checksum": n.get(CHECKSUM_UDP_NONE, 0)}


LINKTYPES = {
    0: "NULL",
    1: "EN10MB",
    12: "RAW",
    101: "RAW",
    108: "LOOP",
    113: "LINUX_SLL",
    228: "IPV4",
    229: "IPV6",
    276: "LINUX_SLL2",
}

# link types decode_packet understands
SUPPORTED_LINKTYPES = frozenset(LINKTYPES)

# names of common link types it does not (tcpdump.org's LINKTYPE_ list), to say which one a
# capture has
OTHER_LINKTYPES = {
    3: "AX25", 6: "IEEE802_5", 8: "SLIP", 9: "PPP", 10: "FDDI", 50: "PPP_HDLC", 51: "PPP_ETHER", 104: "C_HDLC",
    105: "IEEE802_11", 107: "FRELAY", 117: "PFLOG", 119: "IEEE802_11_PRISM", 127: "IEEE802_11_RADIOTAP",
    **{147 + k: f"USER{k}" for k in range(16)},
    163: "IEEE802_11_AVS", 189: "USB_LINUX", 192: "PPI", 195: "IEEE802_15_4_WITHFCS", 197: "ERF",
    220: "USB_LINUX_MMAPPED", 227: "CAN_SOCKETCAN", 239: "NFLOG", 249: "USBPCAP", 251: "BLUETOOTH_LE_LL",
    253: "NETLINK", 254: "BLUETOOTH_LINUX_MONITOR",
}

IP_PROTOCOLS = {
    1: "icmp", 2: "igmp", 4: "ipip", 6: "tcp", 17: "udp", 41: "ipv6-in-ip", 43: "ipv6-route", 44: "ipv6-frag",
    47: "gre", 50: "esp", 51: "ah", 58: "icmpv6", 59: "ipv6-nonxt", 60: "ipv6-opts", 89: "ospf", 103: "pim",
    112: "vrrp", 132: "sctp",
}

ETHERTYPES = {0: "llc", 0x0806: "arp", 0x8035: "rarp", 0x88CC: "lldp", 0x8847: "mpls", 0x8848: "mpls",
              0x8863: "pppoe-discovery", 0x8864: "pppoe", 0x888E: "eapol", 0x88F7: "ptp", 0x8906: "fcoe",
              0x0842: "wake-on-lan", 0x9000: "loopback", 0x880B: "ppp"}


def linktype_name(linktype):
    return LINKTYPES.get(linktype, f"linktype {linktype}")


def _known_name(linktype):
    # its LINKTYPE_ name, decoded or not (None when not a common one)
    return LINKTYPES.get(linktype) or OTHER_LINKTYPES.get(linktype)


def linktype_label(linktype):
    """`link type 147 (USER0)`, as errors and summaries name one."""
    name = _known_name(linktype)
    return f"link type {linktype}" + (f" ({name})" if name else "")


def unsupported_linktypes(decoder):
    """[{linktype, name (None when unknown), packets}] of the frames `decoder` could not decode
    for their link type."""
    return [{"linktype": lt, "name": _known_name(lt), "packets": n}
            for lt, n in sorted(decoder.counters()["unsupported_linktypes"].items())]


def check_decodable(path, decoder):
    """Raise FlowsiftError when every frame read was of a link type flowsift does not decode:
    a run over such a capture has nothing to say but that."""
    from flowsift.errors import FlowsiftError
    c = decoder.counters()
    lts = c["unsupported_linktypes"]
    if c["packets"] and sum(lts.values()) == c["packets"]:
        which = ", ".join(linktype_label(lt) for lt in sorted(lts))
        raise FlowsiftError(f"{path}: nothing decoded: {which} not supported "
                            "(flowsift decodes Ethernet, raw IP, Linux SLL and SLL2, BSD NULL and LOOP)")


def proto_name(proto):
    return IP_PROTOCOLS.get(proto, f"ip-proto-{proto}")


def ethertype_name(ethertype):
    return ETHERTYPES.get(ethertype, f"ethertype-0x{ethertype:04x}")
