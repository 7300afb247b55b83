"""Stateful property test: append / read / commit (any order) / close+reopen vs. a model.

The model: records are numbered from 0; the cursor is the next record to read; the
low-water mark is the first read-and-uncommitted batch, else the cursor. After a reopen
the spool must deliver exactly the records from the mark on, in order: no loss, no
duplicate, no reordering.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from logferry.common.spool import Spool, SpoolBatch

T = TypeVar("T")

SEGMENT_MAX = 512  # small, so that rollover and segment deletion happen often


class SpoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.directory = tempfile.mkdtemp(prefix="spool-prop-")
        self.spool = self.run(self._open())
        self.records: list[bytes] = []
        self.cursor = 0
        self.outstanding: dict[int, tuple[SpoolBatch, bool]] = {}

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def _open(self) -> Spool:
        return await Spool.open(self.directory, max_bytes=1 << 20, segment_max_bytes=SEGMENT_MAX)

    def model_low_water(self) -> int:
        for first_seq, (_, committed) in self.outstanding.items():
            if not committed:
                return first_seq
        return self.cursor

    @rule(sizes=st.lists(st.integers(0, 120), min_size=1, max_size=6))
    def append(self, sizes: list[int]) -> None:
        batch = [b"%06d|" % (len(self.records) + i) + b"p" * n for i, n in enumerate(sizes)]
        seq = self.run(self.spool.append(batch))
        assert seq == len(self.records)
        self.records.extend(batch)

    @rule(max_records=st.integers(1, 10), max_bytes=st.integers(1, 600))
    def read(self, max_records: int, max_bytes: int) -> None:
        batch = self.run(self.spool.read(max_records=max_records, max_bytes=max_bytes, timeout_s=0))
        if self.cursor == len(self.records):
            assert batch is None
            return
        assert batch is not None
        n = len(batch.records)
        assert batch.first_seq == self.cursor
        assert 1 <= n <= max_records
        assert n == 1 or sum(map(len, batch.records)) <= max_bytes
        assert batch.records == self.records[self.cursor : self.cursor + n]
        self.outstanding[batch.first_seq] = (batch, False)
        self.cursor += n

    @precondition(lambda self: any(not done for _, done in self.outstanding.values()))
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        open_batches = [seq for seq, (_, done) in self.outstanding.items() if not done]
        seq = data.draw(st.sampled_from(open_batches))
        batch, _ = self.outstanding[seq]
        self.spool.commit(batch)
        self.outstanding[seq] = (batch, True)

    @precondition(lambda self: any(done for _, done in self.outstanding.values()))
    @rule(data=st.data())
    def commit_again_is_a_no_op(self, data: st.DataObject) -> None:
        done = [seq for seq, (_, committed) in self.outstanding.items() if committed]
        self.spool.commit(self.outstanding[data.draw(st.sampled_from(done))][0])

    @rule()
    def reopen(self) -> None:
        self.run(self.spool.close())
        self.spool = self.run(self._open())
        self.cursor = self.model_low_water()
        self.outstanding.clear()
        assert self.spool.low_water_mark == self.cursor
        assert self.spool.next_seq == len(self.records)

    @invariant()
    def low_water_mark_and_pending_match_the_model(self) -> None:
        assert self.spool.low_water_mark == self.model_low_water()
        uncommitted = sum(len(b.records) for b, done in self.outstanding.values() if not done)
        assert self.spool.records_pending == len(self.records) - self.cursor + uncommitted

    def teardown(self) -> None:
        try:
            self.run(self.spool.close())
            # Final check: a fresh open delivers exactly what is not below the mark.
            spool = self.run(self._open())
            got: list[bytes] = []
            while b := self.run(spool.read(max_records=50, max_bytes=1 << 20, timeout_s=0)):
                got.extend(b.records)
            assert got == self.records[self.model_low_water() :]
            self.run(spool.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.directory, ignore_errors=True)


SpoolMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
test_spool_state_machine = SpoolMachine.TestCase
