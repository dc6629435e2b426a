"""The warm pool's series in a /metrics exposition, by (name, reason): what the unit and e2e tests read."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def pool_series(exposition: str) -> dict[tuple[str, str], float]:
    """Every `podq_warm_pool*` sample, keyed by its name and its `reason` label ("" when it has none)."""
    return {
        (sample.name, sample.labels.get("reason", "")): sample.value
        for family in text_string_to_metric_families(exposition)
        if family.name.startswith("podq_warm_pool")
        for sample in family.samples
    }
