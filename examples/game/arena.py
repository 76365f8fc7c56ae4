"""The arena's rules, with no I/O: players steer, move, pick up gems; a snapshot says it all.

The game loop (``loop.py``) owns one :class:`Arena`, feeds it the players'
steering and who is still connected, steps it 20 times a second and publishes
:meth:`Arena.snapshot`. Everything a client draws is in that snapshot, so a
newcomer (or a page back from a dropped network) needs nothing but the latest
one, and a node taking over the loop resumes from it (:meth:`Arena.restore`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Annotated

import msgspec

WIDTH = 960
HEIGHT = 600
PLAYER_RADIUS = 16
GEM_RADIUS = 9
SPEED = 220.0
"""Arena units per second (the arena is 960 wide: about four seconds across)."""
GEMS = 12
STEER_HOLD = 1.0
"""Seconds a steering input lasts unless the client repeats it: a page that loses its
network while a key is held stops its player within a second, not at the wall."""
LEAVE_AFTER = 8.0
"""Seconds a player stays in the arena after its last connection went away: a page back
from a short network drop (or a reload) finds its player, position and score."""

Axis = Annotated[int, msgspec.Meta(ge=-1, le=1)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=16)]


class Move(msgspec.Struct, forbid_unknown_fields=True):
    """What a page publishes into ``input:arena``: the direction held (-1, 0, 1 on each axis)."""

    dx: Axis
    dy: Axis


class Steer(msgspec.Struct):
    """A :class:`Move` as stored in ``input:arena``: stamped with the player by the handler."""

    player: str
    name: Name
    dx: Axis
    dy: Axis


class PlayerView(msgspec.Struct, array_like=True):
    """One player in a snapshot, encoded as a JSON array: ``[id, name, x, y, score, dx, dy]``."""

    id: str
    name: str
    x: int
    y: int
    score: int
    dx: int
    dy: int


class Snapshot(msgspec.Struct):
    """The whole visible state after tick ``tick``: what ``game:arena`` carries every tick."""

    tick: int
    players: list[PlayerView]
    gems: list[tuple[int, int]]


@dataclass
class Player:
    id: str
    name: str
    x: float
    y: float
    score: int = 0
    dx: int = 0
    dy: int = 0
    steer_until: float = 0.0
    seen_at: float = 0.0


class Arena:
    """The game state and its rules. ``now`` arguments are the loop's clock, in seconds."""

    def __init__(self, seed: int | None = None) -> None:
        self.random = random.Random(seed)
        self.tick = 0
        self.players: dict[str, Player] = {}
        self.gems: list[tuple[int, int]] = []
        for _ in range(GEMS):
            self.gems.append(self._free_spot())

    def steer(self, steer: Steer, now: float) -> None:
        """Apply a player's input; the first one puts the player into the arena."""
        player = self.players.get(steer.player)
        if player is None:
            x, y = self._free_spot()
            player = self.players[steer.player] = Player(steer.player, steer.name, x, y)
        player.name = steer.name
        player.dx, player.dy = steer.dx, steer.dy
        player.steer_until = now + STEER_HOLD
        player.seen_at = now

    def still_here(self, present: set[str], now: float) -> None:
        """Players connected now (presence of ``game:arena``) stay; others leave after a while."""
        for player in list(self.players.values()):
            if player.id in present:
                player.seen_at = now
            elif now - player.seen_at > LEAVE_AFTER:
                del self.players[player.id]

    def step(self, seconds: float, now: float) -> None:
        """Advance by one tick: move every player, then collect the gems they touch."""
        self.tick += 1
        for player in self.players.values():
            if now > player.steer_until:
                player.dx = player.dy = 0
            if player.dx or player.dy:
                norm = math.hypot(player.dx, player.dy)
                player.x += SPEED * seconds * player.dx / norm
                player.y += SPEED * seconds * player.dy / norm
                player.x = min(max(player.x, PLAYER_RADIUS), WIDTH - PLAYER_RADIUS)
                player.y = min(max(player.y, PLAYER_RADIUS), HEIGHT - PLAYER_RADIUS)
        reach = (PLAYER_RADIUS + GEM_RADIUS) ** 2
        for index, (gx, gy) in enumerate(self.gems):
            for player in self.players.values():
                if (player.x - gx) ** 2 + (player.y - gy) ** 2 <= reach:
                    player.score += 1
                    self.gems[index] = self._free_spot()
                    break

    def snapshot(self) -> Snapshot:
        players = sorted(self.players.values(), key=lambda p: (-p.score, p.name, p.id))
        return Snapshot(
            self.tick,
            [
                PlayerView(p.id, p.name, round(p.x), round(p.y), p.score, p.dx, p.dy)
                for p in players
            ],
            list(self.gems),
        )

    def restore(self, snapshot: Snapshot, now: float) -> None:
        """Carry on from a snapshot another node published (it held the loop until now)."""
        self.tick = snapshot.tick
        self.players = {
            view.id: Player(
                view.id,
                view.name,
                view.x,
                view.y,
                view.score,
                view.dx,
                view.dy,
                steer_until=now + STEER_HOLD,
                seen_at=now,
            )
            for view in snapshot.players
        }
        self.gems = list(snapshot.gems) or self.gems

    def _free_spot(self) -> tuple[int, int]:
        """A random spot clear of the players, the gems and the walls (best effort)."""
        margin = PLAYER_RADIUS * 2
        for _ in range(20):
            x = self.random.randint(margin, WIDTH - margin)
            y = self.random.randint(margin, HEIGHT - margin)
            near_player = any(
                (p.x - x) ** 2 + (p.y - y) ** 2 < (margin * 2) ** 2 for p in self.players.values()
            )
            near_gem = any((gx - x) ** 2 + (gy - y) ** 2 < margin**2 for gx, gy in self.gems)
            if not near_player and not near_gem:
                return x, y
        return x, y
