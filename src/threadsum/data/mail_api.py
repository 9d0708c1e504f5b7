"""The JSON that mail services' APIs return, read into plain message records.

Two shapes, as their API references define them:

- Gmail API (``users.threads.get`` / ``users.messages.get``): a thread ``{id, historyId, messages:
  [Message]}``; a Message ``{id, threadId, labelIds, snippet, internalDate (epoch ms, a string),
  payload, raw}``. With ``format=full`` the ``payload`` is a MessagePart tree ``{partId, mimeType,
  filename, headers: [{name, value}], body: {attachmentId?, size, data (base64url)}, parts:
  [MessagePart]}``, whose ``body.data`` is the part's content with the transfer encoding already
  undone; with ``format=raw`` the whole RFC 822 message is ``raw`` (base64url). ``metadata`` and
  ``minimal`` carry no body.
- Microsoft Graph (``GET /me/messages``, ``/me/mailFolders/{id}/messages``): a page ``{"@odata.context",
  value: [message], "@odata.nextLink"?}`` or one message ``{id, conversationId, internetMessageId,
  subject, body: {contentType: "html" | "text", content}, from / sender: {emailAddress: {name,
  address}}, toRecipients, ccRecipients: [{emailAddress}], sentDateTime, receivedDateTime,
  internetMessageHeaders?: [{name, value}]}``.

Each message becomes an :class:`ApiMessage` (header fields, text parts or raw bytes, the service's
thread id); ``threadsum.data.readers`` turns it into an ``Email`` by the rules it has for any mail.
Strings cut while reading (``threadsum.data.stream``) keep their size on the part they belong to.
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from threadsum.data.stream import uncut

GMAIL = "gmail_json"
GRAPH = "graph_json"
# keys that only these shapes have, for telling a file's kind from its first bytes
_GMAIL_KEYS = re.compile(rb'"(?:threadId|historyId|internalDate|labelIds|sizeEstimate)"\s*:')
_GRAPH_KEYS = re.compile(rb'"(?:@odata\.context|@odata\.etag|conversationId|internetMessageId|toRecipients|'
                         rb'bodyPreview)"\s*:')


@dataclass
class ApiPart:
    """One text part of a message."""

    mime_type: str
    """``text/plain`` or ``text/html``."""
    content: Union[bytes, str]
    """Bytes in ``charset`` (Gmail) or text already decoded (Graph)."""
    charset: Optional[str] = None
    cut_from: Optional[int] = None
    """The size in bytes the content had in the file when it was cut while reading, else None."""


@dataclass
class ApiMessage:
    """One message of an API response, as the readers need it."""

    where: str
    """How messages name it: its place in the file and its service id."""
    conversation_id: str
    """The service's thread id, prefixed by the service (``gmail:``, ``graph:``); '' when absent."""
    headers: list[tuple[str, str]] = field(default_factory=list)
    """Header fields (name, value) as the service gives them or as built from Graph's fields."""
    parts: list[ApiPart] = field(default_factory=list)
    """Text parts in document order (attachments left out)."""
    raw: Optional[bytes] = None
    """The RFC 822 message (Gmail ``format=raw``)."""
    raw_cut_from: Optional[int] = None
    """Size in bytes of ``raw`` in the file when it was cut while reading."""
    date: Any = None
    """The service's own date (Gmail ``internalDate``, Graph ``receivedDateTime``): used when the
    message has no Date header."""
    problem: Optional[str] = None
    """Why the message has no content to read (``format=metadata`` or ``minimal``), else None."""


def sniff(head: bytes) -> Optional[str]:
    """``GMAIL`` or ``GRAPH`` when the first bytes of a JSON file hold keys only that shape has, else None."""
    if head.lstrip()[:1] not in (b"{", b"["):
        return None
    graph, gmail = _GRAPH_KEYS.search(head), _GMAIL_KEYS.search(head)
    if graph and (not gmail or graph.start() < gmail.start()):
        return GRAPH
    return GMAIL if gmail else None


def kind_of(obj: Any) -> Optional[str]:
    """``GMAIL`` or ``GRAPH`` for a parsed JSON value of that shape (a thread, message, page or a list
    of them), else None."""
    first = obj[0] if isinstance(obj, list) and obj else obj
    if not isinstance(first, dict):
        return None
    if isinstance(first.get("threads"), list) and "emails" not in first:  # {"threads": [Gmail thread, ...]}
        return kind_of(first["threads"])
    if "value" in first and isinstance(first["value"], list) or "@odata.context" in first:
        return GRAPH
    if {"conversationId", "internetMessageId", "toRecipients", "bodyPreview"} & set(first):
        return GRAPH
    if {"threadId", "historyId", "internalDate", "labelIds"} & set(first) or (
            isinstance(first.get("messages"), list) and "id" in first):
        return GMAIL
    return None


def decode_base64url(value: str) -> bytes:
    """Bytes of a base64url string (standard base64 accepted too, padding optional). A string cut
    while reading ends anywhere: it is read to its last whole 4-character group.

    Raises:
        ValueError: characters outside both base64 alphabets.
    """
    s = re.sub(r"\s+", "", value).rstrip("=").replace("-", "+").replace("_", "/")
    s = s[:len(s) - len(s) % 4] if len(s) % 4 == 1 else s
    try:
        return base64.b64decode(s + "=" * (-len(s) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64url: {exc}") from None


# ----------------------------------------------------------------------------------------- Gmail
def gmail_messages(obj: Any, where: str = "") -> tuple[list[ApiMessage], list[tuple[str, str]]]:
    """The messages of a Gmail API response: a thread, a message, ``{"threads": [...]}``, ``{"messages":
    [...]}`` or a list of any of them. Returns (messages, problems), a problem being (where, what is
    wrong) for a value that holds no message (a ``users.threads.list`` entry without ``messages``)."""
    out: list[ApiMessage] = []
    problems: list[tuple[str, str]] = []
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            m, p = gmail_messages(item, f"{where}[{i}]")
            out += m
            problems += p
        return out, problems
    if not isinstance(obj, dict):
        return [], [(where or "top level", f"a {type(obj).__name__}, not a Gmail thread or message object")]
    if isinstance(obj.get("threads"), list) and "messages" not in obj:
        return gmail_messages(obj["threads"], f"{where}.threads")
    if isinstance(obj.get("messages"), list):
        tid = str(obj.get("id") or "")
        for i, m in enumerate(obj["messages"]):
            at = f"{where}.messages[{i}]" if where else f"messages[{i}]"
            if isinstance(m, dict):
                out.append(_gmail_message(m, at, tid))
            else:
                problems.append((at, f"a {type(m).__name__}, not a message object"))
        return out, problems
    if "payload" in obj or "raw" in obj or "threadId" in obj:
        return [_gmail_message(obj, where or "message", "")], []
    what = (f"thread {obj['id']!r} has no 'messages' (a users.threads.list entry?)" if "id" in obj
            else "no 'messages', 'payload' or 'raw'")
    return [], [(where or "top level", f"{what}; save each thread with users.threads.get (format=full or raw)")]


def _gmail_message(m: dict, where: str, thread_id: str) -> ApiMessage:
    tid = str(m.get("threadId") or thread_id or "")
    msg = ApiMessage(where=f"{where} (id {str(m.get('id') or '?')[:40]})",
                     conversation_id=f"gmail:{tid}" if tid else "", date=m.get("internalDate"))
    raw = m.get("raw")
    if isinstance(raw, str):
        raw, msg.raw_cut_from = uncut(raw)
        msg.raw = decode_base64url(raw)
        return msg
    payload = m.get("payload")
    if not isinstance(payload, dict):
        msg.problem = ("no 'payload' or 'raw' (saved with format=minimal?); save the thread with "
                       "users.threads.get format=full or format=raw")
        return msg
    msg.headers = _header_list(payload.get("headers"))
    _gmail_parts(payload, msg.parts)
    if not msg.parts and not _has_body_data(payload):
        msg.problem = ("no body data (saved with format=metadata?); save the thread with users.threads.get "
                       "format=full or format=raw")
    return msg


def _has_body_data(part: dict) -> bool:
    body = part.get("body") if isinstance(part.get("body"), dict) else {}
    return bool(body.get("data")) or any(_has_body_data(p) for p in part.get("parts") or [] if isinstance(p, dict))


def _gmail_parts(part: dict, out: list[ApiPart]) -> None:
    """The text parts of a MessagePart tree, depth first (attachments and attachment ids left out)."""
    mime = str(part.get("mimeType") or "").lower()
    children = [p for p in part.get("parts") or [] if isinstance(p, dict)]
    if children:
        for p in children:
            _gmail_parts(p, out)
        return
    body = part.get("body") if isinstance(part.get("body"), dict) else {}
    data = body.get("data")
    if mime not in ("text/plain", "text/html") or part.get("filename") or not isinstance(data, str):
        return
    headers = {k.lower(): v for k, v in _header_list(part.get("headers"))}
    disposition = headers.get("content-disposition", "").lower()
    if disposition.startswith("attachment"):
        return
    data, cut_from = uncut(data)
    charset = _param(headers.get("content-type", ""), "charset")
    out.append(ApiPart(mime, decode_base64url(data), charset, cut_from))


def _header_list(headers: Any) -> list[tuple[str, str]]:
    out = []
    for h in headers or []:
        if isinstance(h, dict) and isinstance(h.get("name"), str) and h.get("value") is not None:
            out.append((h["name"], uncut(str(h["value"]))[0]))
    return out


def _param(value: str, name: str) -> Optional[str]:
    m = re.search(rf"(?:^|;)\s*{name}\s*=\s*\"?([^\";\s]+)", value, re.I)
    return m.group(1) if m else None


# ----------------------------------------------------------------------------------------- Graph
def graph_messages(obj: Any, where: str = "") -> tuple[list[ApiMessage], list[tuple[str, str]]]:
    """The messages of a Microsoft Graph response: ``{"value": [...]}`` pages, one message, or a list of
    either. Returns (messages, problems) as :func:`gmail_messages` does."""
    out: list[ApiMessage] = []
    problems: list[tuple[str, str]] = []
    if isinstance(obj, list):
        for i, item in enumerate(obj):
            m, p = graph_messages(item, f"{where}[{i}]")
            out += m
            problems += p
        return out, problems
    if not isinstance(obj, dict):
        return [], [(where or "top level", f"a {type(obj).__name__}, not a Graph message object")]
    if isinstance(obj.get("value"), list):
        return graph_messages(obj["value"], f"{where}.value" if where else "value")
    if not ({"body", "subject", "from", "sender", "conversationId", "internetMessageId"} & set(obj)):
        return [], [(where or "top level", "no message fields (body, subject, from, conversationId); save "
                     "messages with GET /me/messages")]
    return [_graph_message(obj, where or "message")], []


def _address(value: Any) -> str:
    """``{"emailAddress": {"name", "address"}}`` as a header address (the name quoted when needed)."""
    ea = value.get("emailAddress") if isinstance(value, dict) else None
    if not isinstance(ea, dict):
        return ""
    name = str(ea.get("name") or "").strip()
    addr = str(ea.get("address") or "").strip()
    if name and addr and name.lower() != addr.lower():
        if re.search(r'[(),.:;<>@\[\]"\\]', name):
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{name} <{addr}>"
    return addr or name


def _graph_message(m: dict, where: str) -> ApiMessage:
    cid = str(m.get("conversationId") or "")
    msg = ApiMessage(where=f"{where} (id {str(m.get('id') or '?')[:40]})",
                     conversation_id=f"graph:{cid}" if cid else "",
                     date=m.get("receivedDateTime") or m.get("createdDateTime"))
    h = msg.headers
    sender = _address(m.get("from")) or _address(m.get("sender"))
    if sender:
        h.append(("From", sender))
    for key, name in (("toRecipients", "To"), ("ccRecipients", "Cc")):
        addrs = [a for a in (_address(r) for r in m.get(key) or []) if a]
        if addrs:
            h.append((name, ", ".join(addrs)))
    if m.get("subject"):
        h.append(("Subject", uncut(str(m["subject"]))[0]))
    if m.get("sentDateTime"):
        h.append(("Date", str(m["sentDateTime"])))
    if m.get("internetMessageId"):
        h.append(("Message-ID", str(m["internetMessageId"])))
    for name, value in _header_list(m.get("internetMessageHeaders")):
        if name.lower() in ("in-reply-to", "references"):  # only these: the rest is in the fields above
            h.append((name, value))
    body = m.get("body") if isinstance(m.get("body"), dict) else {}
    content = body.get("content")
    if isinstance(content, str):
        content, cut_from = uncut(content)
        kind = "text/html" if str(body.get("contentType") or "").lower() == "html" else "text/plain"
        msg.parts.append(ApiPart(kind, content, None, cut_from))
    else:
        msg.problem = "no body.content (saved with $select leaving out body?); save messages with their body"
    return msg
