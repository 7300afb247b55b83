"""logferry: a log forwarder/aggregator pair that proves no acknowledged line is lost."""

__version__ = "0.1.0"
