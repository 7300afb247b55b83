"""The spool writer process tests/integration/test_spool_crash.py kills: it appends from
several tasks and prints each batch once it is durable; ``check_record`` is for the test.

Run as ``python -m tests.support.spool_crash_writer DIR RUN SEED``. Lines on stdout:

- ``READY`` once the spool is open;
- ``ACK <first_seq> <batch_id> <count>`` only after ``append`` returned (durable);
  the records of the batch are ``record(f"{batch_id}:{i}")`` for ``i < count``;
- ``COMMIT <first_seq> <end_seq>`` just *before* ``commit`` (so the printed commits are a
  superset of what the spool may have persisted).

The test kills this process with SIGKILL at random moments.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import sys

from logferry.common.spool import Spool, SpoolBatch

PRODUCERS = 6


def record(record_id: str) -> bytes:
    """A record that carries its id and content derived from it (so damage is visible)."""
    digest = hashlib.sha256(record_id.encode()).hexdigest().encode()
    return record_id.encode() + b"|" + digest * (1 + digest[0] % 8)


def check_record(data: bytes) -> str:
    """The id of a record, after checking that its content matches it."""
    record_id = data.split(b"|", 1)[0].decode()
    if record(record_id) != data:
        raise AssertionError(f"record {record_id!r} is corrupt")
    return record_id


def emit(line: str) -> None:
    os.write(1, (line + "\n").encode())  # one unbuffered write: the line is out or not


async def produce(spool: Spool, run: int, task: int, rng: random.Random) -> None:
    for n in range(10**9):
        batch_id = f"{run}:{task}:{n}"
        count = rng.choice((1, 1, 3, 10, 50))
        first_seq = await spool.append([record(f"{batch_id}:{i}") for i in range(count)])
        emit(f"ACK {first_seq} {batch_id} {count}")


async def consume(spool: Spool, rng: random.Random) -> None:
    held: list[SpoolBatch] = []
    while True:
        batch = await spool.read(max_records=200, max_bytes=128 * 1024, timeout_s=0.5)
        if batch is not None:
            held.append(batch)
        while held and (len(held) > 4 or rng.random() < 0.3 or batch is None):
            done = held.pop(rng.randrange(len(held)))  # commits out of order
            emit(f"COMMIT {done.first_seq} {done.end_seq}")
            spool.commit(done)


async def main(directory: str, run: int, seed: int) -> None:
    rng = random.Random(seed)
    spool = await Spool.open(
        directory, max_bytes=256 << 20, segment_max_bytes=128 << 10, commit_flush_interval_s=0.02
    )
    emit("READY")
    tasks = [produce(spool, run, t, random.Random(rng.random())) for t in range(PRODUCERS)]
    await asyncio.gather(*tasks, consume(spool, random.Random(rng.random())))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
