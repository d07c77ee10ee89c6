"""Package discovery that pyproject.toml cannot express: every package under src/ (so a new
head under src/heads/zoo/ needs no edit here) plus cli/ installed as ``featstore_cli``."""

from setuptools import find_packages, setup

setup(
    package_dir={"": "src", "featstore_cli": "cli"},
    packages=[*find_packages("src"), "featstore_cli"],
)
