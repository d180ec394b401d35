/* What Cython cannot call directly in DPDK: macros and dynamic mbuf fields. */
#ifndef FLOWSIFT_DPDK_HELPERS_H
#define FLOWSIFT_DPDK_HELPERS_H
#include <time.h>
#include <rte_eal.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mbuf_dyn.h>
#include <rte_errno.h>
#include <rte_lcore.h>

static int fs_ts_offset = -1;
static uint64_t fs_ts_flag = 0;

static inline const uint8_t* fs_mbuf_data(struct rte_mbuf* m) { return rte_pktmbuf_mtod(m, const uint8_t*); }
static inline uint32_t fs_mbuf_data_len(struct rte_mbuf* m) { return m->data_len; }
static inline uint32_t fs_mbuf_pkt_len(struct rte_mbuf* m) { return m->pkt_len; }
static inline uint16_t fs_mbuf_segs(struct rte_mbuf* m) { return m->nb_segs; }

/* the mbuf's Rx timestamp (ns) when the port fills one, else -1 */
static inline int64_t fs_mbuf_ts(struct rte_mbuf* m) {
    if (fs_ts_offset < 0 || !(m->ol_flags & fs_ts_flag)) return -1;
    return (int64_t) *RTE_MBUF_DYNFIELD(m, fs_ts_offset, rte_mbuf_timestamp_t*);
}

static inline int fs_ts_register(void) {
    return rte_mbuf_dyn_rx_timestamp_register(&fs_ts_offset, &fs_ts_flag);
}

static inline int64_t fs_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t) t.tv_sec * 1000000000 + t.tv_nsec;
}

/* copy a (possibly multi-segment) packet's bytes into dst; returns the bytes copied */
static inline uint32_t fs_mbuf_copy(struct rte_mbuf* m, uint8_t* dst, uint32_t cap) {
    const void* p = rte_pktmbuf_read(m, 0, m->pkt_len < cap ? m->pkt_len : cap, dst);
    uint32_t n = m->pkt_len < cap ? m->pkt_len : cap;
    if (p != dst && p != NULL) memcpy(dst, p, n);
    return p == NULL ? 0 : n;
}

static inline int fs_port_configure(uint16_t port, uint64_t rx_offloads, uint64_t tx_offloads) {
    struct rte_eth_conf conf;
    memset(&conf, 0, sizeof(conf));
    conf.rxmode.offloads = rx_offloads;
    conf.txmode.offloads = tx_offloads;
    return rte_eth_dev_configure(port, 1, 1, &conf);
}

static inline uint64_t fs_port_rx_capa(uint16_t port) {
    struct rte_eth_dev_info info;
    if (rte_eth_dev_info_get(port, &info) != 0) return 0;
    return info.rx_offload_capa;
}

static inline const char* fs_port_driver(uint16_t port) {
    static struct rte_eth_dev_info info;
    if (rte_eth_dev_info_get(port, &info) != 0) return "?";
    return info.driver_name;
}

static inline int fs_port_stats(uint16_t port, uint64_t* out) {
    struct rte_eth_stats st;
    int rc = rte_eth_stats_get(port, &st);
    if (rc != 0) return rc;
    out[0] = st.ipackets; out[1] = st.opackets; out[2] = st.imissed; out[3] = st.ierrors;
    out[4] = st.oerrors; out[5] = st.rx_nombuf; out[6] = st.ibytes; out[7] = st.obytes;
    return 0;
}

/* the frame bytes one mbuf of the pool holds */
static inline uint32_t fs_mbuf_room(struct rte_mempool* pool) {
    return rte_pktmbuf_data_room_size(pool) - RTE_PKTMBUF_HEADROOM;
}

/* a frame into fresh mbufs of the pool, a chain of them when it is larger than one; NULL when
   the pool has too few */
static inline struct rte_mbuf* fs_mbuf_from(struct rte_mempool* pool, const uint8_t* data, uint32_t n) {
    struct rte_mbuf* head = rte_pktmbuf_alloc(pool);
    struct rte_mbuf* m = head;
    uint32_t off = 0, k;
    if (head == NULL) return NULL;
    for (;;) {
        k = rte_pktmbuf_tailroom(m);
        if (k > n - off) k = n - off;
        memcpy(rte_pktmbuf_mtod(m, uint8_t*), data + off, k);
        m->data_len = (uint16_t) k;
        m->pkt_len = k;
        if (m != head && rte_pktmbuf_chain(head, m) != 0) {
            rte_pktmbuf_free(m);
            rte_pktmbuf_free(head);
            return NULL;
        }
        off += k;
        if (off >= n) return head;
        m = rte_pktmbuf_alloc(pool);
        if (m == NULL) { rte_pktmbuf_free(head); return NULL; }
        m->data_off = 0;     /* only the first segment needs headroom */
    }
}

static inline int fs_port_tx_segs(uint16_t port) {
    struct rte_eth_dev_info info;
    if (rte_eth_dev_info_get(port, &info) != 0) return 0;
    return (info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_MULTI_SEGS) != 0;
}
#endif
