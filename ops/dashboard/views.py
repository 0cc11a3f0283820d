"""Admin views of the dashboards. Every view is wrapped by `AdminSite.admin_view` (staff only, see
urls.py); actions are POSTs with CSRF behind a confirmation page and are written to the admin log.

Being staff lets a user read the pages. Each action also needs its own permission (audit.FORCE_BREAKER,
RESET_BREAKER, RESET_RATELIMIT; superusers have them all): without it the page shows no button for it,
and its confirmation page and POST answer 403.
"""

import json
import time
from datetime import UTC, datetime

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder
from django.http import HttpResponseBadRequest, HttpResponseNotFound, JsonResponse
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.http import urlencode

from resilience import overrides
from resilience.breaker import all_breakers, get_breaker
from resilience.ratelimit import all_policies, denied_counts, peek, reset_key, top_denied
from resilience.ratelimit import limiter as ratelimit_limiter
from resilience.ratelimit.http import keys_for
from resilience.ratelimit.policies import OVERRIDE_KIND

from . import audit, history, panels

POLL_SECONDS = 2
DENIED_MINUTES = 15
# action -> (label, meaning, permission required)
BREAKER_ACTIONS = {
    "force_open": ("Force open", "rejects every call until it is force-closed or reset", audit.FORCE_BREAKER),
    "force_close": (
        "Force close",
        "admits every call, counting nothing, until it is force-opened or reset",
        audit.FORCE_BREAKER,
    ),
    "reset": ("Reset", "returns to CLOSED with an empty window and no last error", audit.RESET_BREAKER),
}


def _when(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=UTC)


def _context(site, request, title: str, **extra) -> dict:
    return {**site.each_context(request), "title": title, **extra}


def _require(request, permission: str) -> None:
    """Raise PermissionDenied (403) unless the user holds `permission`; staff alone is not enough."""
    if not request.user.has_perm(permission):
        raise PermissionDenied(f"{permission} is required")


def _recent(model: str) -> dict:
    """The last dashboard actions on `model` (audit.BREAKER, audit.RATELIMIT_KEY), as panels.safe does."""
    return panels.safe(lambda: audit.recent(model))


# --- overview ---
def _overview_data() -> dict:
    collected = panels.collect()
    history.record(history.sample_from(collected))
    return {"generated_at": time.time(), "panels": collected, "history": history.read()}


def _panels_html(data: dict, request) -> str:
    return render_to_string(
        "bulwark/overview_panels.html",
        {"data": data, "panels": data["panels"], "series": history.SERIES},
        request=request,
    )


def overview(request, *, site):
    data = _overview_data()
    return TemplateResponse(
        request,
        "bulwark/overview.html",
        _context(
            site,
            request,
            "System overview",
            panels_html=_panels_html(data, request),
            history=data["history"],
            poll_ms=POLL_SECONDS * 1000,
            generated_at=_when(data["generated_at"]),
        ),
    )


def overview_json(request, *, site):
    """The overview's data as JSON (and the rendered panels, which the page swaps in every poll)."""
    data = _overview_data()
    body = {**data, "html": _panels_html(data, request)}
    return JsonResponse(
        body, encoder=DjangoJSONEncoder, json_dumps_params={"allow_nan": False}, headers={"Cache-Control": "no-store"}
    )


# --- circuit breakers ---
def _breaker_rows() -> dict:
    result = panels.safe(panels.breakers)
    if result["ok"]:
        for row in result["data"]:
            for field in ("opened_at", "next_probe_at", "changed_at", "last_error_at"):
                row[f"{field}_dt"] = _when(row[field])
            for transition in row["transitions"]:
                transition["at_dt"] = _when(transition["at"] / 1000)
    return result


def breakers(request, *, site):
    actions = {action: spec for action, spec in BREAKER_ACTIONS.items() if request.user.has_perm(spec[2])}
    return TemplateResponse(
        request,
        "bulwark/breakers.html",
        _context(
            site,
            request,
            "Circuit breakers",
            breakers=_breaker_rows(),
            actions=actions,
            recent=_recent(audit.BREAKER),
        ),
    )


class BreakerActionForm(forms.Form):
    name = forms.CharField(max_length=200, widget=forms.HiddenInput)
    action = forms.ChoiceField(choices=[(a, spec[0]) for a, spec in BREAKER_ACTIONS.items()], widget=forms.HiddenInput)
    reason = forms.CharField(
        max_length=200, required=False, help_text="Recorded with the transition and in the admin log."
    )


def breaker_action(request, *, site):
    """GET: a confirmation page for force_open / force_close / reset of one breaker. POST: do it."""
    form = BreakerActionForm(request.POST if request.method == "POST" else request.GET)
    if not form.is_valid() or not form.cleaned_data["name"]:
        return HttpResponseBadRequest("name and action (force_open, force_close, reset) are required")
    name, action = form.cleaned_data["name"], form.cleaned_data["action"]
    label, meaning, permission = BREAKER_ACTIONS[action]
    _require(request, permission)  # the confirmation page too: it exists only to lead to the POST
    if name not in all_breakers():
        # A typo must not "succeed": forcing a name no code guards would create a phantom breaker and
        # leave the real one as it was, while the operator believes it changed.
        return HttpResponseNotFound(f"There is no circuit breaker {name!r}; the Circuit breakers page lists them.")
    if request.method == "POST":
        reason = form.cleaned_data["reason"] or f"{label.lower()} by {request.user.get_username()} in the admin"
        breaker = get_breaker(name)
        transition = getattr(breaker, action)(reason)
        audit.log_breaker(
            user=request.user,
            name=name,
            message=f"{label}: {transition.from_state} -> {transition.to_state} ({reason})",
        )
        if transition.degraded:
            messages.warning(
                request,
                f"Circuit breaker {name}: {transition.to_state}, but only in this process: "
                "the state Redis is unavailable, so other processes did not see it.",
            )
        else:
            messages.success(request, f"Circuit breaker {name}: {transition.from_state} -> {transition.to_state}.")
        return redirect(reverse(f"{site.name}:bulwark_breakers"))
    snapshot = panels.safe(lambda: get_breaker(name).snapshot())
    return TemplateResponse(
        request,
        "bulwark/confirm.html",
        _context(
            site,
            request,
            f"{label} circuit breaker {name}?",
            form=form,
            meaning=meaning,
            label=label,
            current=f"current state: {snapshot['data'].state}"
            if snapshot["ok"]
            else f"unavailable: {snapshot['error']}",
            back_url=reverse(f"{site.name}:bulwark_breakers"),
            back_label="Circuit breakers",
        ),
    )


# --- rate limits ---
class LookupForm(forms.Form):
    ip = forms.GenericIPAddressField(required=False, label="IP address")
    user_id = forms.IntegerField(required=False, min_value=1, label="user id")
    username = forms.CharField(required=False, max_length=150, help_text="with the IP, for ip+username policies")
    key = forms.CharField(
        required=False,
        max_length=400,
        label="raw key",
        help_text='as stored, e.g. "ip:1.2.3.4", "user:123", "ip:1.2.3.4|username:alice"',
    )


def _usage(policy_name: str, key: str) -> dict:
    decision = peek(policy_name, key)
    used = None if decision.remaining is None else decision.limit - decision.remaining
    return {
        "policy": policy_name,
        "key": key,
        "limit": decision.limit,
        "remaining": decision.remaining,
        "used": used,
        "reset": decision.reset,
        "allowed": decision.allowed,
        "degraded": decision.degraded,
        "reset_url": _reset_url(policy_name, key),
    }


def _reset_url(policy_name: str, key: str) -> str:
    return reverse("admin:bulwark_ratelimit_reset") + "?" + urlencode({"policy": policy_name, "key": key})


def _denied_series(minutes: int) -> dict[str, list[int]]:
    """policy -> 429s per minute over the last `minutes` minutes, oldest first. Raises for Redis trouble."""
    now = int(time.time() // 60)
    span = list(range(now - minutes + 1, now + 1))
    series: dict[str, list[int]] = {name: [0] * minutes for name in all_policies()}
    for i, counts in enumerate(ratelimit_limiter.denied_per_minute(span)):
        for policy, denials in counts.items():
            series.setdefault(policy, [0] * minutes)[i] = denials
    return series


def _rate(policy) -> str:
    if policy.algorithm == "concurrency":
        return f"{policy.limit} in flight (a slot expires after {policy.period} s)"
    return f"{policy.limit} per {policy.period} s"


def ratelimits(request, *, site):
    policies = all_policies()
    counts = panels.safe(lambda: denied_counts(minutes=5))
    shadow_counts = panels.safe(lambda: denied_counts(minutes=5, shadow=True))
    series = panels.safe(lambda: _denied_series(DENIED_MINUTES))
    overridden = panels.safe(overrides.override_list)
    rows = []
    for name, policy in policies.items():
        target = overrides.target(OVERRIDE_KIND, name)
        rows.append(
            {
                "name": name,
                "rate": _rate(policy),
                "key_kind": policy.key_kind,
                "algorithm": policy.algorithm,
                "fail_mode": policy.fail_mode,
                "mode": policy.mode,
                "overridden": overridden["ok"] and target in overridden["data"],
                "denied_5m": counts["data"].get(name, 0) if counts["ok"] else None,
                "shadow_denied_5m": shadow_counts["data"].get(name, 0) if shadow_counts["ok"] else None,
                "series": json.dumps(series["data"].get(name, [])) if series["ok"] else "[]",
            }
        )
    top = panels.safe(lambda: [_usage(p, k) | {"denials": n} for p, k, n in top_denied(minutes=5, count=20)])
    form = LookupForm(request.GET or None)
    lookup = None
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        wanted = []
        for name in policies:
            wanted += [
                (name, k) for k in keys_for(name, ip=data["ip"], user_id=data["user_id"], username=data["username"])
            ]
            if data["key"]:
                wanted.append((name, data["key"].strip()))
        lookup = panels.safe(lambda: [_usage(p, k) for p, k in wanted])
    return TemplateResponse(
        request,
        "bulwark/ratelimits.html",
        _context(
            site,
            request,
            "Rate limits",
            policies=rows,
            counts=counts,
            series_ok=series["ok"],
            series_error=series.get("error"),
            top=top,
            form=form,
            lookup=lookup,
            denied_minutes=DENIED_MINUTES,
            can_reset=request.user.has_perm(audit.RESET_RATELIMIT),
            recent=_recent(audit.RATELIMIT_KEY),
        ),
    )


class ResetKeyForm(forms.Form):
    policy = forms.ChoiceField(choices=(), widget=forms.HiddenInput)
    key = forms.CharField(max_length=400, widget=forms.HiddenInput)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["policy"].choices = [(name, name) for name in all_policies()]


def ratelimit_reset(request, *, site):
    """GET: a confirmation page to forget one key's counters under one policy. POST: do it."""
    form = ResetKeyForm(request.POST if request.method == "POST" else request.GET)
    _require(request, audit.RESET_RATELIMIT)
    if not form.is_valid():
        return HttpResponseBadRequest("policy (a known policy) and key are required")
    policy, key = form.cleaned_data["policy"], form.cleaned_data["key"]
    back = reverse(f"{site.name}:bulwark_ratelimits") + "?" + urlencode({"key": key})
    if request.method == "POST":
        try:
            existed = reset_key(policy, key)
        except Exception as exc:  # state Redis down: say so, never pretend it worked
            messages.error(request, f"Not reset: unavailable: {panels.describe(exc)}")
            return redirect(back)
        audit.log_ratelimit_key(
            user=request.user,
            policy=policy,
            key=key,
            message=f"Reset rate-limit key ({'had counters' if existed else 'had no counters'})",
        )
        messages.success(request, f"Counters of {key} under {policy} reset.")
        return redirect(back)
    usage = panels.safe(lambda: _usage(policy, key))
    current = (
        f"current: {usage['data']['used']} of {usage['data']['limit']} used"
        if usage["ok"]
        else f"unavailable: {usage['error']}"
    )
    return TemplateResponse(
        request,
        "bulwark/confirm.html",
        _context(
            site,
            request,
            f"Reset rate-limit key {key} ({policy})?",
            form=form,
            label="Reset",
            meaning="forgets its counters: the next request starts from a full quota",
            current=current,
            back_url=back,
            back_label="Rate limits",
        ),
    )
