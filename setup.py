"""The one compiled module (processor/_wire.c and the trace table it uses, processor/_trace_table.c);
everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "processor._wire",
            ["processor/_wire.c", "processor/_trace_table.c"],
            depends=["processor/_trace_table.h"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
        )
    ]
)
