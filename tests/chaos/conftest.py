"""Fixtures of the chaos suite: pipelines that are always torn down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.chaos_harness import MakePipeline, Pipeline


@pytest.fixture
async def make_pipeline(tmp_path: Path, opensearch: Any) -> AsyncIterator[MakePipeline]:
    made: list[Pipeline] = []

    def make(**kwargs: Any) -> Pipeline:
        kwargs.setdefault("store_url", opensearch.url)
        pipeline = Pipeline(tmp_path / f"p{len(made)}", **kwargs)
        made.append(pipeline)
        return pipeline

    yield make
    for pipeline in made:
        pipeline.ensure_dead()
