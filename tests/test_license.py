"""One licence for the whole project: Apache-2.0 (LICENSE), said the same way by the roles'
metadata, the collection's plugin headers and the Python package."""

from __future__ import annotations

import tomllib

import yaml

from helpers import REPO


def test_the_licence_file_is_apache_2():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text


def test_every_role_says_apache_2():
    for meta in sorted((REPO / "roles").glob("*/meta/main.yml")):
        info = yaml.safe_load(meta.read_text())["galaxy_info"]
        assert info["license"] == "Apache-2.0", meta


def test_every_plugin_header_says_apache_2():
    plugins = sorted((REPO / "collections").rglob("plugins/**/*.py"))
    plugins += sorted((REPO / "roles").glob("*/filter_plugins/*.py"))
    assert plugins
    for plugin in plugins:
        text = plugin.read_text()
        assert "General Public License" not in text, plugin


def test_the_python_package_says_apache_2():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "Apache-2.0"}
