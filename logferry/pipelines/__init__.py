"""Tenant pipelines: the LogPipeline document, its layered validation and its compiled form,
used by the aggregator (run time, hot apply in ``aggregator/pipeline_watch.py``) and the
operator (validation, the ConfigMap it writes).

::

    spec.py        the LogPipeline document (pydantic, camelCase keys like the CRD)
    whitelist.py   the filter whitelist: every filter config a tenant may write
    fields.py      record field paths, reading, the reserved roots
    regexes.py     tenant regexes: size bound, catastrophic-pattern probes, run-time timeout
    loading.py     documents from a folder or ConfigMap mount (..data symlinks)
    validate.py    schema -> policy -> dry run; Issue, Verdict, TenantLimits
    samples.py     built-in sample records for dry runs
    steps.py       compiled filters (copy-on-write, so a run can be undone)
    multiline.py   the multiline join step
    compiled.py    CompiledPipeline, TenantPipelines.process (first match, time budget)
    render.py      accepted pipelines as one normalized YAML stream (the ConfigMap)
    cli.py         logferry pipelines validate|render
"""

from logferry.pipelines.compiled import (
    CompiledPipeline,
    Processed,
    TenantPipelines,
    compile_tenants,
)
from logferry.pipelines.loading import LoadFailure, load_directory
from logferry.pipelines.render import render
from logferry.pipelines.spec import LogPipeline, spec_hash
from logferry.pipelines.validate import (
    Issue,
    TenantLimits,
    Verdict,
    validate_document,
    validate_documents,
)

__all__ = [
    "CompiledPipeline",
    "Issue",
    "LoadFailure",
    "LogPipeline",
    "Processed",
    "TenantLimits",
    "TenantPipelines",
    "Verdict",
    "compile_tenants",
    "load_directory",
    "render",
    "spec_hash",
    "validate_document",
    "validate_documents",
]
