"""Reading Megatron checkpoints without running code from them, and checking them before a load.

The code lives in :mod:`sedd_megatron.safe_load` (the base floor, so that ``plain`` and
``runtime`` use the same copy); this module re-exports it under the names the checkpoint
package and its callers have always used.
"""

from sedd_megatron.safe_load import (
    COMMON_NAME,
    METADATA_GLOBALS,
    METADATA_NAME,
    TRACKER_NAME,
    MetadataUnpickler,
    RefusalRecorder,
    RefusedGlobal,
    allowed_global,
    check_byte_items,
    check_dcp_dir,
    check_iteration_dir,
    check_load_dir,
    check_storage,
    dcp_errors_as_checkpoint_errors,
    load_folder,
    load_weights_only,
    one_line,
    parse_tracker,
    read_metadata,
    scan_pickle,
    unpickle_metadata,
    weights_only_failure,
    weights_only_globals,
    weights_only_loads,
    weights_only_reason,
)

__all__ = [
    "COMMON_NAME",
    "METADATA_GLOBALS",
    "METADATA_NAME",
    "TRACKER_NAME",
    "MetadataUnpickler",
    "RefusalRecorder",
    "RefusedGlobal",
    "allowed_global",
    "check_byte_items",
    "check_dcp_dir",
    "check_iteration_dir",
    "check_load_dir",
    "check_storage",
    "dcp_errors_as_checkpoint_errors",
    "load_folder",
    "load_weights_only",
    "one_line",
    "parse_tracker",
    "read_metadata",
    "scan_pickle",
    "unpickle_metadata",
    "weights_only_failure",
    "weights_only_globals",
    "weights_only_loads",
    "weights_only_reason",
]
