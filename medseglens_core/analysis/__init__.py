"""medseglens_core.analysis."""
