"""``foundation registry | breakers | limits`` on both databases."""

from __future__ import annotations

import contextlib
import json

from click.testing import CliRunner

from foundation import Foundation
from foundation.cli import main

DAY_MS = 24 * 3600 * 1000


def run(db_url: str, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["-d", db_url, *args])
    return result.exit_code, result.stdout, result.stderr


def test_registry_list_show_unregister(db_url: str) -> None:
    with Foundation(db_url, migrate="skip") as node:
        node.service_registry.register("auth_service", "http://10.0.0.5:8000", {"v": "1"})
        code, out, err = run(db_url, "registry", "list", "--json")
        assert code == 0, err
        [entry] = json.loads(out)
        assert entry["name"] == "auth_service"
        assert entry["address"] == "http://10.0.0.5:8000"
        assert entry["node"] == node.settings.node_id
        assert entry["epoch"] == 1
        code, out, _ = run(db_url, "registry", "list")
        assert code == 0 and "auth_service" in out
        code, out, _ = run(db_url, "registry", "show", "auth_service")
        assert code == 0 and json.loads(out)["metadata"] == {"v": "1"}
        code, out, err = run(db_url, "registry", "unregister", "auth_service")
        assert code == 0, err
        code, out, err = run(db_url, "registry", "show", "auth_service")
        assert code == 1 and "not_found" in err


def test_breakers_and_limits_listings(db_url: str) -> None:
    with Foundation(db_url, migrate="skip") as node:
        breaker = node.circuit_breaker.get("payments", max_failures=1, reset_timeout=60_000)
        with contextlib.suppress(ZeroDivisionError):
            breaker.execute(lambda: 1 / 0)
        # A fixed window starts at a multiple of its interval: a minute's could end
        # between these calls and the listing below (which leaves an ended one out).
        for _ in range(2):
            node.rate_limiter.try_acquire("api", max_requests=5, interval=DAY_MS)
    code, out, err = run(db_url, "breakers", "--json")
    assert code == 0, err
    [info] = json.loads(out)
    assert (info["name"], info["state"], info["failures"]) == ("payments", "open", 1)
    assert 0 < info["retry_after"] <= 60_000
    code, out, _ = run(db_url, "breakers")
    assert code == 0 and "payments" in out and "open" in out
    code, out, err = run(db_url, "limits", "--json")
    assert code == 0, err
    [usage] = json.loads(out)
    assert (usage["key"], usage["used"]) == ("api", 2)
    code, out, _ = run(db_url, "limits")
    assert code == 0 and "api" in out


def test_tables_print_names_as_typed_not_as_markup(db_url: str) -> None:
    """Rich would read "[bold]svc[/]" as markup (printing "svc", the name of another
    entry) and fail on "cache[/]"; the user's text is printed as it is."""
    with Foundation(db_url, migrate="skip") as node:  # its names live while it runs
        for name in ("svc", "[bold]svc[/]", "cache[/]"):
            node.service_registry.register(name, f"http://{len(name)}", {})
        node.config.set("[red]key[/red]", 1)
        code, out, err = run(db_url, "registry", "list")
        assert code == 0, err
        assert "[bold]svc[/]" in out and "cache[/]" in out
    code, out, err = run(db_url, "config", "list")
    assert code == 0, err
    assert "[red]key[/red]" in out
