"""Celery tasks: thin wrappers that own their retry policy and call a service.

None of them uses Celery retries: a delivery's retries live in its row (next_attempt_at), so a lost,
duplicated or redelivered task changes nothing but timing. All are idempotent.
"""

from celery import shared_task

from . import deliver, dispatch, services


@shared_task(name="webhooks.dispatch", ignore_result=True)
def webhooks_dispatch():
    """Move outbox events into deliveries; queue a delivery run at once if any were created."""
    done = dispatch.webhook_outbox_dispatch()
    if any(done.values()):
        webhooks_deliver.delay()
    return done


@shared_task(name="webhooks.deliver", ignore_result=True)
def webhooks_deliver():
    return deliver.webhook_deliveries_deliver_due()


@shared_task(name="webhooks.prune", ignore_result=True)
def webhooks_prune():
    return services.webhook_prune()
