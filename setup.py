"""The one compiled module (processor/_wire.c); everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("processor._wire", ["processor/_wire.c"], extra_compile_args=["-O2", "-Wall", "-Wextra"])])
