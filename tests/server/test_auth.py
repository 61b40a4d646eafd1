"""Authentication, authorization, origin and XSRF checks, and base_url: the extension's
endpoints answer every kind of request exactly as jupyter_server's own kernel API does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from server_helpers import body, follow, http_status, ws_status
from tornado.httpclient import HTTPClientError

pytestmark = pytest.mark.timeout(120)

UNKNOWN = "00000000-0000-0000-0000-000000000000"
FOREIGN = "http://attacker.example"


async def login_cookie(jp_fetch: Any, host: str | None = None) -> str:
    """The login cookie jupyter_server sets on a token-authenticated request to ``host``
    (its name depends on the host the browser used)."""
    response = await jp_fetch("api", "kernels", headers={"Host": host} if host else None)
    cookies = [c.split(";")[0] for c in response.headers.get_list("Set-Cookie")]
    return "; ".join(c for c in cookies if c.startswith("username-"))


async def test_requests_are_treated_like_the_kernel_api(
    jp_fetch, jp_ws_fetch, kernels, jp_http_port
) -> None:
    kernel_id = await kernels.start()
    cookie = {
        "http": await login_cookie(jp_fetch),
        # jp_ws_fetch connects to localhost, jp_fetch to 127.0.0.1
        "ws": await login_cookie(jp_fetch, f"localhost:{jp_http_port}"),
    }
    assert all(cookie.values()), "a token-authenticated request sets a login cookie"
    no_token = {"Authorization": ""}
    variants: dict[str, Callable[[str], dict[str, Any]]] = {
        "token": lambda _: {},
        "no credentials": lambda _: {"headers": dict(no_token)},
        "wrong token": lambda _: {"headers": {"Authorization": "token nope"}},
        "cookie": lambda kind: {"headers": {**no_token, "Cookie": cookie[kind]}},
        "cookie, foreign origin": lambda kind: {
            "headers": {**no_token, "Cookie": cookie[kind], "Origin": FOREIGN}
        },
        "token, foreign origin": lambda _: {"headers": {"Origin": FOREIGN}},
    }
    ours_http = ("api", "nanny-io", "kernels", kernel_id, "log")
    theirs_http = ("api", "kernels", kernel_id)
    ours_ws = (*ours_http, "follow")
    theirs_ws = ("api", "kernels", kernel_id, "channels")
    seen = {}
    for name, make in variants.items():
        ours = await http_status(jp_fetch, *ours_http, **make("http"))
        assert ours == await http_status(jp_fetch, *theirs_http, **make("http")), name
        model = await http_status(jp_fetch, "api", "nanny-io", "kernels", kernel_id, **make("http"))
        assert model == ours, name
        ws = await ws_status(jp_ws_fetch, *ours_ws, **make("ws"))
        assert ws == await ws_status(jp_ws_fetch, *theirs_ws, **make("ws")), name
        seen[name] = (ours, ws)
    assert seen["token"] == (200, 101)
    assert seen["no credentials"] == (403, 403)
    assert seen["wrong token"] == (403, 403)
    assert seen["cookie"] == (200, 101)
    assert seen["cookie, foreign origin"] == (404, 403)  # APIHandler's origin check: 404

    # XSRF: a cookie-authenticated request that changes state needs the XSRF token. Our
    # endpoints change nothing and have no POST; they refuse it the same way.
    def post() -> dict[str, Any]:
        return {"method": "POST", "body": "{}", "headers": {**no_token, "Cookie": cookie["http"]}}

    assert await http_status(jp_fetch, *ours_http, **post()) == 403
    assert await http_status(jp_fetch, *theirs_http, **post()) == 403
    assert await http_status(jp_fetch, *ours_http, method="POST", body="{}") == 405
    # A token in the URL, as in the links jupyter_server prints.
    token = kernels.serverapp.identity_provider.token
    params = {"token": token}
    assert await http_status(jp_fetch, *ours_http, headers=no_token, params=params) == 200
    assert await ws_status(jp_ws_fetch, *ours_ws, headers=no_token, params=params) == 101


@pytest.mark.parametrize("jp_base_url", ["/", "/jupyter%20lab/"])
async def test_base_url(
    jp_base_url, jp_fetch, jp_ws_fetch, kernels, jp_http_port, http_server_client, jp_auth_header
) -> None:
    kernel_id = await kernels.start()
    model = body(await jp_fetch("api", "nanny-io", "kernels", kernel_id))
    assert model["kernel_id"] == kernel_id
    follower = await follow(jp_ws_fetch, kernel_id, last=1)
    await follower.until(lambda f: f.get("event") == "caught_up", "caught_up")
    follower.close()
    outside = f"/api/nanny-io/kernels/{kernel_id}"
    try:
        await http_server_client.fetch(outside, headers=jp_auth_header)
        reached = True
    except HTTPClientError as exc:
        reached = exc.code != 404
    assert reached == (jp_base_url == "/"), "outside base_url nothing answers"
