#!/usr/bin/env bash
# Records examples/demo.pcap: real HTTP (IPv4 and IPv6, keep-alive), TLS (SNI, ALPN) and DNS
# (UDP and TCP) between processes on the loopback of a private network namespace, so nothing
# leaves the machine and nothing else is captured. Needs root, tcpdump, curl, openssl, python3.
#
#   examples/make_demo_capture.sh [OUT.pcap]
set -euo pipefail
OUT=$(realpath -m "${1:-$(dirname "$0")/demo.pcap}")
HERE=$(cd "$(dirname "$0")" && pwd)
exec unshare --net bash -s "$OUT" "$HERE" <<'EOS'
set -euo pipefail
OUT=$1 HERE=$2
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
ip link set lo up mtu 1500   # Ethernet-sized segments, as on a real link
mkdir -p "$W/www"
printf '<html><body><h1>flowsift demo</h1></body></html>\n' > "$W/www/index.html"
head -c 20000 /dev/zero | tr '\0' 'a' > "$W/www/big.txt"
openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=demo.flowsift.test -days 3650 \
  -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null

tcpdump -i lo -s 0 -U -w "$OUT" 2>/dev/null & TD=$!
sleep 1
python3 -m http.server 8080 --bind :: --directory "$W/www" >/dev/null 2>&1 &
openssl s_server -accept 8443 -cert "$W/cert.pem" -key "$W/key.pem" -alpn http/1.1 -www -quiet >/dev/null 2>&1 &
python3 "$HERE/tiny_dns.py" 127.0.0.1 5353 &
sleep 1

curl -s -o /dev/null -o /dev/null -o /dev/null http://127.0.0.1:8080/ http://127.0.0.1:8080/big.txt http://127.0.0.1:8080/missing
curl -s -o /dev/null -H 'User-Agent: flowsift-demo' 'http://[::1]:8080/index.html'
printf 'GET / HTTP/1.1\r\nHost: demo.flowsift.test\r\nConnection: close\r\n\r\n' |
  openssl s_client -connect 127.0.0.1:8443 -servername demo.flowsift.test -alpn http/1.1 -quiet >/dev/null 2>&1 || true
python3 "$HERE/tiny_dns.py" --query 127.0.0.1 5353 example.org flowsift.test www.demo.flowsift.test
sleep 1
kill -INT $TD; wait $TD 2>/dev/null || true
EOS
