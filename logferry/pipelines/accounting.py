"""Accounting records: what a tenant's filters discarded, per source, as seq ranges.

A line a filter discards (grep, drop_level, sample) is not stored, but the proof of delivery
must still tell it from a lost one. Per source and message the aggregator writes one small
record instead, listing the discarded seqs as ranges with the pipeline and filter that
discarded them. It goes to the tenant's own index family under a reserved suffix
(``<prefix>-<tenant>.lf-accounting-<date>``): the tenant's usual pattern ``<prefix>-<tenant>-*``
does not match it, ``logferry verify`` reads it, and retention deletes it with the rest.

Its id is a hash of the source and the ranges: a resend cut the same way writes the same
record (a 409, harmless); one cut differently may write a second record for some of the same
seqs, which the proof counts once (a union, never a duplicate).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ACCOUNTING_KIND",
    "ACCOUNTING_SUFFIX",
    "CHECKPOINT_ID_PREFIX",
    "CHECKPOINT_KIND",
    "CHECKPOINT_STATES",
    "RESERVED_SUFFIX_PREFIX",
    "WIRE_KIND_FIELD",
    "Discard",
    "accounting_records",
]

ACCOUNTING_SUFFIX = "lf-accounting"
ACCOUNTING_KIND = "accounting"
RESERVED_SUFFIX_PREFIX = "lf-"
"""Index suffixes starting with this are logferry's own; tenant pipelines cannot use them."""
CHECKPOINT_KIND = "checkpoint"
"""``_lf.kind`` of a forwarder's checkpoint: every seq of ``_lf.src`` below ``_lf.next_seq`` is
durable. Stored beside the accounting records, under :data:`ACCOUNTING_SUFFIX`."""
CHECKPOINT_ID_PREFIX = "ckpt-"
"""A checkpoint's ``_lf.id`` starts with this: it can never take an accounting record's id
(``acct-``) in the index they share, which would make the store refuse the real one as a 409."""
CHECKPOINT_STATES = frozenset({"open", "finished", "lost"})
WIRE_KIND_FIELD = "wire_kind"
"""Where the aggregator keeps (in ``_lf``) a ``kind`` a record arrived with but that is not a
valid checkpoint: only logferry itself may store a document with ``_lf.kind``."""


@dataclass(frozen=True, slots=True)
class Discard:
    """One discarded line: where it was in the message, its source and seq, and why."""

    position: int
    src: str
    seq: int
    namespace: str
    pipeline: str
    filter: int
    """Index of the filter in the pipeline's ``spec.filters``; -1: joined into a record that a
    filter discarded."""
    filter_type: str


def accounting_records(discards: Iterable[Discard]) -> list[tuple[int, dict[str, Any]]]:
    """(position of its first discarded line, record): one accounting record per source,
    consecutive seqs discarded for the same reason as one range."""
    by_source: dict[str, list[Discard]] = {}
    for discard in discards:
        by_source.setdefault(discard.src, []).append(discard)
    out: list[tuple[int, dict[str, Any]]] = []
    for src, items in by_source.items():
        items.sort(key=lambda d: d.seq)
        ranges: list[dict[str, Any]] = []
        for d in items:
            last = ranges[-1] if ranges else None
            same = (
                last is not None
                and last["last"] + 1 == d.seq
                and (last["pipeline"], last["filter"]) == (d.pipeline, d.filter)
            )
            if same and last is not None:
                last["last"] = d.seq
            elif last is None or d.seq > last["last"]:  # a seq given twice counts once
                ranges.append(
                    {
                        "first": d.seq,
                        "last": d.seq,
                        "pipeline": d.pipeline,
                        "filter": d.filter,
                        "type": d.filter_type,
                    }
                )
        text = src + "|" + ";".join(f"{r['first']}-{r['last']}" for r in ranges)
        digest = hashlib.blake2b(text.encode(), digest_size=12).hexdigest()
        record = {
            "kubernetes": {"namespace_name": items[0].namespace},
            "_lf": {
                "id": f"acct-{digest}",
                "src": src,
                "kind": ACCOUNTING_KIND,
                "lines": sum(r["last"] - r["first"] + 1 for r in ranges),
                "discarded": ranges,
            },
        }
        out.append((min(d.position for d in items), record))
    return out
