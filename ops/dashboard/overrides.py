"""The runtime-overrides page: change a rate-limit policy (its rate, its concurrency limit, its mode:
enforce / shadow / off) or a breaker's thresholds for a while, with a reason, without a deploy.

Staff read the page; creating or clearing an override needs audit.CHANGE_OVERRIDE (superusers have
it). Values are validated by the limit's owner (resilience/ratelimit/policies.py `with_override`,
resilience/breaker/options.py `with_override`): nonsense is a form error (400), never a 500. Each
change is written to the admin log. The override is stored in the state Redis and reaches every
process within RESILIENCE_OVERRIDES_REFRESH_SECONDS (resilience/overrides.py); when the state Redis
is unavailable nothing is stored and the page says so (503).
"""

from datetime import UTC, datetime

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import HttpResponseBadRequest, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse

from resilience import overrides
from resilience.breaker import all_breakers
from resilience.breaker import options as breaker_options
from resilience.ratelimit import policies
from resilience.shadow import MODES

from . import audit, panels

POLICY_FIELDS = ("rate", "limit", "mode")
BREAKER_FIELDS = (
    "failure_rate_threshold",
    "minimum_calls",
    "window_size",
    "consecutive_failures",
    "open_seconds",
    "half_open_max_calls",
    "success_threshold",
)
KINDS = {policies.OVERRIDE_KIND: POLICY_FIELDS, breaker_options.OVERRIDE_KIND: BREAKER_FIELDS}


class OverrideForm(forms.Form):
    kind = forms.ChoiceField(
        choices=[(policies.OVERRIDE_KIND, "rate-limit policy"), (breaker_options.OVERRIDE_KIND, "circuit breaker")]
    )
    name = forms.CharField(max_length=200, help_text='a policy ("api.read") or a breaker ("webhook:example.com")')
    rate = forms.CharField(required=False, max_length=40, help_text='rate policies, e.g. "100/m"')
    limit = forms.IntegerField(
        required=False, min_value=1, max_value=1_000_000, help_text="concurrency policies: requests in flight per key"
    )
    mode = forms.ChoiceField(
        required=False, choices=[("", "unchanged"), *((m, m) for m in MODES)], help_text="shadow: count, refuse nothing"
    )
    failure_rate_threshold = forms.FloatField(required=False, min_value=0.1, max_value=100, label="failure rate %")
    minimum_calls = forms.IntegerField(required=False, min_value=1, max_value=100_000)
    window_size = forms.IntegerField(required=False, min_value=1, max_value=100_000)
    consecutive_failures = forms.IntegerField(required=False, min_value=0, max_value=100_000)
    open_seconds = forms.FloatField(required=False, min_value=0.1, max_value=86_400)
    half_open_max_calls = forms.IntegerField(required=False, min_value=1, max_value=10_000)
    success_threshold = forms.IntegerField(required=False, min_value=1, max_value=10_000)
    reason = forms.CharField(max_length=200, help_text="Recorded with the override and in the admin log.")
    minutes = forms.IntegerField(
        min_value=1, max_value=overrides.MAX_SECONDS // 60, help_text="the override expires on its own after this"
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["minutes"].initial = settings.RESILIENCE_OVERRIDE_DEFAULT_SECONDS // 60

    def clean(self):
        data = super().clean()
        kind, name = data.get("kind"), (data.get("name") or "").strip()
        if not kind or not name:
            return data
        given = {field for field in (*POLICY_FIELDS, *BREAKER_FIELDS) if data.get(field) not in (None, "")}
        misplaced = sorted(given - set(KINDS[kind]))
        if misplaced:
            raise forms.ValidationError(f"{', '.join(misplaced)} do not apply to a {kind} override")
        values = {field: data[field] for field in KINDS[kind] if field in given}
        if not values:
            raise forms.ValidationError("Change at least one value.")
        try:
            if kind == policies.OVERRIDE_KIND:
                specs = policies.configured_specs()
                if name not in specs:
                    raise forms.ValidationError(f"There is no rate-limit policy {name!r}.")
                policies.with_override(name, specs[name], values)
            else:
                if name not in all_breakers():
                    raise forms.ValidationError(f"There is no circuit breaker {name!r}.")
                breaker_options.with_override(name, values)
        except ImproperlyConfigured as exc:
            raise forms.ValidationError(str(exc)) from None
        data["name"], data["values"] = name, values
        return data


class ClearForm(forms.Form):
    target = forms.CharField(max_length=300)


def _rows() -> list[dict]:
    now = datetime.now(tz=UTC).timestamp()
    return [
        {
            "target": target,
            "values": ", ".join(f"{k}={v}" for k, v in sorted(o.values.items())),
            "reason": o.reason,
            "user": o.user,
            "created_at": datetime.fromtimestamp(o.created_at, tz=UTC),
            "expires_at": datetime.fromtimestamp(o.expires_at, tz=UTC),
            "minutes_left": max(0, round((o.expires_at - now) / 60)),
        }
        for target, o in sorted(overrides.override_list().items())
    ]


def _page(request, site, form, *, status: int = 200):
    return TemplateResponse(
        request,
        "bulwark/overrides.html",
        {
            **site.each_context(request),
            "title": "Runtime overrides",
            "active": panels.safe(_rows),
            "form": form,
            "can_change": request.user.has_perm(audit.CHANGE_OVERRIDE),
            "refresh_seconds": settings.RESILIENCE_OVERRIDES_REFRESH_SECONDS,
            "recent": panels.safe(lambda: audit.recent(audit.OVERRIDE)),
        },
        status=status,
    )


def overrides_page(request, *, site):
    """GET: the overrides in force and a form. POST: store one (400 with the form's errors when invalid)."""
    if request.method == "GET":
        return _page(request, site, OverrideForm())
    if request.method != "POST":
        return HttpResponseNotAllowed(["GET", "POST"])
    if not request.user.has_perm(audit.CHANGE_OVERRIDE):
        raise PermissionDenied(f"{audit.CHANGE_OVERRIDE} is required")
    form = OverrideForm(request.POST)
    if not form.is_valid():
        return _page(request, site, form, status=400)
    data = form.cleaned_data
    target = overrides.target(data["kind"], data["name"])
    try:
        override = overrides.override_set(
            target=target,
            values=data["values"],
            reason=data["reason"],
            user=request.user.get_username(),
            seconds=data["minutes"] * 60,
        )
    except Exception as exc:  # state Redis down: say so, never pretend it worked
        form.add_error(None, f"Not stored: unavailable: {panels.describe(exc)}")
        return _page(request, site, form, status=503)
    overrides.forget()  # this process applies it at once; the others within the refresh interval
    values = ", ".join(f"{k}={v}" for k, v in sorted(override.values.items()))
    audit.log_override(
        user=request.user, target=target, message=f"Override {values} for {data['minutes']} min ({data['reason']})"
    )
    messages.success(request, f"Override of {target} stored: {values}, for {data['minutes']} min.")
    return redirect(reverse(f"{site.name}:bulwark_overrides"))


def override_clear(request, *, site):
    """POST: remove one override now (the setting applies again)."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    if not request.user.has_perm(audit.CHANGE_OVERRIDE):
        raise PermissionDenied(f"{audit.CHANGE_OVERRIDE} is required")
    form = ClearForm(request.POST)
    if not form.is_valid():
        return HttpResponseBadRequest("target is required")
    target = form.cleaned_data["target"]
    back = reverse(f"{site.name}:bulwark_overrides")
    try:
        removed = overrides.override_clear(target=target)
    except Exception as exc:  # state Redis down
        messages.error(request, f"Not cleared: unavailable: {panels.describe(exc)}")
        return redirect(back)
    overrides.forget()
    if removed:
        audit.log_override(user=request.user, target=target, message="Cleared the override")
        messages.success(request, f"Override of {target} cleared: the settings apply again.")
    else:
        messages.warning(request, f"{target} had no override in force.")
    return redirect(back)
