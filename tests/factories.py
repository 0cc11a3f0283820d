"""Test data through the real services (factory_boy): a sharded user can only be made by
`services.user_create` (it picks the shard, takes the uniqueness claims, fills the cache), so the
factories call the services instead of saving models."""

import factory

from users import services
from webhooks.models import WebhookSubscriber

PASSWORD = "a-long-pass-2026"


class UserFactory(factory.Factory):
    """A product user, created on its shard; builds the row dict `services.user_create` returns."""

    class Meta:
        model = dict

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda user: f"{user.username}@example.com")
    password = PASSWORD
    display_name = ""

    @classmethod
    def _create(cls, model_class, **fields):
        return services.user_create(**fields)


class TokenFactory(factory.Factory):
    """An API token of a new user (or of `username`/`password` given), issued by the login service."""

    class Meta:
        model = str

    username = factory.LazyFunction(lambda: UserFactory()["username"])
    password = PASSWORD

    @classmethod
    def _create(cls, model_class, **fields):
        token, _user_id = services.token_create(**fields)
        return token


class SubscriberFactory(factory.django.DjangoModelFactory):
    """A webhook subscriber of every event (give `url`, usually a tests.webhooks.receiver.Receiver's)."""

    class Meta:
        model = WebhookSubscriber

    name = factory.Sequence(lambda n: f"subscriber{n}")
    url = "http://127.0.0.1:9/hook"
    events = factory.LazyFunction(lambda: ["user.created", "user.updated", "user.deleted"])
