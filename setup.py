"""Packaging detail pyproject.toml cannot express: the top-level conf/ folder ships inside the
wheel as ``dinotracker/conf`` (found at run time by :func:`dinotracker.config_dir`)."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["dinotracker", "dinotracker.*"]) + ["dinotracker.conf"],
    package_dir={"dinotracker.conf": "conf"},
    package_data={"dinotracker.conf": ["*.yaml", "*/*.yaml", "*/*/*.yaml"]},
)
