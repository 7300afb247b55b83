"""docs/helm.md's values table is what devtools/helm_values_doc.py makes of values.yaml, and
the generator documents every value or refuses."""

from __future__ import annotations

import pytest

from devtools import helm_values_doc


def test_the_committed_values_table_is_current() -> None:
    page = helm_values_doc.PAGE.read_text()
    assert page == helm_values_doc.render(page, helm_values_doc.VALUES.read_text()), (
        "docs/helm.md is out of date: run `make docs`"
    )


def test_every_top_level_value_is_in_the_table() -> None:
    page = helm_values_doc.PAGE.read_text()
    for value in helm_values_doc.values(helm_values_doc.VALUES.read_text()):
        assert f"| `{value.path}` |" in page, value.path
    for key in ("clusterDomain", "namespaces.forwarder", "monitoring.serviceMonitor.enabled"):
        assert f"| `{key}` |" in page, key


def test_a_value_without_a_description_is_refused() -> None:
    text = "# -- Documented.\ndocumented: 1\nsection:\n  # a plain comment, not `# --`\n  bare: 2\n"
    with pytest.raises(helm_values_doc.UndocumentedValue, match=r"section\.bare"):
        helm_values_doc.values(text)


def test_descriptions_types_defaults_and_nesting() -> None:
    text = (
        "# -- Top.\n"
        "top: x\n"
        "outer:\n"
        "  # -- A map, documented whole:\n"
        "  #   its keys are not rows.\n"
        "  resources:\n"
        "    limits: {memory: 1Gi}\n"
        "  # -- A list.\n"
        "  peers:\n"
        "    - namespaceSelector:\n"
        "        # -- inside a list item: not a value of its own\n"
        "        matchLabels: {a: b}\n"
        "  # -- Pipes | escaped.\n"
        "  enabled: true\n"
    )
    rows = {v.path: v for v in helm_values_doc.values(text)}
    assert list(rows) == ["top", "outer.resources", "outer.peers", "outer.enabled"]
    assert rows["outer.resources"].description == "A map, documented whole: its keys are not rows."
    assert rows["outer.resources"].kind == "object"
    assert rows["outer.peers"].kind == "list"
    assert rows["outer.enabled"].default is True
    table = helm_values_doc.table(text)
    assert "| `outer.enabled` | bool | `true` | Pipes \\| escaped. |" in table
    assert '| `outer.resources` | object | `{"limits": {"memory": "1Gi"}}` |' in table
