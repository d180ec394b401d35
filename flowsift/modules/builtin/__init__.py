"""Built-in modules (found by name: `flowsift modules` lists them)."""


def new_hole(flow, direction, gap):
    """Whether the gap entry `gap` (on_gap's) begins a hole: one hole may be several entries with
    no byte between them (one per packet the snaplen cut, then a loss), counted once, as counter
    and the streams index count holes."""
    ends = flow.state.setdefault("gap_ends", [None, None])
    begins = gap.offset != ends[direction]
    ends[direction] = gap.offset + gap.length
    return begins
