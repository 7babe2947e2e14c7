"""Dataset preparers: one sub-package per dataset (`python -m data.<name>.prepare`)."""
