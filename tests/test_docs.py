"""The README's settings table and the settings table in code must not drift apart."""

from __future__ import annotations

import os

from trt_multidev_backend.settings import SETTING_SPECS

ROOT = os.path.dirname(os.path.dirname(__file__))


def test_every_setting_and_variable_is_documented():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    for spec in SETTING_SPECS:
        assert f"| `{spec.name}` | `{spec.env}`" in readme, spec.name


def test_changelog_names_the_current_version():
    from trt_multidev_backend import __version__

    with open(os.path.join(ROOT, "CHANGELOG.md")) as f:
        assert f"## [{__version__}]" in f.read()
