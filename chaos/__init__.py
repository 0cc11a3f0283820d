"""`make chaos`: fault injection under a steady mixed load, every scenario's guarantee asserted (see
__main__.py and docs/operations.md, "Chaos suite")."""
