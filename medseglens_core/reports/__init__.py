"""medseglens_core.reports."""
