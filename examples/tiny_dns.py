"""A minimal DNS responder and client for make_demo_capture.sh (A records, UDP and TCP).

Serving:  python3 tiny_dns.py HOST PORT         (answers every A query with 192.0.2.1)
Querying: python3 tiny_dns.py --query HOST PORT NAME...   (each name over UDP, the last over TCP too)
"""
import socket
import struct
import sys
import threading


def question(name, qid):
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack(">HH", 1, 1)


def answer(query):
    qid, = struct.unpack(">H", query[:2])
    end = query.index(b"\0", 12) + 5
    rr = struct.pack(">HHHIH", 0xC00C, 1, 1, 300, 4) + bytes([192, 0, 2, 1])
    return struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0) + query[12:end] + rr


def serve(host, port):
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((host, port))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((host, port))
    tcp.listen()

    def tcp_loop():
        while True:
            c, _ = tcp.accept()
            with c:
                n, = struct.unpack(">H", c.recv(2))
                q = c.recv(n)
                a = answer(q)
                c.sendall(struct.pack(">H", len(a)) + a)

    threading.Thread(target=tcp_loop, daemon=True).start()
    while True:
        q, addr = udp.recvfrom(512)
        udp.sendto(answer(q), addr)


def query(host, port, names):
    for i, name in enumerate(names):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.sendto(question(name, 0x1000 + i), (host, port))
        s.recv(512)
    with socket.create_connection((host, port), timeout=2) as c:
        q = question(names[-1], 0x2000)
        c.sendall(struct.pack(">H", len(q)) + q)
        n, = struct.unpack(">H", c.recv(2))
        c.recv(n)


if __name__ == "__main__":
    if sys.argv[1] == "--query":
        query(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    else:
        serve(sys.argv[1], int(sys.argv[2]))
