"""Label schemas and annotation regions: validation and schema migrations, pure Python.

The contract is docs/annotations.md. Nothing here touches Django or the database: callers pass
specs, regions and item facts in and get normalized data or an exception listing every problem.
"""

from labeling.regions.migrate import (
    ARCHIVED_WITH,
    OPERATIONS,
    OperationsInvalid,
    apply_operations,
    check_operations,
    inverse_operations,
)
from labeling.regions.spec import TOOLS, AttributeDef, ClassDef, Schema, SpecInvalid, parse_schema
from labeling.regions.validate import (
    TYPE_MODALITIES,
    ItemFacts,
    RegionsInvalid,
    validate_many,
    validate_regions,
)

__all__ = [
    "ARCHIVED_WITH",
    "OPERATIONS",
    "TOOLS",
    "TYPE_MODALITIES",
    "AttributeDef",
    "ClassDef",
    "ItemFacts",
    "OperationsInvalid",
    "RegionsInvalid",
    "Schema",
    "SpecInvalid",
    "apply_operations",
    "check_operations",
    "inverse_operations",
    "parse_schema",
    "validate_many",
    "validate_regions",
]
