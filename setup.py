"""The one compiled module (processor/_wire.c, with the trace table and the user-agent cache it uses:
processor/_trace_table.c, processor/_user_agents.c);
everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "processor._wire",
            ["processor/_wire.c", "processor/_trace_table.c", "processor/_user_agents.c"],
            depends=["processor/_trace_table.h", "processor/_user_agents.h"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
        )
    ]
)
