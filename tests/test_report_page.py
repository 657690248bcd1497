"""The report page opened from disk in headless Chromium: every table and every image renders."""

import shutil

import pytest

from bnexp import report
from test_report import ACT, LR, ExperimentWriter, completed, diverged, epochs

webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[test]')")

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs the Debian packages chromium and chromium-driver (.ci/run installs them)",
)


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,1600"):
        options.add_argument(flag)
    # An explicit driver path keeps Selenium Manager from looking for one online.
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(CHROMEDRIVER))
    yield driver
    driver.quit()


def two_key_sweep(root):
    writer = ExperimentWriter(root, "page", sweep_keys=[LR, ACT])
    for lr in (0.001, 0.1):
        for act in ("relu", "sigmoid"):
            for seed in (0, 1):
                writer.run("bn", seed, {LR: lr, ACT: act}, epochs([0.8, 0.9, 0.95]), completed(0.05 + seed / 100))
                if lr == 0.1 and seed == 0:
                    writer.run("no_bn", seed, {LR: lr, ACT: act}, epochs([0.3, None]), diverged(2))
                else:
                    writer.run("no_bn", seed, {LR: lr, ACT: act}, epochs([0.6, 0.8, 0.9]), completed(0.1 + seed / 50))
    writer.run("bn", 2, {LR: 0.001, ACT: "relu"}, epochs([0.7]))
    return writer.plan(extra_run_ids=["no_bn-s2-lr0.001-relu"])


def test_every_table_and_image_renders_from_disk(tmp_path, browser):
    (out,) = report.write_reports(tmp_path, str(two_key_sweep(tmp_path)))
    browser.get((out / "index.html").as_uri())

    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.clientWidth]);")
    assert len(images) == len(list((out / "plots").glob("*.png"))) == 8
    broken = [alt for alt, complete, natural, shown in images if not (complete and natural > 0 and shown > 0)]
    assert broken == []

    tables = browser.execute_script(
        "return Array.from(document.querySelectorAll('section')).map(s => [s.id,"
        " Array.from(s.querySelectorAll('table')).map(t => [t.rows.length, t.checkVisibility()])]);")
    shown = {section: sizes for section, sizes in tables}
    for section in ("test-error", "paired", "steps", "stability", "parameters", "missing"):
        assert shown[section] and all(rows > 1 and visible for rows, visible in shown[section]), section
    assert shown["test-error"][0][0] == 1 + 8  # header + 4 sweep points x 2 arms
    assert shown["runs"] == [[1 + 17, False]]  # every run with a spec.json, collapsed until opened
    browser.find_element("css selector", "#runs summary").click()
    assert browser.execute_script("return document.querySelector('#runs table').checkVisibility()")
