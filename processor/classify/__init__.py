"""Pure classification core: signature catalog, classifier, verdicts. No I/O beyond reading data files."""

from .catalog import CatalogError, Signature, builtin_catalog, load_catalog, parse_catalog
from .classifier import Classifier
from .verdict import UNKNOWN, Verdict

__all__ = [
    "CatalogError",
    "Classifier",
    "Signature",
    "UNKNOWN",
    "Verdict",
    "builtin_catalog",
    "load_catalog",
    "parse_catalog",
]
