"""Worker processes that get killed: a cluster of named workers, each restarted with the
same identity (data dir, web port) after it dies, and a record of every death."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from fsstream.devtools.localkafka import free_port
from fsstream.devtools.processes import WorkerProcess
from fsstream.settings import Settings


@dataclass
class Member:
    """One named worker: its role, its settings and its current process."""

    name: str
    role: str
    settings: Settings
    log_path: Path
    process: WorkerProcess | None = None
    crash_point: str | None = None

    def start(self, crash_point: str | None = None) -> None:
        self.crash_point = crash_point
        settings = self.settings.model_copy(update={"crash_point": crash_point})
        self.process = WorkerProcess(settings, self.role, self.log_path).start()

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()


@dataclass
class Cluster:
    """Named reorder and sink workers sharing one pipeline's settings."""

    settings: Settings
    root: Path
    members: dict[str, Member] = field(default_factory=dict)
    deaths: Counter[str] = field(default_factory=Counter)
    """SIGKILLs by kind: "kill <role>" from outside, "<point>" from a crash point."""

    def add(self, name: str, role: str) -> Member:
        settings = self.settings.model_copy(
            update={"web_port": free_port(), "data_dir": self.root / "state" / name}
        )
        member = Member(name, role, settings, self.root / "logs" / f"{name}.log")
        self.members[name] = member
        return member

    def of(self, role: str) -> list[Member]:
        return [m for m in self.members.values() if m.role == role]

    def start_all(self) -> None:
        for member in self.members.values():
            member.start()
        for member in self.members.values():
            assert member.process is not None
            member.process.wait_assigned()

    def kill(self, member: Member) -> None:
        """SIGKILL from outside, wherever the worker happens to be."""
        self.reap()
        if member.alive():
            assert member.process is not None
            member.process.kill()
            self.deaths[f"kill {member.role}"] += 1

    def reap(self) -> list[Member]:
        """Members whose process died on its own (a crash point): record and return them."""
        dead = []
        for member in self.members.values():
            process = member.process
            if process is not None and process.process is not None and not process.alive():
                code = process.process.returncode
                assert code == -signal.SIGKILL, (
                    f"{member.name} exited with {code}, not by a crash point; see {member.log_path}"
                )
                self.deaths[(member.crash_point or "unexplained").partition(":")[0]] += 1
                member.process = None
                dead.append(member)
        return dead

    async def died(self, member: Member, timeout: float) -> None:
        """Wait up to ``timeout`` for ``member`` to reach its crash point."""
        deadline = time.monotonic() + timeout
        while member.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        self.reap()

    def disarm(self) -> None:
        """Stop the members whose crash point is still ahead: settling restarts them clean."""
        self.reap()
        for member in self.members.values():
            if member.crash_point and member.process is not None:
                member.process.stop()
                member.process = None

    async def settle(self, timeout: float = 60.0) -> None:
        """Restart every dead member without a crash point; wait until all own partitions
        (a member armed with a crash point may reach it first: ``died`` records that)."""
        self.reap()
        for member in self.members.values():
            if not member.alive():
                member.start()
        deadline = time.monotonic() + timeout
        for member in self.members.values():
            assert member.process is not None
            while True:
                health = member.process.health()
                if health and health.get("assigned"):
                    break
                if not member.process.alive():
                    if member.crash_point:
                        break  # reached its crash point before it was seen owning anything
                    raise AssertionError(
                        f"{member.name} died while settling; see {member.log_path}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{member.name} owns nothing; see {member.log_path}")
                await asyncio.sleep(0.2)

    def stop_all(self) -> None:
        for member in self.members.values():
            if member.process is not None:
                member.process.stop()

    @property
    def kills(self) -> int:
        return sum(self.deaths.values())
