"""Reading a web page the model names, without letting it reach what it should not (SSRF).

``fetch`` GETs a URL with a size limit (bytes) and a time limit (the whole fetch), following at most
``MAX_REDIRECTS`` redirects itself so that every hop is checked like the first URL:

- the scheme must be http or https;
- the host is resolved (``getaddrinfo``, in a worker thread) and refused when any address it
  resolves to is private, loopback, link-local (169.254.0.0/16, the cloud metadata address
  169.254.169.254, fe80::/10), multicast, reserved, unspecified, shared (100.64.0.0/10) or otherwise
  not global — IPv4 and IPv6, with IPv4 inside IPv6 (``::ffff:127.0.0.1``, 6to4, Teredo) judged as
  the IPv4 address it carries. Numeric spellings (``2130706433``, ``0x7f.1``) resolve to the
  address they mean and are judged by it;
- unless the host, or the address, is on the allow-list (``plugins.web.allow_private``: host names,
  addresses or CIDRs).

DNS rebinding: the connection goes to the very address that was checked, not to a name resolved
again. The request is sent to ``scheme://<checked IP>:<port>/path`` with the original ``Host``
header and, for https, the original name as SNI (``sni_hostname``, httpcore's request extension),
so TLS still verifies the certificate against the host name. Connections are not kept alive between
requests (a pooled connection to one address can not serve another host), and proxies from the
environment are not used (``trust_env=False``: a proxy would resolve the name itself).

``Accept-Encoding: identity`` asks for an uncompressed body; whatever comes is counted as decoded
bytes against ``max_bytes``.
"""
from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message

import anyio
import httpx

from features.plugins.errors import BlockedURL, FetchError

__all__ = [
    "MAX_REDIRECTS",
    "USER_AGENT",
    "AllowList",
    "IPAddress",
    "IPNetwork",
    "Page",
    "check",
    "fetch",
    "not_public",
    "resolve",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 5
USER_AGENT = "Mozilla/5.0 (compatible; Kith/0.1; +fetch_url)"
_REDIRECTS = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class AllowList:
    """Hosts and networks fetch may reach although they are not public (``plugins.web.allow_private``).
    ``hosts``: lower-case names matched exactly; ``networks``: addresses (as /32, /128) and CIDRs."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """From config entries: ``"127.0.0.1"``, ``"10.0.0.0/8"``, ``"[::1]"``, ``"wiki.lan"``."""
        hosts, networks = set(), []
        for entry in entries:
            e = entry.strip().lower().removeprefix("[").removesuffix("]")
            try:
                networks.append(ipaddress.ip_network(e, strict=False))
            except ValueError:
                hosts.add(e.rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)


def not_public(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address (``"loopback"``, ``"private"``, ``"link-local"`` …), or None
    when it is global unicast. IPv4 carried in IPv6 (mapped, 6to4, Teredo) is judged as that IPv4."""
    if isinstance(ip, ipaddress.IPv6Address):
        for inner in (ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None):
            if inner is not None and (reason := not_public(inner)):
                return f"{reason} (IPv4 in IPv6)"
        if ip.is_site_local:
            return "site-local"
    for reason, flag in (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
                         ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                         ("private", ip.is_private), ("reserved", ip.is_reserved)):
        if flag:
            return reason
    if not ip.is_global:
        return "not global"
    return None


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal: itself), in ``getaddrinfo``'s order.
    Raises ``FetchError`` when the name does not resolve."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise FetchError(f"cannot resolve {host!r}: {exc}") from None
    out: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]))
        if ip not in out:
            out.append(ip)
    if not out:
        raise FetchError(f"cannot resolve {host!r}: no address")
    return out


async def check(url: httpx.URL, allow: AllowList) -> list[IPAddress]:
    """The addresses to connect to for ``url``, all checked. Raises ``BlockedURL`` for a scheme other
    than http(s), a URL without a host, or a host any of whose addresses is not public (and not
    allowed); ``FetchError`` when the host does not resolve."""
    if url.scheme not in ("http", "https"):
        raise BlockedURL(f"only http and https URLs can be read, not {url.scheme + ':' if url.scheme else 'one without a scheme'}")
    host = url.raw_host.decode("ascii").lower()
    if not host:
        raise BlockedURL("the URL has no host")
    addresses = await resolve(host, url.port or (443 if url.scheme == "https" else 80))
    if allow.allows_host(host):
        return addresses
    for ip in addresses:
        reason = not_public(ip)
        if reason and not allow.allows_address(ip):
            shown = host if host == str(ip) else f"{host} ({ip})"
            raise BlockedURL(f"refused: {shown} is a {reason} address, not a public one")
    return addresses


@dataclass(frozen=True)
class Page:
    """A fetched page. ``url``: the final URL, after redirects; ``content_type``: the media type,
    lower case, without parameters (``"text/html"``; ``""`` when the server sent none);
    ``charset``: from the Content-Type header, or None; ``body``: at most ``max_bytes`` bytes."""

    url: str
    status: int
    content_type: str
    charset: str | None
    body: bytes


def _media_type(header: str) -> tuple[str, str | None]:
    msg = Message()
    msg["content-type"] = header
    charset = msg.get_param("charset")
    return (msg.get_content_type() if header else ""), (charset if isinstance(charset, str) else None)


async def fetch(url: str, *, max_bytes: int, timeout_s: float, allow: AllowList = AllowList(),
                max_redirects: int = MAX_REDIRECTS, verify: ssl.SSLContext | bool = True) -> Page:
    """GET ``url`` within ``timeout_s`` seconds (resolution, every redirect and the body together)
    and ``max_bytes`` bytes of body. ``verify``: how https certificates are checked (httpx's
    ``verify``: True = the certifi CAs, or an ``ssl.SSLContext`` trusting others), always against
    the URL's host name. Raises ``BlockedURL`` (the SSRF guard, any hop), ``FetchError``
    (unreachable, an HTTP status ≥ 400, too many redirects, too large, too slow, a TLS failure)."""
    try:
        current = httpx.URL(url.strip())
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise FetchError(f"not a URL: {exc}") from None
    try:
        with anyio.fail_after(timeout_s):
            async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False, verify=verify,
                                         limits=httpx.Limits(max_keepalive_connections=0)) as client:
                for _hop in range(max_redirects + 1):
                    addresses = await check(current, allow)
                    response = await _send(client, current, addresses)
                    try:
                        location = response.headers.get("location")
                        if response.status_code in _REDIRECTS and location:
                            try:
                                current = current.join(location)
                            except (httpx.InvalidURL, ValueError) as exc:
                                raise FetchError(f"a redirect to a bad URL: {exc}") from None
                            continue
                        return await _read(response, current, max_bytes)
                    finally:
                        await response.aclose()
                raise FetchError(f"more than {max_redirects} redirects")
    except TimeoutError:
        raise FetchError(f"no complete answer within {timeout_s:g} s") from None


async def _send(client: httpx.AsyncClient, url: httpx.URL, addresses: list[IPAddress]) -> httpx.Response:
    """GET ``url`` from the first of ``addresses`` that accepts a connection (streamed)."""
    host = url.raw_host.decode("ascii")
    headers = {"Host": url.netloc.decode("ascii"), "User-Agent": USER_AGENT, "Accept-Encoding": "identity",
               "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.5"}
    extensions = {"sni_hostname": host} if url.scheme == "https" and host not in {str(a) for a in addresses} else {}
    failure: Exception | None = None
    for ip in addresses:
        try:
            request = client.build_request("GET", url.copy_with(host=str(ip)), headers=headers, extensions=extensions)
            return await client.send(request, stream=True)
        except httpx.ConnectError as exc:
            failure = exc
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise FetchError(f"{url.host}: {type(exc).__name__}: {exc}") from None
    raise FetchError(f"cannot connect to {url.host}: {failure}")


async def _read(response: httpx.Response, url: httpx.URL, max_bytes: int) -> Page:
    if response.status_code >= 400:
        raise FetchError(f"HTTP {response.status_code} {response.reason_phrase} from {url}")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(f"the page is {int(declared)} bytes, more than the limit of {max_bytes}")
    body = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise FetchError(f"the page is larger than the limit of {max_bytes} bytes")
    except httpx.HTTPError as exc:
        raise FetchError(f"{url.host}: {type(exc).__name__}: {exc}") from None
    content_type, charset = _media_type(response.headers.get("content-type", ""))
    return Page(str(url), response.status_code, content_type, charset, bytes(body))
