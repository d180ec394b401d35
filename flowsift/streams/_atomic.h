/* Publishing counters that readers in other processes poll: store with release ordering so a
 * reader that sees the new count also sees the records and bytes written before it. */
#ifndef FLOWSIFT_ATOMIC_H
#define FLOWSIFT_ATOMIC_H
#include <stdint.h>
static inline void fs_publish_u64(volatile uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void fs_publish_i64(volatile int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
#endif
