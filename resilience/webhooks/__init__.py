"""Outbound webhooks for user events, fed by the transactional outbox on the shards.

    outbox (shard, same transaction as the change)
      -> dispatch.py: one WebhookDelivery per (subscriber, event) in the default database, unique on
         (subscriber, event_id), then the outbox rows are marked dispatched
      -> deliver.py: due deliveries are claimed with a lease (SKIP LOCKED), POSTed with an HMAC-SHA256
         signature through one circuit breaker per destination host, and retried with exponential
         backoff and jitter; after WEBHOOK_MAX_ATTEMPTS they are dead-lettered (admin: "retry")

Delivery is at least once to the receiver, which dedups by the X-Bulwark-Event-Id header; on our side
each (subscriber, event) has exactly one Delivery row, whatever task is redelivered or dies when.
Settings: conf.py. Receivers verify with signing.verify_signature.
"""
