"""Secrets never echoed: credentials inside URIs (and secret-looking query parameters) are masked in
every error message and log line rainmerge prints or records."""

from __future__ import annotations

import re

# scheme://user:password@host -> scheme://user:***@host (also a bare token: scheme://token@host)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s:/@]*)(?::(?P<pw>[^\s/@]*))?@")
_QUERY = re.compile(r"(?P<key>[?&](?:token|access_token|password|passwd|secret|api[_-]?key|sig)=)[^&\s#]+", re.I)


def _userinfo(m: re.Match[str]) -> str:
    if m["pw"] is None:  # no password: the user part may itself be a token (https://TOKEN@host)
        return f"{m['head']}***@" if m["user"] else m[0]
    return f"{m['head']}{m['user']}:***@"


def redact(text: object) -> str:
    """`text` with URI credentials and secret query values replaced by ***."""
    return _QUERY.sub(r"\g<key>***", _USERINFO.sub(_userinfo, str(text)))
