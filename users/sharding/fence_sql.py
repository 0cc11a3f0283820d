"""Shard-side fence for online moves: statement-level triggers (with transition tables, so a
10,000-row flush costs one check, not 10,000) refuse writes to rows of frozen logical shards.
The mover itself sets `bulwark.mover = on` in its transactions to pass."""

from .ids import logical_shard_sql

TABLES = {  # table -> SQL expression of a transition-table row r's logical shard
    "users_user": "r.logical_shard",
    "users_token": logical_shard_sql("r.user_id"),
    "users_outboxevent": logical_shard_sql("r.user_id"),
}


def _function(table: str, expression: str, rows: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION {table}_refuse_frozen_{rows}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('bulwark.mover', true) IS DISTINCT FROM 'on'
     AND EXISTS (SELECT 1 FROM users_frozenlogicalshard)
     AND EXISTS (SELECT 1 FROM {rows}_rows r JOIN users_frozenlogicalshard f
                   ON f.logical_shard = {expression}
                 LIMIT 1) THEN
    RAISE EXCEPTION 'logical shard frozen for a move; retry shortly' USING ERRCODE = 'BW001';
  END IF;
  RETURN NULL;
END $$;
"""


def forward_sql() -> str:
    parts = []
    for table, expression in TABLES.items():
        for rows in ("new", "old"):
            parts.append(_function(table, expression, rows))
        for event, rows in (("INSERT", "new"), ("UPDATE", "new"), ("DELETE", "old")):
            parts.append(f"""
DROP TRIGGER IF EXISTS {table}_fence_{event.lower()} ON {table};
CREATE TRIGGER {table}_fence_{event.lower()} AFTER {event} ON {table}
  REFERENCING {rows.upper()} TABLE AS {rows}_rows FOR EACH STATEMENT
  EXECUTE FUNCTION {table}_refuse_frozen_{rows}();
""")
    return "\n".join(parts)


def reverse_sql() -> str:
    parts = []
    for table in TABLES:
        for event in ("insert", "update", "delete"):
            parts.append(f"DROP TRIGGER IF EXISTS {table}_fence_{event} ON {table};")
        for rows in ("new", "old"):
            parts.append(f"DROP FUNCTION IF EXISTS {table}_refuse_frozen_{rows}();")
    return "\n".join(parts)
