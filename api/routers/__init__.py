"""One router module per resource group."""
