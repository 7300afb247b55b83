"""The aggregator: receives forwarders' chunks, applies tenant pipelines, writes to the store.

Data flows one way::

    server -> ingest (routing, pipelines, render) -> spools (one per tenant) -> ack
           -> outputs (pump -> bulk / file / null) -> store;  refusals -> dlq

- ``server`` is the Forward Protocol v1 input (handshake, limits, acks only once durable).
- ``ingest`` turns a decoded message into tenant fragments: ``routing`` picks the tenant,
  ``pipeline_watch`` keeps each tenant's compiled LogPipelines current (hot apply),
  ``allowance`` caps their CPU, ``render`` makes each record a ``_bulk`` document
  (``documents`` is that spool payload).
- ``spools`` holds one durable spool per tenant under a shared disk budget.
- ``outputs`` drains the spools into the store; ``dlq`` (and ``dlq_cli``) keeps what the
  store refused for good.
- ``app`` wires it together, ``config`` is aggregator.yaml, ``metrics`` every metric it
  exports, ``cli`` the ``logferry aggregator`` command.
"""
