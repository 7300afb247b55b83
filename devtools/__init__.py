"""Tools for working on logferry in this repository (not part of the installed package):

- ``opensearch_node``: a real OpenSearch node from Maven Central artifacts, for the tests,
  the benchmarks and ``make run`` (``scripts/opensearch start|status|stop``);
- ``update_docs``: regenerates the configuration reference in docs/configuration.md
  (``make docs``).

Run them from the repository root (``python -m devtools.update_docs``); the test suite and the
benchmarks import them with the repository root on their path.
"""
