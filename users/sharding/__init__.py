"""Sharding: stable hashing to logical shards, shard-carrying ids, and the logical→physical map."""
