"""medseglens_core.models."""
