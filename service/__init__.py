"""Med-SegLens REST service and CLI (imports medseglens_core, never the reverse)."""
