"""Hypothesis properties of the pure sharding functions: ids and the stable hash."""

from hypothesis import given
from hypothesis import strategies as st

from users.identity import identity_key
from users.sharding.hashing import logical_shard_for_username, stable_hash64
from users.sharding.ids import EPOCH_MS, logical_shard_of_id, make_id, parse_id
from users.sharding.shardmap import even_ranges, validate_ranges

# PostgreSQL's bigint is signed: of the 41 time bits, 40 are usable (ids valid until 2059).
ms = st.integers(min_value=EPOCH_MS, max_value=EPOCH_MS + (1 << 40) - 1)
shard = st.integers(min_value=0, max_value=8191)
seq = st.integers(min_value=0, max_value=1023)


@given(ms, shard, seq)
def test_an_id_carries_its_logical_shard_and_fits_in_63_bits(t, ls, s):
    user_id = make_id(ms=t, logical_shard=ls, seq=s)
    assert 0 <= user_id < 1 << 63
    assert logical_shard_of_id(user_id) == ls
    assert parse_id(str(user_id)) == (user_id or None)


@given(ms, ms, shard, seq, seq)
def test_ids_are_ordered_by_time(t1, t2, ls, s1, s2):
    if t1 < t2:
        assert make_id(ms=t1, logical_shard=ls, seq=s1) < make_id(ms=t2, logical_shard=ls, seq=s2)


@given(st.text(min_size=1, max_size=150))
def test_placement_ignores_letter_case_and_stays_in_range(name):
    assert 0 <= logical_shard_for_username(name, logical_shards=1024) < 1024
    assert logical_shard_for_username(name.upper(), logical_shards=1024) == logical_shard_for_username(
        name.lower(), logical_shards=1024
    ) or identity_key(name.upper()) != identity_key(name)


@given(st.text(max_size=50))
def test_the_hash_is_a_pure_function(key):
    assert stable_hash64(key) == stable_hash64(key) < 1 << 64


@given(st.integers(min_value=1, max_value=8192), st.integers(min_value=1, max_value=16))
def test_an_even_split_assigns_every_logical_shard_once(n, groups):
    names = [f"shard_{i}" for i in range(groups)]
    if groups <= n:
        assert validate_ranges(even_ranges(n, names), logical_shards=n, groups=names) == []
