"""The webhook tests run on the resilience tests' clean state Redis (breakers live there)."""

from tests.resilience.conftest import builtin_policies, state_down, state_redis_db  # noqa: F401 (fixtures)
