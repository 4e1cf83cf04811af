"""medseglens_core.io."""
