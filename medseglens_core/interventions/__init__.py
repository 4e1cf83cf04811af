"""medseglens_core.interventions."""
