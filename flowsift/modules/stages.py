"""A chain in stages: consecutive read-only modules form one stage that runs in parallel worker
processes; a writing module is a stage of its own, run by the gateway, which verifies and
merges its edits. Stage k+1 reads a connection only as far as stage k is done with it, so it
reads the merged bytes: after a writing stage (synchronous, batch by batch) that is after every
batch, up to where its modules stand in each stream; a writing stage after parallel workers
gets each batch once every worker has read it (the gateway waits for them). Across connections
the stages pipeline.
"""
from flowsift.modules.runner import InlineChain
from flowsift.modules.workers import ParallelChain


def split(chain):
    """[(read_only, [(cls, config), ...], first index)] in chain order."""
    stages = []
    for i, (cls, config) in enumerate(chain):
        ro = cls.read_only()
        if stages and ro and stages[-1][0]:
            stages[-1][1].append((cls, config))
        else:
            stages.append((ro, [(cls, config)], i))
    return stages


class StagedChain:
    def __init__(self, spec, chain, store, events=None, strict=False, editor=None, registry=None, save_state=True,
                 modules=None):
        # `modules`: instances of the chain's modules started already (loader.start_chain)
        self.stages = []
        for ro, mods, first in split(chain):
            started = modules[first:first + len(mods)] if modules is not None else None
            if ro:
                self.stages.append(ParallelChain(spec, mods, store, events=events, strict=strict, first=first, registry=registry,
                                                 save_state=save_state, modules=started))
            else:
                self.stages.append(InlineChain(mods, store, events=events, strict=strict, editor=editor, bit_base=first, registry=registry,
                                               modules=started))
        self.modules = [m for st in self.stages for m in st.modules]
        for st in self.stages[:-1]:
            if isinstance(st, InlineChain):
                st.followed = True        # (a writing stage refuses edits of what it handed on)

    def _cascade(self, k, touched=(), closed=()):
        # hand stage k's progress to stage k+1: the connections it finished, whole; after a
        # writing stage also the others it read in this batch, as far as it is done with them
        while k + 1 < len(self.stages):
            st = self.stages[k]
            done, st.finished_now = st.finished_now, []
            going = []
            limits = None
            nxt = self.stages[k + 1]
            if touched and isinstance(st, InlineChain):
                going = [c for c in touched if c in st.conns]
                limits = st.handover(going)
            elif touched and isinstance(nxt, InlineChain):
                # a writing stage after parallel workers: it gets the batch once every worker has
                # read it (as published), so that it edits (and forwarding sends) batch by batch
                st.wait_all()
                ended = set(closed)
                # what ended in this batch the workers have read to its end (they report it with
                # their next checkpoint; the next stage takes it once)
                done = done + st.finished_now + [c for c in closed if c not in done]
                st.finished_now = []
                going = [c for c in touched if c in st.open_conns and c not in ended]
            if not done and not going:
                return
            nxt.process(going, done, limits)
            touched = going
            k += 1

    def process(self, touched, closed):
        self.stages[0].process(touched, closed)
        self._cascade(0, touched, closed)
        for k in range(1, len(self.stages)):
            self._cascade(k)

    def finish(self):
        for k, st in enumerate(self.stages):
            st.finish()
            self._cascade(k)

    @property
    def event_count(self):
        return sum(st.event_count for st in self.stages)

    def counters_summary(self):
        out = {}
        for st in self.stages:
            out.update(st.counters_summary() if isinstance(st, ParallelChain) else st.counters())
        return out

    @property
    def tables(self):
        out = {}
        for st in self.stages:
            out.update(st.tables if isinstance(st, ParallelChain) else st.summary_tables())
        return out

    def state_snapshots(self):
        out = {}
        for st in self.stages:
            out.update(st.state_snapshots())
        return out

    def checkpoint_stats(self):
        out = {}
        for st in self.stages:
            if isinstance(st, ParallelChain):
                out.update(st.checkpoint_stats())
        return out
