"""medseglens_core.data."""
