"""The LogPipeline operator: validates tenants' LogPipelines and writes the accepted ones
into the ConfigMap the aggregators mount.

- ``reconcile``: every decision, as pure functions (no Kubernetes I/O), unit-tested.
- ``kubeapi``: the one ConfigMap the operator owns, read and written over the API server.
- ``aggregators``: what the aggregators report they loaded, scraped from their /metrics in
  the background (for ``Applied``).
- ``main``: the kopf wiring (``kopf run -m logferry.operator.main --all-namespaces``).
"""
