"""The Airflow UI in headless Chromium, as a user would use it with m3sh.

A real ``airflow standalone`` (sandbox connections, ``<repo>/dags`` and ``<repo>/plugins``, the
demo config) and Debian's Chromium driven by Playwright: log in, open ``m3sh_crm_sync``, trigger
it through the trigger form with ``dry_run`` (and ``full_resync``) switched on, see the run succeed
in the UI, then open the "m3sh" navigation entry and find that run there with its dry-run counts;
and the plan-automation audit trail behind that entry: filter it and page through it.
Screenshots of every step go to ``test-artifacts/<test name>/``.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from m3sh.airflow_env import ADMIN_USER

pytestmark = [pytest.mark.e2e, pytest.mark.sandbox]
DAG_ID = "m3sh_crm_sync"
WAIT_MS = 60_000  # every wait below is on a condition; generous for a loaded 2-core machine


def _log_in(page: Any, stack: Any) -> None:
    """SimpleAuthManager's login page; the fixture wrote the admin password."""
    page.goto(stack.url + "/")
    page.wait_for_url("**/auth/login**", timeout=WAIT_MS)
    page.fill("input[name=username]", ADMIN_USER)
    page.fill("input[name=password]", stack.env.password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/auth/login" not in url, timeout=WAIT_MS)


def _newest_manual_run(stack: Any, after: set[str], timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = stack.api.request("GET", f"/dags/{DAG_ID}/dagRuns", params={"order_by": "-run_after", "limit": 5})
        new = [r for r in runs["dag_runs"] if r["dag_run_id"] not in after]
        if new:
            return str(new[0]["dag_run_id"])
        time.sleep(0.5)
    raise AssertionError("the trigger form did not create a run")


def test_trigger_crm_sync_dry_run_from_the_ui_and_find_it_on_the_m3sh_page(
        airflow_stack: Any, browser_page: Any, artifacts: Path) -> None:
    from playwright.sync_api import expect

    page, base = browser_page, airflow_stack.url
    shot = iter(range(1, 100))

    def snap(name: str, full: bool = False) -> None:
        page.screenshot(path=str(artifacts / f"{next(shot):02d}-{name}.png"), full_page=full)

    try:
        # 1. Log in (SimpleAuthManager's login page; the fixture wrote the admin password).
        page.goto(base + "/")
        page.wait_for_url("**/auth/login**")
        page.fill("input[name=username]", ADMIN_USER)
        page.fill("input[name=password]", airflow_stack.env.password)
        snap("login")
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/auth/login" not in url)

        # 2. Open the DAG and the trigger form; switch dry_run (and full_resync) on.
        page.goto(f"{base}/dags/{DAG_ID}")
        expect(page.get_by_text("sync_to_m3ter").first).to_be_visible()
        before = {r["dag_run_id"] for r in airflow_stack.api.request(
            "GET", f"/dags/{DAG_ID}/dagRuns", params={"limit": 100})["dag_runs"]}
        page.get_by_role("button", name="Trigger Dag").click()
        dialog = page.get_by_role("dialog").filter(has_text=f"Trigger Dag - {DAG_ID}")
        expect(dialog.get_by_text("Run Parameters")).to_be_visible()
        # No logical date: a manual run "now", like the REST API's logical_date=null. (The test config starts
        # the schedule in a year so no scheduled run interferes, and tasks never run for logical dates
        # before their start date.)
        page.get_by_test_id("datetime-input").click()
        page.get_by_role("button", name="Clear start date").click()
        dialog.get_by_text(f"Trigger Dag - {DAG_ID}").click()  # closes the date popover
        expect(page.get_by_test_id("datetime-input")).to_have_text("Select date and time")
        for param in ("dry_run", "full_resync"):
            switch = dialog.locator(f"input[name=element_{param}]")
            dialog.locator(f"label:has(input[name=element_{param}])").click()
            expect(switch).to_be_checked()
        snap("trigger-form")
        dialog.get_by_role("button", name="Trigger", exact=True).click()
        run_id = _newest_manual_run(airflow_stack, before)

        # 3. The run's page in the UI shows it succeed.
        states = airflow_stack.api.wait_runs({DAG_ID: run_id}, timeout_s=600)
        assert states[DAG_ID] == "success", airflow_stack.tail()
        run = airflow_stack.api.run(DAG_ID, run_id)
        assert run["conf"]["dry_run"] is True and run["conf"]["full_resync"] is True and run["logical_date"] is None
        tis = {t["task_id"]: t["state"] for t in airflow_stack.api.task_instances(DAG_ID, run_id)}
        assert tis.get("sync_to_m3ter") == "success", tis
        page.goto(f"{base}/dags/{DAG_ID}/runs/{quote(run_id, safe='')}")
        expect(page.get_by_text(run_id).first).to_be_visible()
        expect(page.get_by_text("success", exact=False).first).to_be_visible()
        snap("run-succeeded")

        # 4. The "m3sh" navigation entry embeds the m3sh page; it lists this run with its dry-run result.
        page.locator("a[href$='/plugin/m3sh']").first.click()
        page.wait_for_url("**/plugin/m3sh")
        view = page.frame_locator("iframe").first
        row = view.locator("#runs tr", has_text=run_id)
        expect(row).to_be_visible()
        expect(row.locator(".badge.success")).to_have_text("success")
        expect(row).to_contain_text("dry_run=True")
        expect(row).to_contain_text("CRM records")
        crm = view.locator("#crm")
        expect(crm.locator("tr", has_text="salesforce").first).to_contain_text("dry run")
        expect(view.locator("text=Could not read")).to_have_count(0)
        snap("m3sh-view-in-airflow")

        # The page itself, full length, for a look at the layout (and the cookie login outside the iframe).
        page.goto(f"{base}/m3sh/ui/")
        expect(page.locator("h1")).to_have_text("m3sh")
        snap("m3sh-page", full=True)
    except Exception:
        snap("failure", full=True)
        raise


def _seed_audit_trail(stack: Any) -> dict[str, Any]:
    """Firings of two rules of this test's own, through the real ledger, in the stack's S3 storage:
    rule ``a`` 60 firings (all done), rule ``b`` 15 (every third failed), newest first by minute."""
    from concurrent.futures import ThreadPoolExecutor

    from m3sh.automation.ledger import Ledger
    from m3sh.automation.rules import Firing
    from m3sh.config import load_config
    from m3sh.storage import Storage

    storage = Storage.from_config(load_config(stack.env.config_path).storage)
    tag = uuid.uuid4().hex[:6]
    rule_a, rule_b = f"audit_e2e_{tag}_a", f"audit_e2e_{tag}_b"
    now = dt.datetime.now(dt.UTC)
    plan = [(rule_a, n, "done") for n in range(60)] + [(rule_b, n, "failed" if n % 3 == 0 else "done")
                                                        for n in range(15)]

    def write(item: tuple[str, int, str]) -> None:
        rule, n, outcome = item
        at = now - dt.timedelta(minutes=n + (0 if rule == rule_a else 500))
        ledger = Ledger(storage, clock=lambda: at)
        firing = Firing(rule, "balance_below", f"acc-{n % 3}", "balance", f"bal-{n}", f"credits={n}",
                        at.isoformat(), f"e2e-{n % 3}.example")
        claim = ledger.claim(firing, "manual__e2e")
        ledger.finish(claim, outcome, "switch_plan: RuntimeError: e2e" if outcome == "failed" else None)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, plan))
    return {"a": rule_a, "b": rule_b, "b_failed": sum(1 for r, _, o in plan if r == rule_b and o == "failed")}


def test_audit_trail_from_the_m3sh_page_filters_and_pages(airflow_stack: Any, browser_page: Any,
                                                          artifacts: Path) -> None:
    from playwright.sync_api import expect

    page, base = browser_page, airflow_stack.url
    shot = iter(range(1, 100))

    def snap(name: str, full: bool = False) -> None:
        page.screenshot(path=str(artifacts / f"{next(shot):02d}-{name}.png"), full_page=full)

    rules = _seed_audit_trail(airflow_stack)
    try:
        _log_in(page, airflow_stack)
        # 1. The m3sh entry in the navigation; its automation section links to the audit trail.
        page.goto(f"{base}/plugin/m3sh")
        view = page.frame_locator("iframe").first
        expect(view.locator("#triggers")).to_contain_text("newest firings", timeout=WAIT_MS)
        view.locator("#open-audit").click()
        expect(view.locator("h1")).to_have_text("Audit trail", timeout=WAIT_MS)
        snap("audit-trail")

        # 2. Filter: rule b, failed. The total, the rows and the outcome counts follow.
        view.locator("select[name=rule]").select_option(rules["b"])
        view.locator("select[name=outcome]").select_option("failed")
        view.get_by_role("button", name="Apply").click()
        expect(view.locator("#audit-total")).to_have_text(str(rules["b_failed"]), timeout=WAIT_MS)
        rows = view.locator("#audit tbody tr")
        expect(rows).to_have_count(rules["b_failed"], timeout=WAIT_MS)
        for i in range(rules["b_failed"]):
            expect(rows.nth(i)).to_contain_text(rules["b"])
            expect(rows.nth(i).locator(".badge")).to_have_text("failed")
        expect(rows.first).to_contain_text("switch_plan: RuntimeError: e2e")
        expect(view.locator(".card", has_text="done")).to_contain_text("10")  # the other outcome of the rule
        snap("filtered", full=True)

        # 3. Rule a: 60 firings, 50 a page; "older" shows the last 10.
        view.locator("select[name=rule]").select_option(rules["a"])
        view.locator("select[name=outcome]").select_option("")
        view.get_by_role("button", name="Apply").click()
        expect(view.locator("#audit-total")).to_have_text("60", timeout=WAIT_MS)
        expect(rows).to_have_count(50, timeout=WAIT_MS)
        view.locator("a[rel=next]").first.click()
        expect(view.locator("#audit-range").first).to_have_text("51\u201360", timeout=WAIT_MS)
        expect(rows).to_have_count(10, timeout=WAIT_MS)
        expect(rows.last).to_contain_text("e2e-2.example")  # the oldest firing (n = 59)
        expect(view.locator("a[rel=next]")).to_have_count(0)
        snap("page-2", full=True)
    except Exception:
        snap("failure", full=True)
        raise
