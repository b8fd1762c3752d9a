"""URLs of the DigiD relying-party test project (see views)."""

from __future__ import annotations

from django.urls import include, path

from digidsp import views

urlpatterns = [
    path("", views.whoami, name="whoami"),
    # Before the library's own digid/ URLs, so that /digid/login/ honours ?loa=.
    path("digid/login/", views.LoginView.as_view(), name="login"),
    path("digid/", include("digid_eherkenning.digid_urls")),
    path("metadata/", include("digid_eherkenning.metadata_urls")),
    path("post/login/", views.PostLoginView.as_view(), name="post-login"),
    path("post/acs/", views.post_acs, name="post-acs"),
    path("post/metadata", views.post_metadata, name="post-metadata"),
]
