"""A loopback fake of Discord (REST API + gateway) for end-to-end tests of the real discord.py client.

The fixtures point the unmodified discord.py at an aiohttp server on 127.0.0.1 by patching
`discord.http.Route.BASE` and `DiscordWebSocket.DEFAULT_GATEWAY`; production code is untouched.
The fake plays one guild with one text channel, records every REST call, and lets a test act as a
user (slash commands, message context menus, button clicks) and inject faults (429, 5xx, dropped
gateway, expired interaction tokens). It takes one gateway session per shard, from one process or
several, and sends each event where Discord would: one with a guild_id to shard (guild_id >> 22) %
shard_count, one without (DMs) to shard 0; a guild's own GUILD_* events pass their shard to
`dispatch`. A test:

    async def test_ping(fake_discord, discord_bot):
        interaction = await fake_discord.invoke_slash("ping", {"text": "hi"})
        reply = await interaction.wait_final()
        assert interaction.callback_type == DEFERRED_CHANNEL_MESSAGE
        assert reply.content == "pong: hi"

The fixtures are function-scoped (a fresh fake and bot per test, ~0.1 s) and run on the event
loop that pyproject's asyncio_default_fixture_loop_scope names; tests must run on the same loop
(asyncio_default_test_loop_scope, or a matching `pytest.mark.asyncio(loop_scope=...)`).
Anything the fake does not know (an unknown route, a malformed body, an unknown callback type) is
answered like Discord would (404/400 with a JSON error) and listed in `fake.problems`, which the
fixture asserts empty at teardown, so a test that causes one fails.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import discord
import pytest
import pytest_asyncio
import yarl
from aiohttp import WSMsgType, web

API_PREFIX = "/api/v10"
TOKEN = "fake-bot-token"
APP_ID = 1_111_111_111_111_111_111  # a bot's user id equals its application id
GUILD_ID = 2_222_222_222_222_222_222
CHANNEL_ID = 3_333_333_333_333_333_333
USER_ID = 4_444_444_444_444_444_444  # the default invoker; also the guild owner
OTHER_USER_ID = 5_555_555_555_555_555_555  # author of messages targeted by context menus

# Interaction callback types (the `type` of POST /interactions/{id}/{token}/callback).
CHANNEL_MESSAGE = 4
DEFERRED_CHANNEL_MESSAGE = 5
DEFERRED_UPDATE_MESSAGE = 6
UPDATE_MESSAGE = 7
MODAL = 9

EPHEMERAL = 64  # message flag
LOADING = 128  # message flag of a deferred ("thinking") reply
ALL_PERMISSIONS = str(discord.Permissions.all().value)
DISCORD_EPOCH_MS = 1_420_070_400_000

log = logging.getLogger(__name__)
RouteFilter = str | Callable[["RequestRecord"], bool] | None


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def team_json(team_id: int, members: list[tuple[int, str, int]]) -> dict[str, Any]:
    """A team as Discord describes it; members are (user id, role, membership state) with role
    admin | developer | read_only and state 1 (invited) or 2 (accepted). The first is the owner."""
    return {
        "id": str(team_id),
        "name": "the team",
        "icon": None,
        "owner_user_id": str(members[0][0]),
        "members": [
            {"team_id": str(team_id), "user": _user_json(uid), "role": role, "membership_state": state, "permissions": ["*"]}
            for uid, role, state in members
        ],
    }


def _user_json(user_id: int, *, bot: bool = False) -> dict[str, Any]:
    name = "automodel-bot" if bot else f"user{str(user_id)[:4]}"
    return {
        "id": str(user_id),
        "username": name,
        "global_name": name,
        "discriminator": "0",
        "avatar": None,
        "bot": bot,
        "public_flags": 0,
    }


def _member_json(user: dict[str, Any], *, permissions: bool = False) -> dict[str, Any]:
    member = {
        "user": user,
        "roles": [],
        "nick": None,
        "avatar": None,
        "joined_at": _now_iso(),
        "premium_since": None,
        "deaf": False,
        "mute": False,
        "flags": 0,
        "pending": False,
        "communication_disabled_until": None,
    }
    if permissions:  # members inside INTERACTION_CREATE carry their resolved permissions
        member["permissions"] = ALL_PERMISSIONS
    return member


def _walk_components(components: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for component in components:
        yield component
        yield from _walk_components(component.get("components", []))


def has_cancel_button(components: list[dict[str, Any]] | None) -> bool:
    """Waiting and streaming replies carry a Cancel button; a final reply at most its Code button."""
    ids = [c["custom_id"] for c in _walk_components(components or []) if "custom_id" in c]
    return any(not custom_id.startswith("code:") for custom_id in ids)


class ApiError(Exception):
    """Answer the current request with Discord's JSON error shape."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status, self.code, self.message = status, code, message


@dataclass
class FileRecord:
    name: str
    data: bytes
    content_type: str | None = None
    id: int = 0  # attachment id, set when attached to a message


@dataclass
class RequestRecord:
    """One REST call as the fake saw it (path without the /api/v10 prefix)."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    files: list[FileRecord]
    status: int = 0  # 0 while being handled
    response: Any = None
    injected: bool = False  # answered by fail_next(), not by the fake's logic
    at: float = field(default_factory=time.monotonic)  # when the fake received it (time.monotonic())

    @property
    def route(self) -> str:
        return f"{self.method} {self.path}"

    def matches(self, route_filter: RouteFilter) -> bool:
        if route_filter is None:
            return True
        if callable(route_filter):
            return route_filter(self)
        return re.search(route_filter, self.route) is not None

    def __str__(self) -> str:
        return f"{self.route} -> {self.status}"


@dataclass
class FakeMessage:
    """A message as the fake stores it; `edits` lists every payload applied after creation."""

    id: int
    channel_id: int
    author: dict[str, Any]
    type: int = 0
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    files: list[FileRecord] = field(default_factory=list)
    flags: int = 0
    allowed_mentions: dict[str, Any] | None = None
    webhook_id: int | None = None
    edits: list[dict[str, Any]] = field(default_factory=list)
    deleted: bool = False

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in _walk_components(self.components) if "custom_id" in c]

    def apply(self, payload: dict[str, Any], files: list[FileRecord], next_id: Callable[[], int]) -> None:
        """Apply a create or edit payload the way Discord does (absent keys keep their value)."""
        if "content" in payload:
            self.content = payload["content"] or ""
        for key in ("embeds", "components"):
            if key in payload:
                setattr(self, key, payload[key] or [])
        if payload.get("allowed_mentions") is not None:
            self.allowed_mentions = payload["allowed_mentions"]
        if payload.get("flags") is not None:
            # Ephemerality is fixed at creation; edits may only change the other flags.
            self.flags = (self.flags & (EPHEMERAL | LOADING)) | (payload["flags"] & ~(EPHEMERAL | LOADING))
        if "attachments" in payload:
            # Existing attachments survive only if listed; new uploads are listed by index (0, 1, ...).
            keep = {int(a["id"]) for a in payload["attachments"] or []}
            self.files = [f for f in self.files if f.id in keep]
        for upload in files:
            self.files.append(FileRecord(upload.name, upload.data, upload.content_type, id=next_id()))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "type": self.type,
            "author": self.author,
            "content": self.content,
            "embeds": self.embeds,
            "components": self.components,
            "attachments": [
                {
                    "id": str(f.id),
                    "filename": f.name,
                    "size": len(f.data),
                    "url": f"https://cdn.invalid/attachments/{f.id}/{f.name}",
                    "proxy_url": f"https://media.invalid/attachments/{f.id}/{f.name}",
                    "content_type": f.content_type,
                }
                for f in self.files
            ],
            "flags": self.flags,
            "mentions": [],
            "mention_roles": [],
            "mention_everyone": False,
            "pinned": False,
            "tts": False,
            "timestamp": _now_iso(),
            "edited_timestamp": _now_iso() if self.edits else None,
        }
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
            data["application_id"] = str(APP_ID)
        return data


class FakeInteraction:
    """One interaction the fake sent, and everything the bot did with its token.

    `message` is the original response: a new message for types 4 and 5, or the clicked message
    for a component interaction answered with 6 or 7. After a deferred (5) response the first
    followup fills the loading message, as on Discord, so it shows up in `message`, not `followups`.
    """

    def __init__(self, fake: FakeDiscord, payload: dict[str, Any], target: FakeMessage | None) -> None:
        self.fake = fake
        self.payload = payload
        self.id = int(payload["id"])
        self.token: str = payload["token"]
        self.target = target  # the message a component belongs to
        self.sent_at = time.monotonic()  # when the fake sent INTERACTION_CREATE (for ack latency)
        self.expired = False
        self.callback: RequestRecord | None = None  # the latest callback attempt
        self.callback_type: int | None = None  # set once a callback succeeded
        self.message: FakeMessage | None = None
        self.followups: list[FakeMessage] = []
        self.modal: dict[str, Any] | None = None
        self.original_edits = 0  # successful PATCHes of @original through this token
        self.shard: int | None = None  # the shard whose gateway session INTERACTION_CREATE went to

    def expire(self) -> None:
        """From now on the callback answers 404/10062 and webhook routes 401/50027."""
        self.expired = True

    @property
    def requests(self) -> list[RequestRecord]:
        return [r for r in self.fake.requests if self.token in r.path]

    def _callback_rejected(self) -> bool:
        """The callback failed for good: discord.py retries 429s and (for webhook routes) 5xx."""
        status = self.callback.status if self.callback is not None else 0
        return self.callback_type is None and 400 <= status < 500 and status != 429

    def _settled(self) -> bool:
        if self._callback_rejected():
            raise AssertionError(
                f"the interaction callback was rejected: {self.callback} {self.callback.response}"
            )
        if self.callback_type is None:
            return False
        if self.callback_type in (DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE):
            # A deferral is only a promise: wait for the edit or followup that keeps it.
            return (
                self.original_edits > 0 or bool(self.followups) or bool(self.message and self.message.deleted)
            )
        return True

    def describe(self) -> str:
        lines = [f"interaction {self.payload['data'].get('name') or self.payload['data'].get('custom_id')!r}"]
        lines += [f"  {r} {r.response if r.status >= 400 else ''}" for r in self.requests]
        lines += [f"  bot logged: {e}" for e in self.fake.logged_errors]
        return "\n".join(lines)

    async def wait_callback(self, timeout: float = 5.0) -> RequestRecord:
        """The callback request once it succeeded or failed for good (e.g. 404/10062 when expired)."""

        def answered() -> bool:
            return self.callback_type is not None or self._callback_rejected()

        await self.fake.wait_for(answered, timeout, lambda: f"a callback for\n{self.describe()}")
        assert self.callback is not None
        return self.callback

    async def wait_final(
        self, timeout: float = 5.0, *, until: Callable[[FakeMessage], bool] | None = None
    ) -> FakeMessage:
        """The reply once the interaction is answered for good: a message response (4/7), or a
        deferral (5/6) plus its first edit or followup. Pass `until` for replies edited in steps."""

        def done() -> bool:
            if not self._settled():
                return False
            return until is None or self.message is None or until(self.message)

        await self.fake.wait_for(done, timeout, lambda: f"the final reply of\n{self.describe()}")
        if self.message is None:
            raise AssertionError(f"the bot answered with callback type {self.callback_type}, not a message")
        return self.message


@dataclass
class Fault:
    """A pending fail_next(): answers the next `remaining` matching calls with `status`."""

    remaining: int
    status: int
    route_filter: RouteFilter
    retry_after: float
    code: int
    hits: list[RequestRecord] = field(default_factory=list)

    def response(self) -> web.Response:
        if self.status == 429:
            # discord.py only retries a 429 that looks like Discord's: a Via header (otherwise it
            # assumes a Cloudflare ban) and a JSON body with retry_after.
            headers = {
                "Via": "1.1 google",
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset-After": str(self.retry_after),
                "X-RateLimit-Bucket": "fake-bucket",
                "X-RateLimit-Scope": "user",
                "Retry-After": str(max(1, round(self.retry_after))),
            }
            body = {
                "message": "You are being rate limited.",
                "retry_after": self.retry_after,
                "global": False,
            }
            return _json_response(429, body, headers)
        return _json_response(self.status, {"message": f"{self.status}: injected failure", "code": self.code})


def _json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    if status == 204:
        return web.Response(status=204, headers=headers)
    # body= (not text=): text= makes aiohttp add "; charset=utf-8", and discord.py only parses JSON
    # when the Content-Type is exactly "application/json".
    return web.Response(
        status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers
    )


def route(method: str, pattern: str, *, auth: bool = True) -> Callable:
    """Mark a FakeDiscord method as the handler of METHOD /pattern (named groups become kwargs)."""

    def mark(handler: Callable) -> Callable:
        handler.route = (method, re.compile(f"^{pattern}$"), auth)
        return handler

    return mark


@dataclass
class GatewaySession:
    """One shard's identified gateway session (FakeDiscord.sessions holds them by shard): its live
    connection (None while dropped), and the dispatches sent on it, numbered, for RESUME to replay."""

    id: str
    ws: web.WebSocketResponse | None
    seq: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    resumes: int = 0


class FakeDiscord:
    """The fake Discord server. Start with `await fake.start()`; the fixture does it for you."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.requests: list[RequestRecord] = []
        self.problems: list[str] = []  # unknown routes and requests the fake could not understand
        self.logged_errors: list[str] = []  # ERROR records of the "discord" loggers, for diagnostics
        self.faults: list[Fault] = []
        self.messages: dict[int, FakeMessage] = {}
        self.interactions: dict[str, FakeInteraction] = {}  # by token
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self.dm_channels: dict[int, dict[str, Any]] = {}  # by recipient id
        self.gateway_frames: list[dict[str, Any]] = []  # every frame the client sent
        self.identify_count = 0
        self.resume_count = 0
        self.replayed_count = 0  # dispatches re-sent on RESUME
        self.port = 0
        self.bot_user = _user_json(APP_ID, bot=True)
        # A team-owned application when set: the "team" object of GET /oauth2/applications/@me
        # (see team_json); None: owned by USER_ID.
        self.team: dict[str, Any] | None = None
        self.users = {uid: _user_json(uid) for uid in (USER_ID, OTHER_USER_ID)} | {APP_ID: self.bot_user}
        self.channel = {
            "id": str(CHANNEL_ID),
            "type": 0,
            "guild_id": str(GUILD_ID),
            "name": "general",
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
        }
        self._ids = itertools.count(((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) + 1)
        self._command_ids: dict[tuple[int | None, int, str], int] = {}
        self._changed = asyncio.Condition()
        # Gateway sessions, one per shard (0 for a client that does not shard). Each logs its
        # dispatches with their sequence numbers so RESUME can replay them.
        self.sessions: dict[int, GatewaySession] = {}
        self.shard_count = 1  # as the latest IDENTIFY said
        self._sockets: set[web.WebSocketResponse] = set()
        self._send_lock = asyncio.Lock()
        self._routes = [
            getattr(self, name) for name in dir(type(self)) if hasattr(getattr(type(self), name), "route")
        ]
        self._runner: web.AppRunner | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._rest)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # port 0: the OS picked a free one

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}{API_PREFIX}"

    @property
    def gateway_url(self) -> yarl.URL:
        return yarl.URL(f"ws://127.0.0.1:{self.port}/gateway")

    def next_id(self) -> int:
        return next(self._ids)

    async def user_posts(self, content: str, *, user_id: int = USER_ID, mentions: tuple[int, ...] = ()) -> FakeMessage:
        """A user's message in the guild channel (MESSAGE_CREATE), mentioning `mentions`."""
        message = FakeMessage(self.next_id(), CHANNEL_ID, self.users.get(user_id, _user_json(user_id)), content=content)
        self.messages[message.id] = message
        data = message.to_json() | {"guild_id": str(GUILD_ID), "mentions": [self.users.get(u, _user_json(u)) for u in mentions]}
        data["member"] = {"roles": [], "joined_at": _now_iso(), "deaf": False, "mute": False, "flags": 0}
        await self.dispatch("MESSAGE_CREATE", data)
        return message

    # -- waiting and inspecting -------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 5.0,
        what: str | Callable[[], str] = "a condition",
    ) -> None:
        """Wait until predicate() holds; it is re-checked after every request and gateway event.
        `what` names the awaited thing in the timeout error (a callable is rendered at timeout)."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
            except asyncio.TimeoutError:
                what = what() if callable(what) else what
                raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None

    def find(self, route_filter: RouteFilter = None) -> list[RequestRecord]:
        """Recorded requests matching a regex on "METHOD /path" (or a predicate), oldest first."""
        return [r for r in self.requests if r.matches(route_filter)]

    async def wait_for_request(self, route_filter: RouteFilter, timeout: float = 5.0) -> RequestRecord:
        """The first answered request matching route_filter (recorded before the call included)."""
        await self.wait_for(
            lambda: any(r.status for r in self.find(route_filter)),
            timeout,
            f"a request matching {route_filter!r}",
        )
        return next(r for r in self.find(route_filter) if r.status)

    def channel_messages(self, channel_id: int = CHANNEL_ID) -> list[FakeMessage]:
        return [m for m in self.messages.values() if m.channel_id == channel_id and not m.deleted]

    # -- fault injection --------------------------------------------------------------------------

    def fail_next(
        self,
        n: int = 1,
        status: int = 429,
        *,
        retry_after: float = 0.05,
        route_filter: RouteFilter = None,
        code: int = 0,
    ) -> Fault:
        """Answer the next n REST calls matching route_filter with `status` instead of handling them.

        429s carry what discord.py needs to wait `retry_after` and retry. Mind discord.py's retry
        policy for 5xx: the bot client retries only 500/502/504/524 (after 1 s, 3 s, ...) and raises
        DiscordServerError for others at once; the webhook adapter (interaction edits, followups,
        callbacks) retries every 5xx the same way.
        """
        fault = Fault(n, status, route_filter, retry_after, code)
        self.faults.append(fault)
        return fault

    async def drop_gateway(
        self, *, code: int = 4000, wait_resumed: bool = True, timeout: float = 5.0, shard: int = 0
    ) -> None:
        """Close a shard's gateway connection with a resumable code; the client reconnects and
        RESUMEs. Dispatches made meanwhile are queued and replayed on RESUME."""
        session = self.sessions.get(shard)
        ws = session.ws if session else None
        assert ws is not None, f"no identified gateway connection of shard {shard} to drop"
        resumes = session.resumes
        async with self._send_lock:  # no dispatch may be half-sent on the old socket
            session.ws = None
        await ws.close(code=code)
        if wait_resumed:  # this shard's RESUME, not another's
            await self.wait_for(lambda: session.resumes > resumes, timeout, f"RESUME of shard {shard}")

    async def wait_resumed(self, count: int = 1, timeout: float = 5.0) -> None:
        await self.wait_for(lambda: self.resume_count >= count, timeout, f"RESUME number {count}")

    # -- acting as users --------------------------------------------------------------------------

    async def invoke_slash(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        user_id: int = USER_ID,
        guild: bool = True,
        expired: bool = False,
    ) -> FakeInteraction:
        """Run /name with options. "group sub" names a subcommand. Option types come from the
        synced command, else from the Python values. data.guild_id is set when the command was
        synced to the guild, as Discord does for guild commands."""
        top, *path = name.split()
        command, guild_id = self._synced_command(top, 1, guild)
        declared = command.get("options", [])
        leaf_options = self._slash_options(options or {}, self._leaf_options(declared, path))
        for depth in range(len(path) - 1, -1, -1):  # wrap the leaf options in their subcommand/group
            kind = 1 if depth == len(path) - 1 else 2
            leaf_options = [{"type": kind, "name": path[depth], "options": leaf_options}]
        data = {"id": command["id"], "name": top, "type": 1, "options": leaf_options}
        if guild_id is not None:
            data["guild_id"] = str(guild_id)
        return await self._deliver(2, data, user_id=user_id, guild=guild, expired=expired)

    async def invoke_message_command(
        self,
        name: str,
        message_content: str = "",
        *,
        target: FakeMessage | None = None,
        author_id: int = OTHER_USER_ID,
        user_id: int = USER_ID,
        guild: bool = True,
        expired: bool = False,
    ) -> FakeInteraction:
        """Run the message context menu `name` on `target`, or on a new message by author_id."""
        channel_id = CHANNEL_ID if guild else int(self._dm_channel(user_id)["id"])
        if target is None:
            author = self.users.setdefault(author_id, _user_json(author_id))
            target = self._new_message(channel_id, author, content=message_content)
        command, guild_id = self._synced_command(name, 3, guild)
        data = {
            "id": command["id"],
            "name": name,
            "type": 3,
            "target_id": str(target.id),
            "resolved": {"messages": {str(target.id): target.to_json()}},
        }
        if guild_id is not None:
            data["guild_id"] = str(guild_id)
        return await self._deliver(2, data, user_id=user_id, guild=guild, expired=expired)

    async def click_button(
        self, message: FakeMessage | int, custom_id: str, *, user_id: int = USER_ID, expired: bool = False
    ) -> FakeInteraction:
        """Click the component custom_id on a message the bot sent (a FakeMessage or its id)."""
        target = message if isinstance(message, FakeMessage) else self.messages[message]
        component = next(
            (c for c in _walk_components(target.components) if c.get("custom_id") == custom_id), None
        )
        assert component is not None, (
            f"message {target.id} has no component {custom_id!r}: {target.custom_ids()}"
        )
        data = {"custom_id": custom_id, "component_type": component["type"]}
        guild = target.channel_id == CHANNEL_ID
        return await self._deliver(3, data, user_id=user_id, guild=guild, expired=expired, target=target)

    def _synced_command(self, name: str, kind: int, guild: bool) -> tuple[dict[str, Any], int | None]:
        """The registered command Discord would resolve (guild first), or an ad hoc global one so
        tests need not sync first."""
        candidates = [(c, GUILD_ID) for c in self.guild_commands.get(GUILD_ID, []) if guild]
        candidates += [(c, None) for c in self.global_commands]
        for command, guild_id in candidates:
            if command["name"] == name and command.get("type", 1) == kind:
                return command, guild_id
        return {"id": str(self._command_id(None, kind, name)), "name": name, "type": kind}, None

    @staticmethod
    def _leaf_options(declared: list[dict[str, Any]], path: list[str]) -> list[dict[str, Any]]:
        for part in path:
            declared = next((o.get("options", []) for o in declared if o["name"] == part), [])
        return declared

    @staticmethod
    def _slash_options(values: dict[str, Any], declared: list[dict[str, Any]]) -> list[dict[str, Any]]:
        types = {o["name"]: o["type"] for o in declared}
        result = []
        for name, value in values.items():
            if name in types:
                kind = types[name]
            elif isinstance(value, bool):  # before int: bool is an int
                kind = 5
            elif isinstance(value, int):
                kind = 4
            elif isinstance(value, float):
                kind = 10
            else:
                kind = 3
            result.append({"name": name, "type": kind, "value": value})
        return result

    async def _deliver(
        self,
        kind: int,
        data: dict[str, Any],
        *,
        user_id: int,
        guild: bool,
        expired: bool,
        target: FakeMessage | None = None,
    ) -> FakeInteraction:
        user = self.users.setdefault(user_id, _user_json(user_id))
        interaction_id = self.next_id()
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(APP_ID),
            "type": kind,
            "data": data,
            "token": f"interaction-token-{interaction_id}",
            "version": 1,
            "locale": "en-US",
            "app_permissions": ALL_PERMISSIONS,
            "entitlements": [],
            "attachment_size_limit": 10 * 1024 * 1024,
        }
        if guild:
            payload |= {
                "guild_id": str(GUILD_ID),
                "guild_locale": "en-US",
                "guild": {"id": str(GUILD_ID), "locale": "en-US", "features": []},
                "channel_id": str(CHANNEL_ID),
                "channel": self.channel,
                "member": _member_json(user, permissions=True),
                "authorizing_integration_owners": {"0": str(GUILD_ID)},
                "context": 0,
            }
        else:
            dm = self._dm_channel(user_id)
            payload |= {
                "channel_id": dm["id"],
                "channel": dm,
                "user": user,
                "authorizing_integration_owners": {"1": str(user_id)},
                "context": 1,
            }
        if target is not None:
            payload["message"] = target.to_json()
        interaction = FakeInteraction(self, payload, target)
        interaction.expired = expired
        self.interactions[interaction.token] = interaction
        interaction.shard = await self.dispatch("INTERACTION_CREATE", payload)
        if interaction.shard is None:  # else the test would wait for a reply that cannot come
            self.problems.append(f"interaction {interaction.id} went to a shard no gateway session holds")
        return interaction

    # -- gateway ----------------------------------------------------------------------------------

    def shard_of(self, guild_id: int) -> int:
        """Discord's rule: a guild's events go to shard (guild_id >> 22) % shard_count."""
        return (guild_id >> 22) % self.shard_count

    async def dispatch(self, event: str, data: dict[str, Any], *, shard: int | None = None) -> int | None:
        """Send a DISPATCH to the shard that gets it (its guild's, else shard 0, as Discord sends
        DMs), or queue it for RESUME while that shard is disconnected. Returns the shard, or None
        when no session of that shard was ever identified (the event is lost, as on Discord)."""
        if shard is None:
            shard = self.shard_of(int(data["guild_id"])) if data.get("guild_id") else 0
        async with self._send_lock:
            session = self.sessions.get(shard)
            if session is None:
                return None
            session.seq += 1
            frame = {"op": 0, "t": event, "s": session.seq, "d": data}
            session.log.append(frame)
            if session.ws is not None and not session.ws.closed:
                try:
                    await session.ws.send_str(json.dumps(frame))
                except ConnectionResetError:  # gone mid-send: the client will RESUME and get it
                    session.ws = None
        return shard

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            # discord.py asks for zlib-stream compression but also takes uncompressed text frames.
            await ws.send_str(json.dumps({"op": 10, "d": {"heartbeat_interval": 41_250}}))
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    self.problems.append(f"unexpected gateway frame type {msg.type}")
                    continue
                frame = json.loads(msg.data)
                self.gateway_frames.append(frame)
                op = frame.get("op")
                if op == 1:
                    await ws.send_str(json.dumps({"op": 11}))
                elif op == 2:
                    await self._identify(ws, frame["d"])
                elif op == 6:
                    await self._resume(ws, frame["d"])
                # Presence (3) and member requests (8) need no answer here.
                await self._notify()
        finally:
            self._sockets.discard(ws)
            for session in self.sessions.values():
                if session.ws is ws:
                    session.ws = None
        return ws

    async def _identify(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        if data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        self.identify_count += 1
        shard, self.shard_count = data.get("shard") or (0, 1)
        session = GatewaySession(f"fake-session-{self.identify_count}", ws)
        async with self._send_lock:
            self.sessions[shard] = session  # a new session: the shard's old one cannot be resumed
        ours = self.shard_of(GUILD_ID) == shard
        ready = {
            "v": 10,
            "user": self.bot_user,
            "guilds": [{"id": str(GUILD_ID), "unavailable": True}] if ours else [],
            "session_id": session.id,
            "resume_gateway_url": str(self.gateway_url),
            "application": {"id": str(APP_ID), "flags": 0},
        }
        if "shard" in data:  # Discord echoes the IDENTIFY's shard
            ready["shard"] = [shard, self.shard_count]
        await self.dispatch("READY", ready, shard=shard)
        if ours:
            await self.dispatch("GUILD_CREATE", self._guild_json(), shard=shard)

    async def _resume(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        session = next((s for s in self.sessions.values() if s.id == data.get("session_id")), None)
        if data.get("token") != self.token or session is None:
            await ws.send_str(json.dumps({"op": 9, "d": False}))  # not resumable: identify afresh
            return
        async with self._send_lock:
            missed = [f for f in session.log if f["s"] > (data.get("seq") or 0)]
            for frame in missed:
                await ws.send_str(json.dumps(frame))
            self.replayed_count += len(missed)
            session.seq += 1
            resumed = {"op": 0, "t": "RESUMED", "s": session.seq, "d": {}}
            session.log.append(resumed)
            await ws.send_str(json.dumps(resumed))
            session.ws = ws
            session.resumes += 1
        self.resume_count += 1

    def _guild_json(self) -> dict[str, Any]:
        members = [_member_json(self.users[uid]) for uid in (APP_ID, USER_ID, OTHER_USER_ID)]
        everyone = {
            "id": str(GUILD_ID),
            "name": "@everyone",
            "permissions": ALL_PERMISSIONS,
            "position": 0,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }
        return {
            "id": str(GUILD_ID),
            "name": "Fake Guild",
            "owner_id": str(USER_ID),
            "unavailable": False,
            "joined_at": _now_iso(),
            "member_count": len(members),
            "large": False,
            "preferred_locale": "en-US",
            "features": [],
            "roles": [everyone],
            "channels": [self.channel],
            "members": members,
            "threads": [],
            "emojis": [],
            "stickers": [],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    # -- REST plumbing ----------------------------------------------------------------------------

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        record = RequestRecord(request.method, path, dict(request.query), None, [])
        self.requests.append(record)
        try:
            try:
                record.json, record.files = await self._read_body(request)
            except ValueError as error:
                self.problems.append(f"unreadable body of {record.route}: {error}")
                record.status, record.response = 400, {"message": "Invalid Form Body", "code": 50035}
                return _json_response(400, record.response)
            return self._injected_fault(record) or await self._handle(request, record)
        finally:
            await self._notify()

    async def _read_body(self, request: web.Request) -> tuple[Any, list[FileRecord]]:
        if request.content_type.startswith("multipart/"):
            # discord.py sends payload_json plus files[0], files[1], ...
            payload, files = None, []
            async for part in await request.multipart():
                if part.name == "payload_json":
                    payload = json.loads(await part.text())
                elif part.filename is not None:
                    files.append(
                        FileRecord(part.filename, bytes(await part.read()), part.headers.get("Content-Type"))
                    )
            return payload, files
        body = await request.read()
        return (json.loads(body) if body else None), []

    def _injected_fault(self, record: RequestRecord) -> web.Response | None:
        for fault in self.faults:
            if fault.remaining > 0 and record.matches(fault.route_filter):
                fault.remaining -= 1
                fault.hits.append(record)
                response = fault.response()
                record.status, record.injected = response.status, True
                record.response = json.loads(response.body)
                return response
        return None

    async def _handle(self, request: web.Request, record: RequestRecord) -> web.Response:
        for handler in self._routes:
            method, pattern, auth = handler.route
            match = pattern.match(record.path)
            if method != record.method or match is None:
                continue
            try:
                if auth and request.headers.get("Authorization") != f"Bot {self.token}":
                    raise ApiError(401, 0, "401: Unauthorized")
                status, body = await handler(record, **match.groupdict())
            except ApiError as error:
                status, body = error.status, {"message": error.message, "code": error.code}
            except Exception as error:  # a bug in the fake: fail the test, and fast (a 500 is retried)
                log.exception("fake Discord failed on %s", record.route)
                self.problems.append(f"fake Discord crashed on {record.route}: {error!r}")
                status, body = 400, {"message": f"fake crashed: {error!r}", "code": 0}
            record.status, record.response = status, body
            return _json_response(status, body)
        self.problems.append(f"unknown route: {record.route}")
        record.status, record.response = 404, {"message": "404: Not Found", "code": 0}
        return _json_response(404, record.response)

    def _new_message(self, channel_id: int, author: dict[str, Any], **fields: Any) -> FakeMessage:
        message = FakeMessage(self.next_id(), channel_id, author, **fields)
        self.messages[message.id] = message
        return message

    def _message(self, message_id: str | int) -> FakeMessage:
        message = self.messages.get(int(message_id))
        if message is None or message.deleted:
            raise ApiError(404, 10008, "Unknown Message")
        return message

    def _edit(
        self, message: FakeMessage, payload: dict[str, Any] | None, files: list[FileRecord]
    ) -> dict[str, Any]:
        message.apply(payload or {}, files, self.next_id)
        message.edits.append(payload or {})
        return message.to_json()

    def _channel_id(self, channel_id: str) -> int:
        known = {CHANNEL_ID} | {int(c["id"]) for c in self.dm_channels.values()}
        if int(channel_id) not in known:
            raise ApiError(404, 10003, "Unknown Channel")
        return int(channel_id)

    def _dm_channel(self, user_id: int) -> dict[str, Any]:
        user = self.users.setdefault(user_id, _user_json(user_id))
        if user_id not in self.dm_channels:
            self.dm_channels[user_id] = {
                "id": str(self.next_id()),
                "type": 1,
                "recipients": [user],
                "last_message_id": None,
            }
        return self.dm_channels[user_id]

    # -- REST: login, gateway, application ----------------------------------------------------------

    @route("GET", "/users/@me")
    async def _get_me(self, record: RequestRecord) -> tuple[int, Any]:
        return 200, self.bot_user | {"verified": True, "mfa_enabled": False, "flags": 0}

    @route("GET", r"/users/(?P<user_id>\d+)")
    async def _get_user(self, record: RequestRecord, user_id: str) -> tuple[int, Any]:
        if int(user_id) not in self.users:
            raise ApiError(404, 10013, "Unknown User")
        return 200, self.users[int(user_id)]

    @route("GET", "/oauth2/applications/@me")
    async def _get_application(self, record: RequestRecord) -> tuple[int, Any]:
        return 200, {
            "id": str(APP_ID),
            "name": "automodel-bot",
            "description": "",
            "icon": None,
            "bot_public": False,
            "bot_require_code_grant": False,
            # Discord names a pseudo-user after the team as the owner of a team-owned application.
            "owner": _user_json(int(self.team["id"])) if self.team else self.users[USER_ID],
            "team": self.team,
            "verify_key": "0" * 64,
            "flags": 0,
            "bot": self.bot_user,
        }

    @route("GET", "/gateway")
    async def _get_gateway(self, record: RequestRecord) -> tuple[int, Any]:
        return 200, {"url": str(self.gateway_url)}

    @route("GET", "/gateway/bot")
    async def _get_gateway_bot(self, record: RequestRecord) -> tuple[int, Any]:
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return 200, {"url": str(self.gateway_url), "shards": 1, "session_start_limit": limit}

    # -- REST: application commands -----------------------------------------------------------------

    def _command_id(self, guild_id: int | None, kind: int, name: str) -> int:
        # Stable across re-syncs, like Discord's ids for an unchanged command.
        return self._command_ids.setdefault((guild_id, kind, name), self.next_id())

    def _register(self, commands: list[dict[str, Any]], guild_id: int | None) -> list[dict[str, Any]]:
        registered = []
        for command in commands:
            kind = command.get("type", 1)
            full = {
                "description": "",
                "options": [],
                "default_member_permissions": None,
                "nsfw": False,
            } | command
            full |= {
                "id": str(self._command_id(guild_id, kind, command["name"])),
                "type": kind,
                "application_id": str(APP_ID),
                "version": str(self.next_id()),
            }
            if guild_id is not None:
                full["guild_id"] = str(guild_id)
            registered.append(full)
        return registered

    @route("PUT", rf"/applications/{APP_ID}/commands")
    async def _put_global_commands(self, record: RequestRecord) -> tuple[int, Any]:
        self.global_commands = self._register(record.json or [], None)
        return 200, self.global_commands

    @route("GET", rf"/applications/{APP_ID}/commands")
    async def _get_global_commands(self, record: RequestRecord) -> tuple[int, Any]:
        return 200, self.global_commands

    @route("PUT", rf"/applications/{APP_ID}/guilds/(?P<guild_id>\d+)/commands")
    async def _put_guild_commands(self, record: RequestRecord, guild_id: str) -> tuple[int, Any]:
        self.guild_commands[int(guild_id)] = self._register(record.json or [], int(guild_id))
        return 200, self.guild_commands[int(guild_id)]

    @route("GET", rf"/applications/{APP_ID}/guilds/(?P<guild_id>\d+)/commands")
    async def _get_guild_commands(self, record: RequestRecord, guild_id: str) -> tuple[int, Any]:
        return 200, self.guild_commands.get(int(guild_id), [])

    # -- REST: interactions -------------------------------------------------------------------------

    def _interaction(self, token: str, *, callback: bool = False) -> FakeInteraction:
        interaction = self.interactions.get(token)
        if interaction is None or interaction.expired:
            if callback:
                raise ApiError(404, 10062, "Unknown interaction")
            raise ApiError(401, 50027, "Invalid Webhook Token")
        return interaction

    @route("POST", r"/interactions/(?P<interaction_id>\d+)/(?P<token>[^/]+)/callback", auth=False)
    async def _callback(self, record: RequestRecord, interaction_id: str, token: str) -> tuple[int, Any]:
        interaction = self.interactions.get(token)
        if interaction is not None:
            interaction.callback = record
        interaction = self._interaction(token, callback=True)
        if interaction.id != int(interaction_id):
            raise ApiError(404, 10062, "Unknown interaction")
        if interaction.callback_type is not None:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        body = record.json or {}
        kind, data = body.get("type"), body.get("data") or {}
        channel_id = int(interaction.payload["channel_id"])
        is_component = interaction.target is not None
        if kind in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE):
            command_type = interaction.payload["data"].get("type")
            message_type = 0 if is_component else (20 if command_type == 1 else 23)
            flags = (data.get("flags") or 0) & EPHEMERAL
            flags |= LOADING if kind == DEFERRED_CHANNEL_MESSAGE else 0
            message = self._new_message(
                channel_id, self.bot_user, type=message_type, flags=flags, webhook_id=APP_ID
            )
            if kind == CHANNEL_MESSAGE:
                message.apply(data, record.files, self.next_id)
            interaction.message = message
        elif kind in (DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE) and is_component:
            interaction.message = interaction.target
            if kind == UPDATE_MESSAGE:
                self._edit(interaction.target, data, record.files)
        elif kind == MODAL:
            interaction.modal = data
        else:
            self.problems.append(f"unsupported callback type {kind} for {interaction.describe()}")
            raise ApiError(400, 50035, "Invalid Form Body")
        interaction.callback_type = kind
        message = interaction.message
        response: dict[str, Any] = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.payload["type"],
                "response_message_loading": kind == DEFERRED_CHANNEL_MESSAGE,
                "response_message_ephemeral": bool(message and message.ephemeral),
            },
            "resource": {"type": kind},
        }
        if message is not None:
            response["interaction"]["response_message_id"] = str(message.id)
            if kind in (CHANNEL_MESSAGE, UPDATE_MESSAGE):
                response["resource"]["message"] = message.to_json()
        return 200, response

    def _original(self, token: str) -> tuple[FakeInteraction, FakeMessage]:
        interaction = self._interaction(token)
        if interaction.message is None or interaction.message.deleted:
            raise ApiError(404, 10008, "Unknown Message")
        return interaction, interaction.message

    @route("GET", rf"/webhooks/{APP_ID}/(?P<token>[^/]+)/messages/@original", auth=False)
    async def _get_original(self, record: RequestRecord, token: str) -> tuple[int, Any]:
        return 200, self._original(token)[1].to_json()

    @route("PATCH", rf"/webhooks/{APP_ID}/(?P<token>[^/]+)/messages/@original", auth=False)
    async def _edit_original(self, record: RequestRecord, token: str) -> tuple[int, Any]:
        interaction, message = self._original(token)
        message.flags &= ~LOADING
        interaction.original_edits += 1
        return 200, self._edit(message, record.json, record.files)

    @route("DELETE", rf"/webhooks/{APP_ID}/(?P<token>[^/]+)/messages/@original", auth=False)
    async def _delete_original(self, record: RequestRecord, token: str) -> tuple[int, Any]:
        self._original(token)[1].deleted = True
        return 204, None

    @route("POST", rf"/webhooks/{APP_ID}/(?P<token>[^/]+)", auth=False)
    async def _followup(self, record: RequestRecord, token: str) -> tuple[int, Any]:
        interaction = self._interaction(token)
        if interaction.callback_type is None:
            raise ApiError(404, 10015, "Unknown Webhook")
        original = interaction.message
        if (
            original is not None
            and original.loading
            and interaction.callback_type == DEFERRED_CHANNEL_MESSAGE
        ):
            # Discord turns the first followup after a deferral into the "thinking" message itself.
            original.flags &= ~LOADING
            interaction.original_edits += 1
            return 200, self._edit(original, record.json, record.files)
        payload = record.json or {}
        message = self._new_message(
            int(interaction.payload["channel_id"]),
            self.bot_user,
            flags=(payload.get("flags") or 0) & EPHEMERAL,
            webhook_id=APP_ID,
        )
        message.apply(payload, record.files, self.next_id)
        interaction.followups.append(message)
        return 200, message.to_json()

    def _followup_message(self, token: str, message_id: str) -> FakeMessage:
        interaction = self._interaction(token)
        owned = [m for m in [interaction.message, *interaction.followups] if m is not None]
        message = self._message(message_id)
        if message not in owned:
            raise ApiError(404, 10008, "Unknown Message")
        return message

    @route("GET", rf"/webhooks/{APP_ID}/(?P<token>[^/]+)/messages/(?P<message_id>\d+)", auth=False)
    async def _get_followup(self, record: RequestRecord, token: str, message_id: str) -> tuple[int, Any]:
        return 200, self._followup_message(token, message_id).to_json()

    @route("PATCH", rf"/webhooks/{APP_ID}/(?P<token>[^/]+)/messages/(?P<message_id>\d+)", auth=False)
    async def _edit_followup(self, record: RequestRecord, token: str, message_id: str) -> tuple[int, Any]:
        return 200, self._edit(self._followup_message(token, message_id), record.json, record.files)

    @route("DELETE", rf"/webhooks/{APP_ID}/(?P<token>[^/]+)/messages/(?P<message_id>\d+)", auth=False)
    async def _delete_followup(self, record: RequestRecord, token: str, message_id: str) -> tuple[int, Any]:
        self._followup_message(token, message_id).deleted = True
        return 204, None

    # -- REST: channels and DMs ---------------------------------------------------------------------

    @route("GET", r"/channels/(?P<channel_id>\d+)")
    async def _get_channel(self, record: RequestRecord, channel_id: str) -> tuple[int, Any]:
        cid = self._channel_id(channel_id)
        return 200, next((c for c in self.dm_channels.values() if int(c["id"]) == cid), self.channel)

    @route("POST", r"/channels/(?P<channel_id>\d+)/messages")
    async def _create_message(self, record: RequestRecord, channel_id: str) -> tuple[int, Any]:
        message = self._new_message(self._channel_id(channel_id), self.bot_user)
        message.apply(record.json or {}, record.files, self.next_id)
        return 200, message.to_json()

    @route("GET", r"/channels/(?P<channel_id>\d+)/messages/(?P<message_id>\d+)")
    async def _get_message(self, record: RequestRecord, channel_id: str, message_id: str) -> tuple[int, Any]:
        return 200, self._message(message_id).to_json()

    @route("PATCH", r"/channels/(?P<channel_id>\d+)/messages/(?P<message_id>\d+)")
    async def _edit_message(self, record: RequestRecord, channel_id: str, message_id: str) -> tuple[int, Any]:
        return 200, self._edit(self._message(message_id), record.json, record.files)

    @route("DELETE", r"/channels/(?P<channel_id>\d+)/messages/(?P<message_id>\d+)")
    async def _delete_message(
        self, record: RequestRecord, channel_id: str, message_id: str
    ) -> tuple[int, Any]:
        self._message(message_id).deleted = True
        return 204, None

    @route("POST", "/users/@me/channels")
    async def _create_dm(self, record: RequestRecord) -> tuple[int, Any]:
        return 200, self._dm_channel(int((record.json or {})["recipient_id"]))


class _ErrorCollector(logging.Handler):
    """Keeps the bot's logged errors so a timed-out wait can say what went wrong inside the bot."""

    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f": {record.exc_info[1]!r}"
        self.sink.append(text)


class PlaceholderExecutor:
    """Stands in for bot.inference.executor.Executor where a test wants no models and no worker threads."""

    def __init__(self) -> None:
        self.running = False

    async def start(self) -> None:
        self.running = True

    async def shutdown(self, grace: float = 10.0) -> None:
        self.running = False


@pytest_asyncio.fixture
async def fake_discord(monkeypatch: pytest.MonkeyPatch):
    """A started FakeDiscord with discord.py pointed at it; fails the test on unknown routes."""
    fake = FakeDiscord()
    await fake.start()
    monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", fake.gateway_url)
    collector = _ErrorCollector(fake.logged_errors)
    logging.getLogger().addHandler(collector)
    try:
        yield fake
    finally:
        logging.getLogger().removeHandler(collector)
        await fake.stop()
    assert not fake.problems, f"the fake Discord got requests it does not handle: {fake.problems}"


@pytest.fixture
def bot_settings(tmp_path):
    """Settings for the bot under test; override the fixture to change them."""
    from bot.settings import load_settings

    return load_settings(
        {
            "DISCORD_TOKEN": TOKEN,
            "DISCORD_GUILD_ID": str(GUILD_ID),
            "DEVICE": "cpu",
            "STATE_DIR": str(tmp_path / "state"),
            "USER_COOLDOWN": "0",  # tests invoke commands back to back
        }
    )


@pytest.fixture
def bot_extensions() -> tuple[str, ...]:
    """Extensions the bot loads; override in a test module to load the real cogs."""
    return ("tests.harness_cog",)


@pytest.fixture
def bot_executor():
    """The executor handed to AutoModelBot; None lets setup_hook build the real one from settings."""
    try:
        import bot.inference.executor  # noqa: F401
    except ImportError:
        return PlaceholderExecutor()
    return None


@pytest_asyncio.fixture
async def discord_bot(fake_discord: FakeDiscord, bot_settings, bot_extensions, bot_executor):
    """AutoModelBot logged in to the fake and READY (guild cached); closed at teardown, where the
    test fails if the bot's connection task died during it."""
    from bot.client import AutoModelBot

    bot = AutoModelBot(
        bot_settings, executor=bot_executor, extensions=bot_extensions, guild_ready_timeout=0.05
    )
    await bot.login(fake_discord.token)
    task = asyncio.create_task(bot.connect(), name="discord-bot-connect")
    ready = asyncio.create_task(bot.wait_until_ready())
    await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    try:
        if not ready.done():
            ready.cancel()
            raise AssertionError(f"the bot did not become ready: {_outcome(task)}")
        assert bot.get_guild(GUILD_ID) is not None, "READY came before the GUILD_CREATE"
        yield bot
    finally:
        outcome = _outcome(task)
        await bot.close()
        await asyncio.wait({task}, timeout=5)
    assert outcome == "running", f"the bot's gateway task ended during the test: {outcome}"


def _outcome(task: asyncio.Task) -> str:
    if not task.done():
        return "running"
    if task.cancelled():
        return "cancelled"
    return f"ended with {task.exception()!r}"
