"""``bes attrs``: the factory's attributes (GetFactoryAttributesDocument)."""

from __future__ import annotations

from typing import Any

import click

from bes.cli._client import JSON, client_options, context, reported
from bes.cli._render import emit_json, table


@click.command()
@JSON
@client_options
@reported
def attrs(as_json: bool, **flags: Any) -> None:
    """Show the factory's attributes (GetFactoryAttributesDocument)."""
    import dataclasses

    ctx = context(**flags)
    found = ctx.client().attributes()
    values = dataclasses.asdict(found)
    values["activity_refs"] = [r.name for r in found.activity_refs]
    if as_json:
        emit_json({"endpoint": ctx.config.endpoint, **values})
        return
    rows = [("endpoint", ctx.config.endpoint)]
    for key, value in values.items():
        if value not in (None, (), []):
            rows.append((key.replace("_", " "), _readable_value(key, value)))
    click.echo(table(("ATTRIBUTE", "VALUE"), rows))


def _readable_value(key: str, value: Any) -> str:
    if key == "activity_refs":
        return f"{len(value)} listed"
    if key == "memory_bytes":
        return f"{value / 2**30:.1f} GiB"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, tuple | list):
        return ", ".join(map(str, value))
    return str(value)
