"""The end-to-end stacks' model configs: valid, and with no scheduled run due while a test module runs.

A stack that starts shortly before midnight UTC would otherwise see the scheduler start a
second nightly run in the middle of the module, which deploys a version nobody asked for.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from airflow_stack import PROJECT_ROOT, models_off_the_clock
from croniter import croniter

from include.mlops.config import load_model_configs

BUNDLED = PROJECT_ROOT / "include" / "models"


def test_every_schedule_last_fired_and_fires_next_hours_away(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    folder = models_off_the_clock(BUNDLED, tmp_path / "models")
    configs = load_model_configs(folder)
    assert sorted(c.name for c in configs) == sorted(c.name for c in load_model_configs(BUNDLED))
    for config in configs:
        for schedule in (config.schedule, config.monitor.schedule):
            cron = croniter(schedule, now)
            next_fire = cron.get_next(dt.datetime)
            last_fire = croniter(schedule, now).get_prev(dt.datetime)
            # A daily schedule: the latest interval ended about 12 hours ago, so the DAG's run of it
            # starts once the DAG is unpaused; the next is about 12 hours away.
            assert dt.timedelta(hours=11) <= next_fire - now <= dt.timedelta(hours=13), (schedule, now)
            assert dt.timedelta(hours=11) <= now - last_fire <= dt.timedelta(hours=13), (schedule, now)


def test_builders_travel_with_their_configs(tmp_path: Path) -> None:
    folder = models_off_the_clock(BUNDLED, tmp_path / "models")
    for config in load_model_configs(folder):
        assert config.builder_path.parent == folder and config.builder_path.is_file()
