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
}

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


def proto_name(proto):
    return IP_PROTOCOLS.get(proto, f"ip-proto-{proto}")


def ethertype_name(ethertype):
    return ETHERTYPES.get(ethertype, f"ethertype-0x{ethertype:04x}")
