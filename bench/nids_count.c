/* libnids reassembly with a no-op consumer: both directions of every stream collected, bytes
 * counted and dropped. Built and run by bench/reassembly.py; prints one line of JSON.
 *
 * libnids only follows IPv4 connections whose handshake it saw, and delivers a direction only
 * up to its first hole (later data waits in the queue for ever), so its counts are a lower bound. */
#include <nids.h>
#include <stdio.h>
#include <stdlib.h>

static unsigned long long streams, bytes, closed, evicted, warnings;

static void on_tcp(struct tcp_stream *a, void **unused) {
    (void)unused;
    switch (a->nids_state) {
    case NIDS_JUST_EST:
        a->client.collect++;
        a->server.collect++;
        streams++;
        break;
    case NIDS_DATA:   /* returning without nids_discard() drops what was delivered */
        bytes += (unsigned)a->client.count_new + (unsigned)a->server.count_new;
        break;
    case NIDS_CLOSE:
    case NIDS_RESET:
        closed++;
        break;
    }
}

/* The default logs every warning to syslog, which would be timed too. */
static void on_warning(int type, int err, struct ip *iph, void *data) {
    (void)iph; (void)data;
    if (type == NIDS_WARN_TCP && err == NIDS_WARN_TCP_TOOMUCH) evicted++;   /* table full */
    else warnings++;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) { fprintf(stderr, "usage: nids_count FILE [TCP_STREAMS]\n"); return 2; }
    /* The capture's checksums may be offloaded or rewritten; the other tools do not check them. */
    static struct nids_chksum_ctl all = {0, 0, NIDS_DONT_CHKSUM, 0};
    nids_params.filename = argv[1];
    /* libnids preallocates the table and, once it is 3/4 full, evicts the oldest stream. */
    nids_params.n_tcp_streams = argc == 3 ? atoi(argv[2]) : 1 << 20;
    nids_params.n_hosts = 1 << 16;
    nids_params.scan_num_hosts = 0;
    nids_params.syslog = on_warning;
    if (!nids_init()) { fprintf(stderr, "nids_count: %s\n", nids_errbuf); return 2; }
    nids_register_chksum_ctl(&all, 1);
    nids_register_tcp(on_tcp);
    nids_run();   /* returns at the end of the file, after NIDS_EXITING for open streams */
    printf("{\"streams\": %llu, \"bytes\": %llu, \"closed\": %llu, \"evicted\": %llu, \"warnings\": %llu}\n",
           streams, bytes, closed, evicted, warnings);
    return 0;
}
