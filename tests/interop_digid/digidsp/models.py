"""A user with a BSN, as django-digid-eherkenning's DigiD backend needs (`digid_objects`)."""

from __future__ import annotations

from typing import Any

from digid_eherkenning.managers import BaseDigidManager
from django.contrib.auth.models import AbstractUser, UserManager
from django.db import models


class DigidManager(BaseDigidManager):
    def get_by_bsn(self, bsn: str) -> Any:
        return self.get_queryset().get(bsn=bsn)

    def digid_create(self, bsn: str, **kwargs: Any) -> Any:
        return self.create(username=f"user-{bsn}", bsn=bsn)


class User(AbstractUser):
    bsn = models.CharField(max_length=9, blank=True, default="")

    objects = UserManager()
    digid_objects = DigidManager()
