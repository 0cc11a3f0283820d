from django.urls import path, re_path

from project.api_routing import by_method
from resilience.errors import json_404

from . import apis, fastpath

urlpatterns = [
    path("users/", by_method(apis.UserRegisterApi, apis.UserListApi), name="users"),
    path(
        "users/me/",
        fastpath.fast_me(by_method(apis.UserMeApi, apis.UserMeUpdateApi, apis.UserMeDeleteApi)),
        name="users-me",
    ),
    path("users/<str:user_id>/", fastpath.fast_get(apis.UserDetailApi.as_view()), name="user-detail"),
    path("users/<str:user_id>/views/", apis.UserViewsApi.as_view(), name="user-views"),
    path("auth/token/", apis.TokenApi.as_view(), name="auth-token"),
    path("auth/tokens/", apis.TokenListApi.as_view(), name="auth-tokens"),
    path("auth/tokens/<str:token_id>/", apis.TokenDetailApi.as_view(), name="auth-token-detail"),
    re_path(r"^.*$", json_404),  # API clients get JSON, even for unknown paths and with DEBUG on
]
