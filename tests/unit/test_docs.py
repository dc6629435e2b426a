"""The README's configuration table is generated from the settings; it must not drift."""

import re
from pathlib import Path

import pytest

from controller.settings import markdown_table

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_configuration_table_matches_settings() -> None:
    match = re.search(
        r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->", README.read_text(), re.S
    )
    assert match, "README lost its settings-table markers"
    assert match.group(1) == markdown_table(), (
        "regenerate with: python -m controller.settings --update-readme"
    )


def test_readme_layout_names_every_package() -> None:
    root = README.parent
    layout = README.read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    packages = sorted(
        str(init.parent.relative_to(root)) + "/"
        for top in ("controller", "worker_image", "bench", "podq")
        for init in (root / top).rglob("__init__.py")
        # The kubernetes launcher's API client is named in its launcher's row.
        if init.parent != root / "controller/launchers/kubernetes/client"
    )
    missing = [package for package in packages if f"`{package}`" not in layout]
    assert not missing, f"README's Layout section does not name {missing}"
