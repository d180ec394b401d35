# Tables kept in chunks of connections (the flow table, the reassembly engine, the stream file
# sink, the record store): a table of chunk pointers, NULL for a chunk not made yet or freed,
# and beside it one count per chunk (of its entries released), growing together.
from libc.stdint cimport uint8_t, uint32_t
from libc.stdlib cimport realloc
from libc.string cimport memset


cdef inline int grow_zeroed(void** items, uint32_t cap, uint32_t new_cap, size_t size) noexcept nogil:
    # a table of `cap` entries of `size` bytes made `new_cap` long, the new entries zero;
    # 0, or -1 when out of memory (the table unchanged then)
    cdef void* p = realloc(items[0], new_cap * size)
    if p == NULL:
        return -1
    memset(<char*>p + cap * size, 0, (new_cap - cap) * size)
    items[0] = p
    return 0


cdef inline int reach_chunk(void** chunks, uint8_t** counts, uint32_t* cap, uint32_t k) noexcept nogil:
    # the chunk table and its counts hold chunk k (capacity doubling from 64, new entries
    # zero); 0, or -1 when out of memory (the capacity unchanged then)
    cdef uint32_t c
    if k < cap[0]:
        return 0
    c = cap[0] * 2 if cap[0] else 64
    while c <= k:
        c *= 2
    if grow_zeroed(chunks, cap[0], c, sizeof(void*)) or grow_zeroed(<void**>counts, cap[0], c, 1):
        return -1
    cap[0] = c
    return 0
