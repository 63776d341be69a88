"""Progress hooks for `tabby lab up` (kept import-light: the CLI loads it for every command)."""

from __future__ import annotations


class Reporter:
    """The CLI draws these with rich; the default prints nothing. `step` names a stage of
    `up` (underlay, nodes, datastore, typha, agents, workloads, bgp, connectivity)."""

    def start(self, step: str, text: str, total: int | None = None) -> None:
        pass

    def update(self, step: str, completed: int, text: str | None = None) -> None:
        pass

    def finish(self, step: str, text: str | None = None) -> None:
        pass
