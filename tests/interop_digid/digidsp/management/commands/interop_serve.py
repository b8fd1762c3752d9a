"""`manage.py interop_serve`: set the project up as a DigiD relying party of a gateway, then
serve it on a free loopback port.

The configuration is what an operator enters in the library's admin (django-solo's
DigidConfiguration singleton and a simple_certmanager key pair), here from the command line:
the gateway's IdP metadata URL (the library fetches and parses it on save), the SP's key pair,
RSA-SHA256 signatures and SHA-256 digests (the gateway refuses SHA-1, the library's default).
Prints one JSON line `{"base_url": ...}` when it accepts connections.
"""

from __future__ import annotations

import json
import socketserver
import sys
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from digid_eherkenning.choices import ConfigTypes
from digid_eherkenning.models import ConfigCertificate, DigidConfiguration
from django.core.files import File
from django.core.handlers.wsgi import WSGIHandler
from django.core.management import call_command
from django.core.management.base import BaseCommand
from onelogin.saml2.constants import OneLogin_Saml2_Constants as C
from simple_certmanager.constants import CertificateTypes
from simple_certmanager.models import Certificate


class ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write("digidsp: " + (format % args) + "\n")


def configure(base_url: str, idp_metadata_url: str, cert: Path, key: Path) -> None:
    certificate = Certificate(label="interop SP key pair", type=CertificateTypes.key_pair)
    with cert.open("rb") as cert_file, key.open("rb") as key_file:
        certificate.public_certificate.save("sp.crt", File(cert_file), save=False)
        certificate.private_key.save("sp.key", File(key_file), save=False)
    certificate.save()
    ConfigCertificate.objects.create(config_type=ConfigTypes.digid, certificate=certificate)
    config = DigidConfiguration.get_solo()
    config.base_url = base_url
    config.entity_id = base_url + "/digid"
    config.service_name = "Interop test"
    config.service_description = "A DigiD relying party of the gateway's tests"
    config.signature_algorithm = C.RSA_SHA256
    config.digest_algorithm = C.SHA256
    config.want_assertions_signed = True
    config.metadata_file_source = idp_metadata_url  # fetched and parsed by save()
    config.save()


class Command(BaseCommand):
    help = "Configure the DigiD relying party and serve it on a free loopback port."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--idp-metadata-url", required=True)
        parser.add_argument("--cert", required=True)
        parser.add_argument("--key", required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", verbosity=0, interactive=False)
        server = make_server("127.0.0.1", 0, WSGIHandler(), server_class=ThreadingServer,
                             handler_class=QuietHandler)
        base_url = f"http://127.0.0.1:{server.server_port}"
        configure(base_url, options["idp_metadata_url"], Path(options["cert"]),
                  Path(options["key"]))
        sys.stdout.write(json.dumps({"base_url": base_url}) + "\n")
        sys.stdout.flush()
        server.serve_forever()
