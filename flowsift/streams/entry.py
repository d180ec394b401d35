"""Entry state (SIFT): what a reader keeps per connection, and what the gateway keeps too.

A reader (a module process, a tool) holds one Entry per connection it follows: the file, its
mapping, the index of the next record to process and of the latest record known to exist.
The gateway's entries add the oldest record every module finished that the receiver has not
acknowledged yet: the first record that could be replayed after a backend failure.
"""
from dataclasses import dataclass, field

from flowsift.streams.reader import RecordFile, store_files


@dataclass
class Entry:
    path: str
    conn: int
    file: RecordFile = field(repr=False)
    next_record: int = 0          # the next record this reader will process
    latest_record: int = 0        # records known to be published
    oldest_unacked_done: int = 0  # gateway side (from the header)

    def refresh(self):
        """Learn what the gateway published; returns how many records are new to this reader."""
        h = self.file.refresh()
        self.latest_record = h["records"]
        self.oldest_unacked_done = h["oldest_unacked_done"]
        return self.latest_record - self.next_record

    def pending(self):
        """Records published but not yet processed by this reader."""
        return list(self.file.records(self.next_record, self.latest_record))

    def done(self, upto):
        """This reader has processed every record below index `upto`."""
        self.next_record = max(self.next_record, upto)

    @property
    def finished(self):
        return self.file.closed_by_gateway and self.next_record >= self.latest_record

    def close(self):
        self.file.close()


class EntryTable:
    """A reader's entries for every connection of a store directory (opened as they appear)."""

    def __init__(self, directory):
        self.directory = str(directory)
        self.entries = {}

    def scan(self):
        """Open entries for record files not seen before; refresh all; returns the new ones."""
        new = []
        for path in store_files(self.directory):
            if path not in self.entries:
                rf = RecordFile(path)
                e = self.entries[path] = Entry(path, rf.header["conn"], rf)
                new.append(e)
        for e in self.entries.values():
            e.refresh()
        return new

    def close_finished(self):
        """Unmap and close files this reader is done with (bounds mappings and descriptors)."""
        for path in [p for p, e in self.entries.items() if e.finished]:
            self.entries.pop(path).close()
