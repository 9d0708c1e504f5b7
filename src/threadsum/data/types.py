"""The thread and email records every stage passes around (readers -> clean -> render -> model)."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional


@dataclass
class Email:
    """One email of a thread as the readers produce it (addresses and names are free text)."""
    sender: str
    """Display name and/or address of the author."""
    recipients: list[str] = field(default_factory=list)
    """To recipients, one entry per person."""
    body: str = ""
    date: Optional[datetime] = None
    subject: str = ""
    cc: list[str] = field(default_factory=list)
    message_id: str = ""
    in_reply_to: str = ""
    references: list[str] = field(default_factory=list)
    conversation_id: str = ""
    """The mail service's own thread id, prefixed by the service (``gmail:<threadId>``,
    ``graph:<conversationId>``); '' for mail read from files."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``from``, ``to``, ``cc``, ``date`` as ``YYYY-MM-DD HH:MM:SS[...]`` or None,
        ``subject``, ``body``); the message ids are not included.
        """
        return {
            "from": self.sender,
            "to": list(self.recipients),
            "cc": list(self.cc),
            "date": self.date.isoformat(sep=" ") if self.date else None,
            "subject": self.subject,
            "body": self.body,
        }


@dataclass
class Thread:
    """An email thread: its id, subject, emails in reading order and reference summary (None if absent)."""
    thread_id: str
    subject: str = ""
    emails: list[Email] = field(default_factory=list)
    summary: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: ``thread_id``, ``subject``, ``emails`` (``Email.to_dict``) and ``summary``."""
        return {
            "thread_id": self.thread_id,
            "subject": self.subject,
            "emails": [e.to_dict() for e in self.emails],
            "summary": self.summary,
        }
