"""Tenant pipelines: the LogPipeline document, its layered validation, and its compiled form.

::

    spec.py           the LogPipeline document (pydantic, camelCase keys like the CRD)
    filters_extra.py  the filter whitelist (the aggregator's filters + parse_regex,
                      drop_level, sample, multiline)
    regexes.py        tenant regexes: size bound, catastrophic-pattern probes, run-time timeout
    loading.py        documents from a folder or ConfigMap mount (..data symlinks)
    validate.py       schema -> policy -> dry run; Issue, Verdict, TenantLimits
    steps.py          compiled filters (copy-on-write, so a run can be undone)
    compiled.py       CompiledPipeline, TenantPipelines.process (first match, time budget)
    render.py         accepted pipelines as one normalized YAML stream (the ConfigMap)
    cli.py            logferry pipelines validate|render
"""

from logferry.aggregator.pipelines.compiled import (
    CompiledPipeline,
    Processed,
    TenantPipelines,
    compile_tenants,
)
from logferry.aggregator.pipelines.loading import LoadFailure, load_directory
from logferry.aggregator.pipelines.render import render
from logferry.aggregator.pipelines.spec import LogPipeline, spec_hash
from logferry.aggregator.pipelines.validate import (
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
