"""``m3sh.testing`` as a user meets it: a separate pytest run whose tests only name the fixtures.

The plugin comes from the ``pytest11`` entry point (no ``-p``, no conftest): the user's tests get a
sandbox on free ports, ``m3ter_default`` pointing at it through the environment, and a reset between
tests (what test one wrote is gone in test two).
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = '''
import os

from m3sh.hooks.m3ter import M3terHook


def test_connections_point_at_the_sandbox(m3sh_sandbox):
    url = m3sh_sandbox.endpoints.url("m3ter")
    assert url in os.environ["AIRFLOW_CONN_M3TER_DEFAULT"]
    assert M3terHook().settings.base_url.rstrip("/") == url.rstrip("/")


def test_one_writes_through_the_hook(m3sh_fresh_sandbox):
    hook = M3terHook()
    seeded = {a["code"] for a in hook.list_accounts()}
    assert seeded and "user-test" not in seeded
    hook.create_account({"code": "user-test", "name": "User Test", "emailAddress": "u@t.example"})
    assert "user-test" in {a["code"] for a in hook.list_accounts()}


def test_two_starts_from_the_seed_again(m3sh_fresh_sandbox):
    assert "user-test" not in {a["code"] for a in M3terHook().list_accounts()}
'''


@pytest.mark.sandbox
def test_user_suite_gets_a_fresh_sandbox_per_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user_dags=USER_TESTS)
    # the timeout covers a cold sandbox start on a busy machine
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", "-o", "timeout=600", timeout=900)
    result.assert_outcomes(passed=3)
