"""The durable spool: length- and CRC-framed records in segment files, fsynced before an
append returns, committed in any order, freed a whole segment at a time.

- :mod:`.facade`: :class:`Spool`, what the daemons use (append, read, commit, close);
- :mod:`.writer`: group commit (one fsync for many appends), disk-full retries;
- :mod:`.segment`: the frame format, segment names and the commit file;
- :mod:`.reader`: the consumer cursor and commit tracking;
- :mod:`.recovery`: what ``open`` does with a crashed spool (torn tails cut, damage
  quarantined).

Disk-full stalls (ENOSPC/EDQUOT) are tracked by :mod:`logferry.common.disk_full`, small
durable files written by :mod:`logferry.common.files`.
"""

from __future__ import annotations

from logferry.common.spool.facade import Spool, SpoolBatch

__all__ = ["Spool", "SpoolBatch"]
