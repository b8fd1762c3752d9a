"""Views of the DigiD relying-party test project.

- `/`: who is logged in (the BSN the library took from the gateway's NameID), and for the
  POST binding the AuthnContextClassRef of the validated assertion.
- `/digid/login/?loa=basis|midden`: the library's DigiDLoginView (an HTTP-POST AuthnRequest,
  signed RSA-SHA256, RequestedAuthnContext minimum) at the level asked for; its ACS
  (`/digid/acs/`) takes the artifact and resolves it over SOAP, as DigiD relying parties do.
- `/post/login/` and `/post/acs/`: the same library client with an HTTP-POST
  AssertionConsumerService and encrypted assertions (a second SP entity,
  `<entity_id>/post`). The library's DigiD ACS view only takes artifacts; its client's
  `handle_post_response` validates a POSTed Response (signature, Destination, Recipient,
  Audience, InResponseTo from its request cache, time window).
"""

from __future__ import annotations

from typing import Any

from digid_eherkenning.backends import DigiDBackend
from digid_eherkenning.choices import DigiDAssuranceLevels
from digid_eherkenning.models import DigidConfiguration
from digid_eherkenning.saml2.digid import DigiDClient
from digid_eherkenning.views.digid import DigiDLoginView
from django.contrib import auth
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import escape
from django.views.decorators.csrf import csrf_exempt
from onelogin.saml2.constants import OneLogin_Saml2_Constants
from onelogin.saml2.errors import OneLogin_Saml2_Error, OneLogin_Saml2_ValidationError

LEVELS = {"basis": DigiDAssuranceLevels.base, "midden": DigiDAssuranceLevels.middle}


def whoami(request: HttpRequest) -> HttpResponse:
    user = request.user
    if not user.is_authenticated:
        return HttpResponse("<p>anonymous</p>")
    context = request.session.get("authn_context", "")
    return HttpResponse(
        f'<p>BSN: <span id="bsn">{escape(getattr(user, "bsn", ""))}</span></p>'
        f'<p>context: <span id="context">{escape(context)}</span></p>'
    )


def _level(request: HttpRequest) -> str:
    return LEVELS.get(request.GET.get("loa", ""), DigiDAssuranceLevels.middle)


class LoginView(DigiDLoginView):
    """The library's view; the level comes from `?loa=` (a whitelist, as its docs advise)."""

    def get_level_of_assurance(self) -> Any:
        return _level(self.request)


class DigiDPostClient(DigiDClient):
    """The library's DigiD client with an HTTP-POST ACS under its own entity ID."""

    @property
    def conf(self) -> dict[str, Any]:
        if not hasattr(self, "_conf"):
            conf = DigidConfiguration.get_solo().as_dict()
            conf["entity_id"] = conf["entity_id"] + "/post"
            conf["acs_path"] = reverse("post-acs")
            # This entity also asks for encrypted assertions (its metadata then carries an
            # encryption key, and the gateway encrypts for it).
            conf["want_assertions_encrypted"] = True
            self._conf = conf
        return self._conf

    def create_config_dict(self, conf: dict[str, Any]) -> dict[str, Any]:
        config = super().create_config_dict(conf)
        config["sp"]["assertionConsumerService"]["binding"] = (
            OneLogin_Saml2_Constants.BINDING_HTTP_POST
        )
        return config


class PostLoginView(DigiDLoginView):
    def get_level_of_assurance(self) -> Any:
        return _level(self.request)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        from digid_eherkenning.forms import SAML2Form

        client = DigiDPostClient(loa=self.get_level_of_assurance())
        location, parameters = client.create_authn_request(self.request)
        return {
            "url": location,
            "form": SAML2Form(initial={"SAMLRequest": parameters["SAMLRequest"],
                                       "RelayState": self.get_relay_state()}),
        }


def post_metadata(request: HttpRequest) -> HttpResponse:
    client = DigiDPostClient()
    client.saml2_setting_kwargs = {"sp_validation_only": True}
    return HttpResponse(client.create_metadata(), content_type="text/xml")


@csrf_exempt
def post_acs(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponse("POST only", status=405)
    client = DigiDPostClient()
    try:
        response = client.handle_post_response(request)
        name_id = response.get_nameid()
    except (OneLogin_Saml2_ValidationError, OneLogin_Saml2_Error) as exc:
        return HttpResponse(f"<p>refused: {escape(str(exc))}</p>", status=403)
    sector, _, bsn = name_id.partition(":")
    if sector != "s00000000" or not bsn:
        return HttpResponse("<p>refused: no BSN</p>", status=403)
    backend = DigiDBackend()
    user = backend.get_or_create_user_from_bsn(request, bsn)
    auth.login(request, user, backend="digid_eherkenning.backends.DigiDBackend")
    request.session["authn_context"] = " ".join(response.get_authn_contexts())
    return HttpResponseRedirect("/")
