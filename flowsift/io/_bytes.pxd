from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "_bytes.h" nogil:
    uint16_t fs_ld16(const uint8_t* p)
    uint32_t fs_ld32(const uint8_t* p)
    uint16_t fs_be16(const uint8_t* p)
    uint32_t fs_be32(const uint8_t* p)
    uint16_t fs_rd16(const uint8_t* p, int swap)
    uint32_t fs_rd32(const uint8_t* p, int swap)
    uint64_t fs_rd64(const uint8_t* p, int swap)
