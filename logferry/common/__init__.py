"""What both daemons share; imports neither daemon.

- ``protocol/``: Fluentd Forward Protocol v1 (types, encode, decode, entries, handshake).
- ``spool/``: the durable spool (facade, writer, segment, reader, recovery) both daemons
  buffer in; ``files`` small durable files; ``disk_full`` pausing writers on a full volume.
- ``records``: source ids, record ids and seqs; ``naming``: tenant and index names.
- ``config``, ``sections``, ``units``: YAML config loading, shared sections, sizes/durations.
- ``commands``, ``lifecycle``: subcommand registration, signals and the daemon run loop.
- ``status_http``, ``metrics``, ``logs``: /metrics and health, metric helpers, structured logs.
- ``backoff``, ``events``, ``budget``: retry delays, waiting on a stop, shared byte budgets.
- ``store_access``: reaching an Elasticsearch/OpenSearch store (URLs, credentials, TLS).
- ``deflate``: gzip/CRC through ISA-L when present; ``faults``: crash points for chaos tests;
  ``errors``: the one error hierarchy.
"""
