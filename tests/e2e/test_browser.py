"""The Airflow UI in headless Chromium, as a user would use it with m3sh.

A real ``airflow standalone`` (sandbox connections, ``<repo>/dags`` and ``<repo>/plugins``, the
demo config) and Debian's Chromium driven by Playwright: log in, open ``m3sh_crm_sync``, trigger
it through the trigger form with ``dry_run`` (and ``full_resync``) switched on, see the run succeed
in the UI, then open the "m3sh" navigation entry and find that run there with its dry-run counts.
Screenshots of every step go to ``test-artifacts/<test name>/``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from m3sh.airflow_env import ADMIN_USER

pytestmark = [pytest.mark.e2e, pytest.mark.sandbox]
DAG_ID = "m3sh_crm_sync"


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
        states = airflow_stack.api.wait_runs({DAG_ID: run_id}, timeout_s=120)
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
