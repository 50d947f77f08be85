"""The mini world: a procedural face renderer with ground truth in every style and character, and its captions.

Entry points: `replication.miniworld.attributes` (names, ranges, sampling), `replication.miniworld.render.render`
and `replication.miniworld.captions.captions`. The functions are not re-exported here because their names are also
the names of their modules, and a package attribute cannot be both.
"""

from replication.miniworld.attributes import (
    ATTRIBUTE_NAMES,
    CHARACTERS,
    NUM_ATTRIBUTES,
    STYLES,
    UnknownDomainError,
    sample_attributes,
)

__all__ = ["ATTRIBUTE_NAMES", "CHARACTERS", "NUM_ATTRIBUTES", "STYLES", "UnknownDomainError", "sample_attributes"]
