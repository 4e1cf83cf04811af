"""medseglens_core.sae."""
