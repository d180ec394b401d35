"""A chain in stages: consecutive read-only modules form one stage that runs in parallel worker
processes; a writing module is a stage of its own, run by the gateway, which verifies and
merges its edits. For each connection, stage k+1 sees it only after stage k is done with it
(so it reads the merged bytes); across connections the stages pipeline.
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
    def __init__(self, spec, chain, store, events=None, strict=False, editor=None, registry=None):
        self.stages = []
        for ro, mods, first in split(chain):
            if ro:
                self.stages.append(ParallelChain(spec, mods, store, events=events, strict=strict, first=first, registry=registry))
            else:
                self.stages.append(InlineChain(mods, store, events=events, strict=strict, editor=editor, bit_base=first, registry=registry))
        self.modules = [m for st in self.stages for m in st.modules]

    def _cascade(self, k):
        # hand what stage k finished to stage k+1 (it sees each connection whole, once finished)
        while k + 1 < len(self.stages):
            done, self.stages[k].finished_now = self.stages[k].finished_now, []
            if not done:
                return
            self.stages[k + 1].process([], done)
            k += 1

    def process(self, touched, closed):
        self.stages[0].process(touched, closed)
        for k in range(len(self.stages)):
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
            out.update(st.tables if isinstance(st, ParallelChain) else
                       {m.name: m.summary() for m in st.modules if m.summary()})
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
