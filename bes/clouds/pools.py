"""The cloud road of a service: its configured cloud pools, their autoscalers, and the
pools' offers handed to the desktop grid's routing policy.

Cloud pools add workers to the desktop grid's one queue; they are not a second queue. A job
the routing policy sends to ``cloud:NAME`` is claimed by that pool's instances' workers, which
run it in a VM exactly as volunteers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Sequence
from pathlib import Path

from bes.backends.desktopgrid import DesktopGridBackend
from bes.clouds import config as cloud_config
from bes.clouds.autoscaler import Autoscaler
from bes.clouds.base import CloudProvider
from bes.db import cloud_rows

log = logging.getLogger(__name__)


class CloudPools:
    """A service's cloud pools.

    Args:
        grid: The desktop grid whose queue the pools serve.
        pools: Each pool's configuration with its provider.
        interval_s: Seconds between autoscaler rounds.
    """

    def __init__(
        self,
        grid: DesktopGridBackend,
        pools: Sequence[tuple[cloud_config.PoolConfig, CloudProvider]],
        *,
        interval_s: float = 5.0,
    ) -> None:
        self.grid = grid
        self.interval_s = interval_s
        deployment = grid.write(cloud_rows.deployment_id, secrets.token_hex(8))
        holder = grid.pools.holder
        self.autoscalers = [
            Autoscaler(
                pool,
                provider,
                db=grid.db,
                write=grid.write,
                deployment=deployment,
                holder=holder,
                clock=lambda: grid.clock(),  # noqa: PLW0108 - late-bound (tests set it)
            )
            for pool, provider in pools
        ]
        self.deployment = deployment

    @classmethod
    def from_file(cls, grid: DesktopGridBackend, path: Path) -> CloudPools:
        """The pools a configuration file describes (bes.clouds.config).

        Raises:
            ConfigError: The file or a provider's settings are wrong.
        """
        pools = cloud_config.load(path)
        return cls(grid, [(p, cloud_config.build_provider(p)) for p in pools])

    def offer(self) -> None:
        """Tell the routing policy what each pool's instances can run."""
        self.grid.pools.set_clouds([a.offer() for a in self.autoscalers])

    async def run(self, stop: asyncio.Event) -> None:
        """A round every ``interval_s`` until ``stop`` is set, then give up the duties."""
        try:
            while not stop.is_set():
                await asyncio.to_thread(self.round)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
        finally:
            for autoscaler in self.autoscalers:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(autoscaler.release)
                autoscaler.provider.close()

    def round(self) -> None:
        """One round of every pool's autoscaler; then the routing policy learns what each
        pool offers (its flavors may have become known: an API that was down at start)."""
        for autoscaler in self.autoscalers:
            try:
                autoscaler.round()
            except Exception:  # one pool's failure must not stop the others, nor the loop
                log.exception("%s: autoscaler round failed", autoscaler.pool.name)
        self.offer()
