"""The load generator: C concurrent SMTP sessions (aiosmtplib), each sending its share of the
messages one after the other on ONE session, timing every transaction from MAIL FROM to the
250 after DATA (time.perf_counter)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiosmtplib

from bench.mailgen import Mail


@dataclass
class LoadResult:
    sent: int = 0
    accepted: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds, accepted transactions
    started: float = 0.0  # perf_counter of the first MAIL FROM
    finished: float = 0.0  # perf_counter of the last 250
    wall_started: float = 0.0  # time.monotonic() of the first MAIL FROM (to match other clocks)
    sessions: int = 0
    reconnects: int = 0

    @property
    def seconds(self) -> float:
        return max(self.finished - self.started, 1e-9)

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds


async def _session(port: int, mails: list[Mail], result: LoadResult, timeout: float, start: asyncio.Event,
                   deadline: float) -> None:
    client = None
    try:
        for mail in mails:
            if time.monotonic() > deadline:
                result.errors.append("deadline passed; rest not sent")
                break
            if client is None or not client.is_connected:
                if client is not None:
                    result.reconnects += 1
                client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=timeout, start_tls=False,
                                         local_hostname="loadgen.bench.example")
                await client.connect()
                await client.ehlo()
                result.sessions += 1
                await start.wait()  # all sessions connected: then the clock starts
            t0 = time.perf_counter()
            if not result.started:
                result.started, result.wall_started = t0, time.monotonic()
            result.sent += 1
            try:
                refused, _reply = await client.sendmail(mail.sender, mail.recipients, mail.raw)
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as e:
                result.errors.append(f"{type(e).__name__}: {str(e)[:200]}")
                if isinstance(e, (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPConnectError, OSError,
                                  asyncio.TimeoutError, aiosmtplib.SMTPTimeoutError)):
                    client.close()
                else:
                    try:
                        await client.rset()
                    except Exception:
                        client.close()
                continue
            t1 = time.perf_counter()
            if refused:
                result.errors.append(f"refused: {refused}")
                continue
            result.accepted += 1
            result.latencies.append(t1 - t0)
            result.finished = max(result.finished, t1)
    finally:
        if client is not None and client.is_connected:
            try:
                await client.quit()
            except Exception:
                client.close()


async def run(port: int, mails: list[Mail], connections: int, timeout: float = 120.0,
              total_timeout: float = 3600.0) -> LoadResult:
    result = LoadResult()
    connections = max(1, min(connections, len(mails)))
    shares = [mails[i::connections] for i in range(connections)]
    start = asyncio.Event()
    deadline = time.monotonic() + total_timeout
    tasks = [asyncio.create_task(_session(port, share, result, timeout, start, deadline)) for share in shares]
    # Let every session connect and say EHLO before the first MAIL FROM: the figures are
    # about transactions on open sessions, not about connection set-up.
    for _ in range(200):
        if result.sessions >= connections or all(t.done() for t in tasks):
            break
        await asyncio.sleep(0.01)
    start.set()
    done, pending = await asyncio.wait(tasks, timeout=total_timeout + 30)
    for t in pending:
        t.cancel()
    for t in done:
        if t.exception() is not None:
            result.errors.append(f"session failed: {type(t.exception()).__name__}: {t.exception()}")
    return result


def send_all(port: int, mails: list[Mail], connections: int, **kw) -> LoadResult:
    return asyncio.run(run(port, mails, connections, **kw))
