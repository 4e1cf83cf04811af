"""medseglens_core.metrics."""
