"""Identity: users, sessions, projects, roles and permissions, audit trail, secrets, TLS, SSO.

Public modules: ``users``, ``sessions``, ``projects``, ``rbac`` (the permission table),
``audit`` (``record``/``record_async``/``verify``; ``audit_head``, the signed head kept outside
the database; ``audit_signing``, their key), ``secrets`` (envelope encryption),
``quotas`` (project limits in the gateway), ``http`` (``current_user``, ``require``, the
/api views), ``tls``, ``ldap``, ``oidc``. Nothing is imported here so that low layers can use
``audit`` without pulling in aiohttp.
"""
