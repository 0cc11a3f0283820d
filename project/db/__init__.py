"""Database groups (a primary + replicas), replica lag monitoring and read-your-writes pinning."""
