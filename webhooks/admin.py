"""Admin for webhook subscribers and deliveries (writes go through webhooks/services.py)."""

from urllib.parse import urlsplit

from django import forms
from django.contrib import admin, messages
from django.db.models import Count, Q

from resilience.breaker import get_breaker
from users.outbox import EVENTS

from . import egress, services
from .conf import webhook_settings
from .deliver import breaker_name
from .models import WebhookDelivery, WebhookSubscriber
from .transport import url_host


class WebhookSubscriberForm(forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https")
    events = forms.MultipleChoiceField(choices=[(e, e) for e in EVENTS], widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = WebhookSubscriber
        fields = ["name", "url", "events", "active"]

    def clean_url(self):
        """Refuse a URL whose host resolves to an address webhooks are not sent to (loopback, private,
        metadata...). A courtesy to staff: DNS can change later, so delivery checks again."""
        url = self.cleaned_data["url"]
        parts = urlsplit(url)
        try:
            egress.resolve(
                parts.hostname or "",
                parts.port or (443 if parts.scheme == "https" else 80),
                webhook_settings().private_networks,
            )
        except egress.DestinationRefused as exc:
            raise forms.ValidationError(f"Webhooks are not sent there: {exc}.") from exc
        except (OSError, ValueError, UnicodeError):
            pass  # does not resolve (yet): the check at delivery decides
        return url


class GoneFilter(admin.SimpleListFilter):
    title = "disabled by its receiver"
    parameter_name = "gone"

    def lookups(self, request, model_admin):
        return [("yes", "yes (410 Gone)"), ("no", "no")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(active=False, disabled_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(disabled_at__isnull=True)
        return queryset


@admin.register(WebhookSubscriber)
class WebhookSubscriberAdmin(admin.ModelAdmin):
    form = WebhookSubscriberForm
    list_display = [
        "__str__",
        "url",
        "events",
        "active",
        "disabled_reason",
        "disabled_at",
        "pending",
        "dead",
        "breaker",
        "created_at",
    ]
    list_filter = ["active", GoneFilter]
    search_fields = ["name", "url"]
    readonly_fields = ["secret", "previous_secret_expires_at", "disabled_reason", "disabled_at", "created_at"]
    actions = ["rotate_secret"]

    def save_model(self, request, obj, form, change):
        if change and "active" in form.changed_data and obj.active:
            # Staff turned it back on: the receiver's 410 no longer describes it.
            obj.disabled_reason, obj.disabled_at = "", None
        super().save_model(request, obj, form, change)

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(
                pending_count=Count("deliveries", filter=Q(deliveries__status=WebhookDelivery.Status.PENDING)),
                dead_count=Count("deliveries", filter=Q(deliveries__status=WebhookDelivery.Status.DEAD)),
            )
        )

    @admin.display(ordering="pending_count")
    def pending(self, obj):
        return obj.pending_count

    @admin.display(ordering="dead_count")
    def dead(self, obj):
        return obj.dead_count

    @admin.display(description="breaker (host)")
    def breaker(self, obj):
        return get_breaker(breaker_name(url_host(obj.url))).state  # local state while Redis is down

    @admin.action(description="Rotate the secret of the selected subscribers", permissions=["change"])
    def rotate_secret(self, request, queryset):
        for subscriber_id in queryset.values_list("id", flat=True):
            services.webhook_subscriber_rotate_secret(subscriber_id=subscriber_id)
        self.message_user(
            request,
            "New secrets are shown on each subscriber's page; the previous ones keep signing too until "
            "the time shown there, so receivers can switch without a gap.",
            messages.SUCCESS,
        )


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "subscriber",
        "event",
        "event_id",
        "status",
        "attempts",
        "next_attempt_at",
        "last_status_code",
        "short_error",
        "delivered_at",
    ]
    list_filter = ["status", "event", "subscriber"]
    search_fields = ["=event_id"]
    list_select_related = ["subscriber"]
    actions = ["retry_dead"]
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]

    def has_add_permission(self, request):
        return False  # deliveries come from the outbox only

    @admin.display(description="last error")
    def short_error(self, obj):
        return obj.last_error[:80]

    @admin.action(description="Retry the selected dead-lettered deliveries", permissions=["change"])
    def retry_dead(self, request, queryset):
        ids = list(queryset.values_list("id", flat=True))
        count = services.webhook_deliveries_retry(delivery_ids=ids)
        self.message_user(
            request,
            f"{count} dead-lettered deliveries queued again ({len(ids) - count} selected were not dead).",
            messages.SUCCESS,
        )
