"""Upstream URLs as they appear in logs: no userinfo, no query."""

from __future__ import annotations

from gateway.logs import redact_url


def test_redact_url_drops_credentials_and_query_and_keeps_ipv6_brackets() -> None:
    assert redact_url("https://user:pw@origin:8443/s?token=x") == "https://origin:8443/s?[redacted]"
    assert redact_url("http://[::1]:8080/x?a=1") == "http://[::1]:8080/x?[redacted]"
    assert redact_url("http://origin/plain") == "http://origin/plain"
