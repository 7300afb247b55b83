"""Where the aggregator's spooled documents go: a store (bulk), files, or nowhere (null).

``OutputSettings`` is the ``output:`` section of aggregator.yaml (chosen by ``type``);
:func:`build_output` turns it into an :class:`~.base.Output`, which :func:`~.pump.drain`
runs on each tenant's spool.

Modules: ``base`` (the Output contract), ``pump`` (the drain loop every output shares),
``bulk_client`` (``_bulk`` settings, requests and how items settle), ``bulk_delivery``
(retries and splitting until every document is settled), ``bulk_output`` (the store output),
``file`` and ``null`` (the other outputs), ``dead_letters`` (what outputs cannot deliver).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from logferry.aggregator.dlq import DeadLetterQueue
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.outputs.base import Output
from logferry.aggregator.outputs.bulk_client import BulkOutputSettings
from logferry.aggregator.outputs.bulk_output import BulkOutput
from logferry.aggregator.outputs.file import FileOutput, FileOutputSettings
from logferry.aggregator.outputs.null import NullOutput, NullOutputSettings
from logferry.store.settings import IndexSettings

OutputSettings = Annotated[
    BulkOutputSettings | FileOutputSettings | NullOutputSettings, Field(discriminator="type")
]
"""The ``output:`` section: ``type: opensearch|elasticsearch``, ``file`` or ``null``."""

__all__ = [
    "BulkOutput",
    "BulkOutputSettings",
    "FileOutput",
    "FileOutputSettings",
    "NullOutput",
    "NullOutputSettings",
    "Output",
    "OutputSettings",
    "build_output",
]


def build_output(
    settings: BulkOutputSettings | FileOutputSettings | NullOutputSettings,
    metrics: AggregatorMetrics,
    dlq: DeadLetterQueue,
    *,
    prefix: str = "logs",
    indices: IndexSettings | None = None,
) -> Output:
    """The output ``settings`` describe (call ``start()`` on it before draining into it);
    a store output installs the index template for ``<prefix>-*`` from ``indices``."""
    if isinstance(settings, BulkOutputSettings):
        return BulkOutput(settings, metrics, dlq, prefix=prefix, indices=indices)
    if isinstance(settings, FileOutputSettings):
        return FileOutput(settings, metrics, dlq)
    return NullOutput(settings, metrics)
