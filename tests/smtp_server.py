"""A real SMTP server (aiosmtpd) on a free loopback port, and an Airflow SMTP Connection pointing at it."""

from __future__ import annotations

import email
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller


class Inbox:
    """aiosmtpd handler keeping every message it receives."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []
        self.port = 0  # set by running_inbox()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd calls it by this name
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_inbox() -> Iterator[Inbox]:
    """An SMTP server on a free loopback port (``inbox.port``) keeping what it receives in the inbox."""
    inbox = Inbox()
    inbox.port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    with running_inbox() as inbox:
        yield inbox, inbox.port


def smtp_connection(port: int, to: Any = "oncall@example.com, lead@example.com") -> str:
    extra = {"to": to, "from_email": "airflow@example.com", "disable_tls": True, "disable_ssl": True}
    extra |= {"retry_limit": 0, "timeout": 5}
    return json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port, "extra": extra})
