"""OpenID Connect sign-in: authorization code flow with PKCE, ID token checked, groups → role.

``/api/auth/oidc/login`` keeps the flow (state, nonce, PKCE verifier) in memory under a random
id that the browser holds in a short-lived cookie (SameSite=Lax: the IdP's redirect back is a
cross-site navigation), then redirects to the provider. ``/api/auth/oidc/callback`` checks the
state against that flow, redeems the code with the verifier, and verifies the ID token: its
signature against the provider's JWKS (RS256/ES256), issuer, audience, expiry and nonce.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import ssl
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from yarl import URL

from appliance.identity.ldap import role_for_groups
from appliance.identity.rbac import GLOBAL_ROLES
from appliance.identity.sessions import NewSession, SessionManager
from appliance.identity.users import USERNAME_RE, upsert_external_user
from appliance.kernel.errors import ApplianceError, BadRequest, ConfigError, Unauthorized
from appliance.settings import OidcSettings
from appliance.store.state import StateStore

FLOW_COOKIE = "fa_oidc_flow"
FLOW_TTL_S = 600.0
CLOCK_SKEW_S = 60.0
MAX_FLOWS = 10_000


class OidcError(Unauthorized):
    code = "oidc_failed"


class _Flow(msgspec.Struct):
    state: str
    nonce: str
    verifier: str
    created: float


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int(text: str) -> int:
    return int.from_bytes(_unb64url(text), "big")


def verify_id_token(token: str, jwks: dict[str, Any], *, issuer: str, client_id: str,
                    nonce: str, now: float | None = None) -> dict[str, Any]:
    """The claims of a signed ID token, or OidcError naming what is wrong."""
    try:
        head_b64, body_b64, sig_b64 = token.split(".")
        header = json.loads(_unb64url(head_b64))
        claims: dict[str, Any] = json.loads(_unb64url(body_b64))
        signature = _unb64url(sig_b64)
    except (ValueError, json.JSONDecodeError):
        raise OidcError("the ID token is not a JWS") from None
    alg = header.get("alg")
    if alg not in ("RS256", "ES256"):
        raise OidcError(f"ID token algorithm {alg!r} is not accepted")  # no 'none', no HS*
    keys = [k for k in jwks.get("keys", []) if k.get("kid") == header.get("kid")
            or (header.get("kid") is None and len(jwks.get("keys", [])) == 1)]
    if not keys:
        raise OidcError("the ID token's key is not in the provider's JWKS")
    jwk = keys[0]
    signed = f"{head_b64}.{body_b64}".encode()
    try:
        if alg == "RS256" and jwk.get("kty") == "RSA":
            rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"])).public_key().verify(
                signature, signed, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "ES256" and jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
            if len(signature) != 64:
                raise OidcError("bad ES256 signature length")
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                       int.from_bytes(signature[32:], "big"))
            ec.EllipticCurvePublicNumbers(_int(jwk["x"]), _int(jwk["y"]), ec.SECP256R1()) \
                .public_key().verify(der, signed, ec.ECDSA(hashes.SHA256()))
        else:
            raise OidcError("the JWKS key does not fit the token's algorithm")
    except (InvalidSignature, KeyError, ValueError):
        raise OidcError("the ID token's signature does not verify") from None
    now = time.time() if now is None else now
    if claims.get("iss") != issuer:
        raise OidcError("the ID token's issuer is wrong")
    aud = claims.get("aud")
    if not (aud == client_id or (isinstance(aud, list) and client_id in aud)):
        raise OidcError("the ID token is for another client")
    if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != client_id:
        raise OidcError("the ID token's authorized party is wrong")
    if not isinstance(claims.get("exp"), int | float) or claims["exp"] + CLOCK_SKEW_S < now:
        raise OidcError("the ID token has expired")
    if isinstance(claims.get("iat"), int | float) and claims["iat"] - CLOCK_SKEW_S > now:
        raise OidcError("the ID token was issued in the future")
    if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
        raise OidcError("the ID token's nonce does not match this sign-in")
    return claims


class OidcClient:
    """One relying party: the appliance as a client of the site's IdP (e.g. Keycloak)."""

    after_login_path = "/"

    def __init__(self, settings: OidcSettings, store: StateStore) -> None:
        if not (settings.issuer and settings.client_id and settings.redirect_uri):
            raise ConfigError("identity.oidc needs issuer, client_id and redirect_uri")
        for role in [*settings.role_map.values(), settings.default_role]:
            if role and role not in GLOBAL_ROLES:
                raise ConfigError(f"identity.oidc: unknown role {role!r}")
        self.settings = settings
        self.store = store
        self._flows: dict[str, _Flow] = {}
        self._discovery: dict[str, Any] | None = None
        self._jwks: dict[str, Any] | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if self.settings.ca_file:
            return ssl.create_default_context(cafile=self.settings.ca_file)
        return True

    async def _get_json(self, session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
        async with session.get(url, ssl=self._ssl()) as resp:
            if resp.status != 200:
                raise OidcError(f"{url} answered {resp.status}")
            data: dict[str, Any] = await resp.json(content_type=None)
            return data

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.settings.timeout_s)

    async def discovery(self) -> dict[str, Any]:
        if self._discovery is None:
            url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            async with aiohttp.ClientSession(timeout=self._timeout()) as session:
                found = await self._get_json(session, url)
            if found.get("issuer") != self.settings.issuer:
                raise OidcError("the provider's discovery document names another issuer")
            self._discovery = found
        return self._discovery

    async def jwks(self, *, refresh: bool = False) -> dict[str, Any]:
        if self._jwks is None or refresh:
            meta = await self.discovery()
            async with aiohttp.ClientSession(timeout=self._timeout()) as session:
                self._jwks = await self._get_json(session, meta["jwks_uri"])
        return self._jwks

    def _prune(self, now: float) -> None:
        for key in [k for k, f in self._flows.items() if f.created + FLOW_TTL_S < now]:
            del self._flows[key]
        if len(self._flows) > MAX_FLOWS:
            self._flows.clear()

    async def start(self, request: web.Request) -> web.StreamResponse:
        """Redirect the browser to the provider with state, nonce and a PKCE challenge."""
        meta = await self.discovery()
        now = time.time()
        self._prune(now)
        flow = _Flow(state=secrets.token_urlsafe(24), nonce=secrets.token_urlsafe(24),
                     verifier=secrets.token_urlsafe(48), created=now)
        flow_id = secrets.token_urlsafe(24)
        self._flows[flow_id] = flow
        challenge = _b64url(hashlib.sha256(flow.verifier.encode()).digest())
        params = {"response_type": "code", "client_id": self.settings.client_id,
                  "redirect_uri": self.settings.redirect_uri,
                  "scope": " ".join(self.settings.scopes), "state": flow.state,
                  "nonce": flow.nonce, "code_challenge": challenge,
                  "code_challenge_method": "S256"}
        if request.query.get("login_hint"):
            params["login_hint"] = request.query["login_hint"]
        response = web.HTTPFound(str(URL(meta["authorization_endpoint"]).update_query(params)))
        response.set_cookie(FLOW_COOKIE, flow_id, httponly=True, samesite="Lax",
                            secure=request.secure, path="/api/auth/oidc/",
                            max_age=int(FLOW_TTL_S))
        return response

    @staticmethod
    def clear_flow_cookie(response: web.StreamResponse) -> None:
        response.del_cookie(FLOW_COOKIE, path="/api/auth/oidc/")

    async def _redeem(self, code: str, verifier: str) -> dict[str, Any]:
        meta = await self.discovery()
        form = {"grant_type": "authorization_code", "code": code,
                "redirect_uri": self.settings.redirect_uri, "code_verifier": verifier,
                "client_id": self.settings.client_id}
        secret = os.environ.get(self.settings.client_secret_env, "") \
            if self.settings.client_secret_env else ""
        headers = {}
        if secret:  # client_secret_basic: both parts form-encoded first (RFC 6749 2.3.1)
            pair = f"{quote(self.settings.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        async with aiohttp.ClientSession(timeout=self._timeout()) as session, \
                session.post(meta["token_endpoint"], data=form, headers=headers,
                             ssl=self._ssl()) as resp:
            body: dict[str, Any] = await resp.json(content_type=None)
            if resp.status != 200 or "id_token" not in body:
                raise OidcError(f"the provider refused the code: {body.get('error', '?')}")
            return body

    async def finish(self, request: web.Request, sessions: SessionManager) -> NewSession:
        """Check state, redeem the code, verify the ID token, sign the user in."""
        address = request.remote or ""
        await sessions.throttle.check(address)
        flow = self._flows.pop(request.cookies.get(FLOW_COOKIE, ""), None)
        q = request.query
        try:
            if "error" in q:
                raise OidcError(f"the provider refused the sign-in: {q['error']}")
            if flow is None or flow.created + FLOW_TTL_S < time.time():
                raise OidcError("no sign-in in progress in this browser (or it expired)")
            if not hmac.compare_digest(q.get("state", ""), flow.state):
                raise OidcError("state does not match this sign-in")
            if q.get("iss") and q["iss"] != self.settings.issuer:
                raise OidcError("the answer comes from another issuer")
            if not q.get("code"):
                raise BadRequest("no authorization code")
            tokens = await self._redeem(q["code"], flow.verifier)
            try:
                claims = verify_id_token(tokens["id_token"], await self.jwks(),
                                         issuer=self.settings.issuer,
                                         client_id=self.settings.client_id, nonce=flow.nonce)
            except OidcError as exc:
                if "key is not in" not in exc.message:
                    raise
                claims = verify_id_token(tokens["id_token"], await self.jwks(refresh=True),
                                         issuer=self.settings.issuer,
                                         client_id=self.settings.client_id, nonce=flow.nonce)
        except ApplianceError as exc:
            await sessions.record_failure("oidc", address, f"oidc: {exc.message}")
            # the reason is about the protocol, not the account: safe to say
            raise OidcError(f"OIDC sign-in failed: {exc.message}") from None
        username = str(claims.get(self.settings.username_claim) or claims.get("sub") or "")
        if not USERNAME_RE.match(username):
            raise await sessions.record_failure(username or "oidc", address,
                                                "oidc: unusable user name claim")
        groups = claims.get(self.settings.groups_claim) or []
        if isinstance(groups, str):
            groups = [groups]
        role = role_for_groups([str(g).lstrip("/") for g in groups], self.settings.role_map,
                               self.settings.default_role)
        if role is None:
            raise await sessions.record_failure(username, address,
                                                "oidc: in no group that maps to a role")
        user = await upsert_external_user(self.store, username=username, source="oidc",
                                          role=role, display_name=str(claims.get("name", "")),
                                          email=str(claims.get("email", "")),
                                          source_address=address)
        return await sessions.open_session(user, source_address=address,
                                           user_agent=request.headers.get("User-Agent", ""),
                                           method="oidc")
