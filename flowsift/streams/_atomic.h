/* Publishing counters that readers in other processes poll: store with release ordering so a
 * reader that sees the new count also sees the records and bytes written before it. */
#ifndef FLOWSIFT_ATOMIC_H
#define FLOWSIFT_ATOMIC_H
#include <stdint.h>
static inline void fs_publish_u64(volatile uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void fs_publish_i64(volatile int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void fs_publish_u32(volatile uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
/* the writer thread and the gateway sharing a batch's runs */
static inline int fs_take(volatile int *p) { return __atomic_fetch_add(p, 1, __ATOMIC_ACQ_REL); }
static inline int fs_load_int(volatile int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void fs_add_u64(volatile uint64_t *p, uint64_t v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
/* 1 if *p was 0 and is now v (the first of racing failures is the one kept) */
static inline int fs_claim_int(volatile int *p, int v) { int z = 0; return __atomic_compare_exchange_n(p, &z, v, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE); }
#endif
