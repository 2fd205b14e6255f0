"""`flywheel erase` and `flywheel consent`: a user's erasure, and their training consent withdrawn or granted."""

from __future__ import annotations

import typer

from flywheel.entrypoints.cli.common import BY_HELP, _in_store, _operator, _print, _settings

consent_app = typer.Typer(help="A user's consent to training on their data (scope: training).", no_args_is_help=True)


def erase(
    user_id_hash: str = typer.Argument(..., help="The user's user.id_hash, as apps send it."),
    reason: str = typer.Option(..., "--reason", help="Why (the request's reference, say)."),
    by: str = typer.Option(None, "--by", help=BY_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Erase a user: their data key is deleted (their events in the log read as erased), their rows leave the read
    models, and no later round holds them. Running it again is harmless."""
    from store.erase import erase_user

    who = _operator(by, _settings())
    out = _in_store(lambda conn: erase_user(conn, user_id_hash, reason=reason, by=who))
    data = {"erased": True, "new": out.new, "removed": out.removed, "groups_to_derive": out.groups}
    removed = ", ".join(f"{n} {table}" for table, n in out.removed.items())
    human = (f"{'erased' if out.new else 'already erased; swept again'}: removed {removed}; "
             f"{out.groups} prompt groups queued for the signals projector")
    _print(data, as_json, human)


def _change(user_id_hash: str, *, granted: bool, by: str | None, as_json: bool) -> None:
    from store.erase import change_consent

    who = _operator(by, _settings())
    changed = _in_store(lambda conn: change_consent(conn, user_id_hash, granted=granted, by=who))
    state = "granted" if granted else "withdrawn"
    _print({"consent": state, "changed": changed}, as_json,
           f"training consent {state}" if changed else f"training consent already {state}; nothing recorded")


@consent_app.command("withdraw")
def consent_withdraw(
    user_id_hash: str = typer.Argument(...), by: str = typer.Option(None, "--by", help=BY_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Withdraw a user's training consent: none of their data, past or future, goes into a round, the sampler or
    generation until it is granted again (the data itself is kept)."""
    _change(user_id_hash, granted=False, by=by, as_json=as_json)


@consent_app.command("grant")
def consent_grant(
    user_id_hash: str = typer.Argument(...), by: str = typer.Option(None, "--by", help=BY_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Grant a user's training consent again: their data is used as before from the next round on."""
    _change(user_id_hash, granted=True, by=by, as_json=as_json)
