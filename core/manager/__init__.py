"""The Manager: plans as validated DAGs, task bookkeeping in code, and the Manager agent's tools."""
