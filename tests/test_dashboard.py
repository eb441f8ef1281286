"""The study dashboard, opened in a real headless Chromium (Debian's package, driven by Playwright;
no browser download), and the MLflow UI for a finished study; layout validation errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from certstudy.errors import SpecError
from conftest import REPO, launch_study, tiny_study

ARTIFACTS = REPO / "test-artifacts"


# --- layouts -------------------------------------------------------------------------------------


def write_layout(tmp_path: Path, data: object) -> str:
    path = tmp_path / "layout.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize(
    "layout, field, message",
    [
        ({"panels": [{"type": "histogram"}]}, "panels.0", "does not match any of the expected tags"),
        ({"panels": [{"type": "top_table", "top": 0}]}, "panels.0.top", "greater than or equal to 1"),
        ({"panels": [{"type": "pareto", "colour": "red"}]}, "panels.0.colour", "Extra inputs are not permitted"),
        ({"panels": []}, "panels", "at least 1 item"),
    ],
)
def test_layout_errors_name_the_field(tmp_path: Path, layout: dict, field: str, message: str) -> None:
    from certstudy.dashboards.layout import load_layout

    with pytest.raises(SpecError, match=rf"layout.yaml: {field.replace('.', '[.]')}: got .*{message}"):
        load_layout(write_layout(tmp_path, layout))


def test_every_shipped_layout_validates_and_a_study_names_one() -> None:
    from certstudy.dashboards.layout import layout_names, load_layout, validate_study

    assert "default" in layout_names()
    for name in layout_names():
        load_layout(name)
    with pytest.raises(SpecError, match="dashboard: got 'fancy'.*no such layout; known: default"):
        validate_study(tiny_study("d", dashboard="fancy"), "s.yaml")


# --- a real study, its dashboard in a browser, the MLflow UI ------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's Chromium, installed by the test set-up when missing (no browser download)."""
    path = shutil.which("chromium")
    if path is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, capture_output=True, timeout=600)
        path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is not installed and cannot be installed here (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    spec = tiny_study(
        "dash",
        training={
            "epochs": 4,
            "batch_size": 128,
            "search": {"lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}},
        },
        evaluation={
            "attack": {"eps": 0.05, "steps": 3},
            "val_subset": 128,
            "test_subset": 200,
            "certifiers": [{"name": "lipschitz"}],
            "radii": {"l2": [0, 0.1, 0.25], "linf": [0, 0.02]},
        },
        search={"num_trials": 5, "max_concurrent": 2, "seed": 0},
        pruning={"pruner": {"name": "threshold", "lower": 0.55, "n_warmup_steps": 1}},
    )
    return launch_study(tmp_path_factory.mktemp("dash"), spec)


@pytest.mark.integration
def test_the_dashboard_renders_every_panel_in_chromium(study: dict, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    work = study["work"]
    page_path = work / "dash" / "dashboard.html"
    assert page_path.exists()  # launch built it
    client = study["client"]
    parent = study["parents"][0]
    assert "dashboard.html" in [a.path for a in client.list_artifacts(parent.info.run_id)]  # it opens in the MLflow UI
    html = page_path.read_text()
    assert "<script src=" not in html and "<link" not in html  # self-contained: no external script or stylesheet
    expected = json.loads(html.split('id="certstudy-panels">', 1)[1].split("</script>", 1)[0])
    states = [t.state.name for t in study["optuna"].get_trials()]
    kinds = {"top_table", "certified_curves", "pareto", "learning_curves", "param_effects", "heatmap"}
    if states.count("COMPLETE") >= 2:
        kinds.add("importances")
    assert not kinds & set(expected["left_out"]), expected

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.goto(page_path.as_uri())
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .main-svg').length > 0", timeout=30000)
        rendered = page.evaluate(
            """() => Array.from(document.querySelectorAll('section.panel')).map(s => {
                 const gd = s.querySelector('.js-plotly-plot');
                 return {id: s.id, type: s.dataset.panel, expected: Number(s.dataset.traces),
                         traces: gd && gd.data ? gd.data.length : -1, svg: s.querySelectorAll('.main-svg').length};
               })"""
        )
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        browser.close()
    assert not errors, errors
    assert {r["type"] for r in rendered} >= kinds
    assert {r["id"]: r["expected"] for r in rendered} == expected["panels"]
    for r in rendered:
        assert r["traces"] == r["expected"] > 0 and r["svg"] > 0, r
    pruned = [t for t in study["optuna"].get_trials() if t.state.name == "PRUNED"]
    if pruned:  # pruned trials are marked on the learning curves
        assert 'name":"pruned"' in html.replace(" ", "")


def _wait_for(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout_s:.0f} s")


@pytest.mark.integration
def test_the_mlflow_ui_shows_the_study_run_and_its_nested_trials(study: dict, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    from certstudy.cli import _free_port

    port = _free_port("127.0.0.1", 5000)
    proc = subprocess.Popen(
        [
            shutil.which("certstudy") or "",
            "ui",
            "--workdir",
            str(study["work"]),
            "--port",
            str(port),
            "--study",
            "dash",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for(f"{base}/health")
        exp_id = study["exp"].experiment_id
        runs = requests.post(
            f"{base}/api/2.0/mlflow/runs/search", json={"experiment_ids": [exp_id], "max_results": 1000}, timeout=10
        ).json()["runs"]
        parent = [
            r for r in runs if any(t["key"] == "certstudy.role" and t["value"] == "study" for t in r["data"]["tags"])
        ]
        assert len(parent) == 1
        pid = parent[0]["info"]["run_id"]
        nested = [
            r for r in runs if any(t["key"] == "mlflow.parentRunId" and t["value"] == pid for t in r["data"]["tags"])
        ]
        assert len(nested) == 5
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{base}/#/experiments/{exp_id}/runs")
            page.wait_for_selector("[role=gridcell] >> text=dash", timeout=60000)  # the study's parent run, by name
            assert page.locator("text=/dash-000\\d-/").count() == 0  # its trials are nested under it...
            page.locator('button[data-component-id*="runnamecellrenderer"]').first.click()  # ...until it is expanded
            page.wait_for_selector("text=/dash-0000-/", timeout=30000)
            names = page.locator("[role=gridcell] >> text=/dash-000\\d-/").all_inner_texts()
            page.screenshot(path=str(ARTIFACTS / "mlflow_ui.png"), full_page=True)
            browser.close()
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=30)
    assert sorted(names) == sorted(r["info"]["run_name"] for r in nested)


@pytest.mark.integration
def test_the_dashboard_draws_what_was_measured_on_axes_that_fit(study: dict, chromium: str) -> None:
    """Certified accuracy as markers at the measured radii only, radius axes from 0 past the largest
    radius, a log axis for the log-searched learning rate, the searched parameters in the top table."""
    from playwright.sync_api import sync_playwright

    page_path = study["work"] / "dash" / "dashboard.html"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(page_path.as_uri())
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .main-svg').length > 0", timeout=30000)
        panels = page.evaluate(
            """() => Array.from(document.querySelectorAll('section.panel')).map(s => {
                 const gd = s.querySelector('.js-plotly-plot');
                 const x = gd.layout.xaxis || {};
                 return {type: s.dataset.panel, title: (x.title || {}).text || '', xtype: x.type, xrange: x.range,
                         modes: gd.data.map(d => d.mode || ''),
                         header: gd.data[0].header ? gd.data[0].header.values : []};
               })"""
        )
        browser.close()
    curves = [p for p in panels if p["type"] == "certified_curves"]
    assert curves and all(set(p["modes"]) == {"markers"} for p in curves), curves
    for p in curves:  # l2 grid up to 0.25, linf up to 0.02
        top = 0.25 if "l2" in p["title"] else 0.02
        assert p["xrange"][0] < 0 < top < p["xrange"][1] < 1.2 * top, p
    lr = [p for p in panels if p["type"] == "param_effects" and p["title"] == "training.lr"]
    assert lr and lr[0]["xtype"] == "log", lr
    (table,) = [p for p in panels if p["type"] == "top_table"]
    assert "training.lr" in table["header"] and "adversarial.eps" in table["header"], table


@pytest.mark.integration
def test_the_experiment_page_opens_on_its_runs_not_the_genai_overview(study: dict, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    from certstudy.cli import _free_port
    from certstudy.study.records.names import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    exp_id = study["exp"].experiment_id
    # as an experiment made before the tag existed: `certstudy ui` tags it when it starts
    study["client"].delete_experiment_tag(exp_id, EXPERIMENT_KIND_TAG)
    port = _free_port("127.0.0.1", 5100)
    proc = subprocess.Popen(
        [shutil.which("certstudy") or "", "ui", "--workdir", str(study["work"]), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        first = proc.stdout.readline() if proc.stdout else ""
        assert first.startswith("MLflow UI for ") and f":{port}" in first, first  # printed once it answers
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        assert study["client"].get_experiment(exp_id).tags.get(EXPERIMENT_KIND_TAG) == EXPERIMENT_KIND
        listed = proc.stdout.readline() if proc.stdout else ""
        printed = re.search(r"^  dash: (http://\S+)$", listed.rstrip("\n"))
        assert printed, listed
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(printed.group(1))  # the study's experiment, as printed
            page.wait_for_selector("[role=gridcell] >> text=dash", timeout=60000)  # the runs table, parent run listed
            assert page.locator("text=No data available").count() == 0 and "/overview" not in page.url, page.url
            page.screenshot(path=str(ARTIFACTS / "mlflow_experiment_page.png"), full_page=True)
            browser.close()
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=30)
    out = proc.stdout.read() if proc.stdout else ""
    assert "--host 0.0.0.0" not in out and "Deprecat" not in out, out  # MLflow's own output stays in its log
