"""Fuzzing: the contract every decoder and the pipeline keep for any input (``invariants``), the
hypothesis strategies that generate and mutate inputs (``strategies``), and the atheris targets
(``targets``, run by ``run.py`` / ``make fuzz``)."""
