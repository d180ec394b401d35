# Growing the tables indexed by connection or chunk number (shared by the flow table, the
# reassembly engine and the stream file sink).
from libc.stdint cimport uint32_t
from libc.stdlib cimport realloc
from libc.string cimport memset


cdef inline uint32_t capacity_for(uint32_t cap, uint32_t index) noexcept nogil:
    # the next capacity of a table of `cap` entries that holds entry `index`: doubling from 64
    cdef uint32_t c = cap * 2 if cap else 64
    while c <= index:
        c *= 2
    return c


cdef inline int grow_zeroed(void** items, uint32_t cap, uint32_t new_cap, size_t size) noexcept nogil:
    # a table of `cap` entries of `size` bytes made `new_cap` long, the new entries zero;
    # 0, or -1 when out of memory (the table unchanged then)
    cdef void* p = realloc(items[0], new_cap * size)
    if p == NULL:
        return -1
    memset(<char*>p + cap * size, 0, (new_cap - cap) * size)
    items[0] = p
    return 0
