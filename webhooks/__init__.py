"""Outbound webhooks for user events, fed by the transactional outbox on the shards.

    outbox (shard, same transaction as the change)
      -> dispatch.py: one WebhookDelivery per (subscriber, event) in the default database, unique on
         (subscriber, event_id), then the outbox rows are marked dispatched
      -> deliver.py: due deliveries are claimed with a lease (SKIP LOCKED), signed to the Standard
         Webhooks scheme (signing.py), POSTed through one circuit breaker per destination host to an
         address egress.py allows, within an overall deadline (transport.py), and retried with
         exponential backoff and jitter; after WEBHOOK_MAX_ATTEMPTS they are dead-lettered (admin:
         "retry"); a 410 Gone disables the subscriber

Delivery is at least once to the receiver, which dedups by the webhook-id header; on our side
each (subscriber, event) has exactly one Delivery row, whatever task is redelivered or dies when.
Settings: conf.py. Receivers verify with signing.verify (docs/webhooks.md).
"""
