/* The floor for reading a capture: libpcap's own read loop, counting packets and bytes.
 * Built and run by bench/ingest.py; prints "packets bytes". */
#include <pcap/pcap.h>
#include <stdio.h>
#include <stdlib.h>

static void count(u_char *user, const struct pcap_pkthdr *h, const u_char *bytes) {
    unsigned long long *c = (unsigned long long *)user;
    c[0]++;
    c[1] += h->caplen;
    c[2] += bytes[h->caplen ? h->caplen - 1 : 0];   /* touch the data, as a decoder would */
}

int main(int argc, char **argv) {
    char err[PCAP_ERRBUF_SIZE];
    unsigned long long c[3] = {0, 0, 0};
    if (argc != 2) { fprintf(stderr, "usage: pcap_loop FILE\n"); return 2; }
    pcap_t *p = pcap_open_offline(argv[1], err);
    if (!p) { fprintf(stderr, "pcap_loop: %s\n", err); return 2; }
    if (pcap_loop(p, -1, count, (u_char *)c) == -1) { fprintf(stderr, "pcap_loop: %s\n", pcap_geterr(p)); return 2; }
    printf("%llu %llu\n", c[0], c[1]);
    pcap_close(p);
    return 0;
}
