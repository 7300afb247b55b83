"""Where the aggregator's spooled documents go: a store (bulk), files, or nowhere (null).

``OutputSettings`` is the ``output:`` section of aggregator.yaml (chosen by ``type``);
:func:`build_output` turns it into an :class:`~.base.Output`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from logferry.aggregator.dlq import DeadLetterQueue
from logferry.aggregator.metrics import AggregatorMetrics
from logferry.aggregator.outputs.base import Output
from logferry.aggregator.outputs.bulk import BulkOutputSettings
from logferry.aggregator.outputs.bulk_delivery import BulkOutput
from logferry.aggregator.outputs.file import FileOutput, FileOutputSettings
from logferry.aggregator.outputs.null import NullOutput, NullOutputSettings

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
) -> Output:
    """The output ``settings`` describe (call ``start()`` on it before ``drain``)."""
    if isinstance(settings, BulkOutputSettings):
        return BulkOutput(settings, metrics, dlq)
    if isinstance(settings, FileOutputSettings):
        return FileOutput(settings, metrics, dlq)
    return NullOutput(settings, metrics)
