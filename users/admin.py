"""Admin for the sharded users.User: find, list per shard, view and edit.

The model lives on the shard databases, so the stock ModelAdmin views (which query `User.objects`
without a shard) are replaced: reads go through users/selectors.py (the per-shard list too), edits
through `services.user_update`, which keeps the cache and the email uniqueness claims right.
`get_queryset` returns nothing, so no stock code path can query the unsharded manager by accident.
"""

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from . import selectors, services
from .models import User
from .sharding.access import ShardUnavailable, group_for_user_id
from .sharding.ids import logical_shard_of_id

PER_PAGE = 50


class UserEditForm(forms.Form):
    display_name = forms.CharField(max_length=100, required=False)
    bio = forms.CharField(widget=forms.Textarea(attrs={"rows": 4, "cols": 60}), required=False)
    email = forms.EmailField(max_length=254)
    version = forms.IntegerField(widget=forms.HiddenInput)


@admin.register(User)
class ShardedUserAdmin(admin.ModelAdmin):
    """Custom changelist and change views for users that live on shards."""

    def get_queryset(self, request):
        return User.objects.none()  # never query the sharded table without choosing a shard

    def has_add_permission(self, request):
        return False  # users register through the API (services.user_create)

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        wrap = self.admin_site.admin_view
        return [
            path("", wrap(self.changelist_view), name=f"{prefix}_changelist"),
            path("<str:object_id>/change/", wrap(self.change_view), name=f"{prefix}_change"),
        ]

    def _context(self, request, title: str, **extra) -> dict:
        return {**self.admin_site.each_context(request), "title": title, "opts": self.opts, **extra}

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        query = request.GET.get("q", "").strip()
        group = request.GET.get("shard") or settings.SHARD_GROUPS[0]
        if group not in settings.SHARD_GROUPS:
            raise Http404("no such shard group")
        try:
            page = max(1, int(request.GET.get("page", "1")))
        except ValueError:
            page = 1
        results, error, rows, has_next = None, "", [], False
        try:
            if query:
                results = selectors.user_search(query=query)
            rows, has_next = selectors.user_page_on_shard(group=group, page=page, per_page=PER_PAGE)
        except ShardUnavailable as exc:
            error = f"unavailable: {exc}"
        return TemplateResponse(
            request,
            "bulwark/users_list.html",
            self._context(
                request,
                "Sharded users",
                query=query,
                results=results,
                shard=group,
                shards=settings.SHARD_GROUPS,
                rows=rows,
                page=page,
                has_next=has_next,
                error=error,
            ),
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        user_id = selectors.user_id_parse(object_id)
        if user_id is None:
            raise Http404("no such user")
        can_change = self.has_change_permission(request)
        if not can_change and not self.has_view_permission(request):
            raise PermissionDenied
        try:
            row = selectors.user_get_by_id(user_id=user_id)
        except ShardUnavailable as exc:
            messages.error(request, f"unavailable: {exc}")
            return redirect(reverse("admin:users_user_changelist"))
        if row is None:
            raise Http404("no such user")
        initial = {f: row[f] for f in ("display_name", "bio", "email", "version")}
        form = UserEditForm(request.POST or None, initial=initial)
        if request.method == "POST":
            if not can_change:
                raise PermissionDenied
            if form.is_valid():
                changed = [f for f in form.changed_data if f != "version"]
                changes = {f: form.cleaned_data[f] for f in changed}
                if not changes:
                    messages.info(request, "Nothing changed.")
                    return redirect(request.path)
                try:
                    row = services.user_update(user_id=user_id, changes=changes, if_match=form.cleaned_data["version"])
                except services.Conflict:
                    form.add_error("email", "This email is already taken by another user.")
                except services.VersionMismatch:
                    form.add_error(None, "Someone else changed this user meanwhile: reload the page and retry.")
                except services.UserNotFound:
                    raise Http404("no such user") from None
                except ShardUnavailable as exc:
                    form.add_error(None, f"Not saved: unavailable: {exc}")
                else:
                    LogEntry.objects.create(
                        user_id=request.user.pk,
                        content_type=ContentType.objects.get_for_model(User),
                        object_id=str(user_id),
                        object_repr=f"{row['username']} ({user_id})"[:200],
                        action_flag=CHANGE,
                        change_message=f"Changed {', '.join(changed)}.",
                    )
                    messages.success(request, f"User {row['username']}: saved ({', '.join(changed)}).")
                    return redirect(request.path)
        return TemplateResponse(
            request,
            "bulwark/users_change.html",
            self._context(
                request,
                f"User {row['username']}",
                row=row,
                form=form,
                can_change=can_change,
                group=group_for_user_id(user_id),
                logical_shard=logical_shard_of_id(user_id),
            ),
        )
