"""The store side: index templates, retention, the shard budget and the ``logferry store``
command, for the aggregator and for teams that set the store up themselves."""
