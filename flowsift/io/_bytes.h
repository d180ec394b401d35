/* Unaligned loads in either byte order; each compiles to a load (+ bswap). */
#ifndef FLOWSIFT_BYTES_H
#define FLOWSIFT_BYTES_H
#include <stdint.h>
#include <string.h>

static inline uint16_t fs_ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t fs_ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint64_t fs_ld64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint16_t fs_be16(const uint8_t *p) { return __builtin_bswap16(fs_ld16(p)); }
static inline uint32_t fs_be32(const uint8_t *p) { return __builtin_bswap32(fs_ld32(p)); }
/* host order is little-endian on every platform flowsift builds for (checked in setup) */
static inline uint16_t fs_rd16(const uint8_t *p, int swap) { uint16_t v = fs_ld16(p); return swap ? __builtin_bswap16(v) : v; }
static inline uint32_t fs_rd32(const uint8_t *p, int swap) { uint32_t v = fs_ld32(p); return swap ? __builtin_bswap32(v) : v; }
static inline uint64_t fs_rd64(const uint8_t *p, int swap) { uint64_t v = fs_ld64(p); return swap ? __builtin_bswap64(v) : v; }
#endif
