"""The dashboard page in headless Chromium against a running gateway (`serve --demo`).

usage: python3 dashboard_check.py http://127.0.0.1:PORT ADMIN_TOKEN SCREENSHOT.png CLIENT_TOKEN CONFIG.toml
"""
import sys
import tempfile

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

base, admin, screenshot = sys.argv[1], sys.argv[2], sys.argv[3]
options = Options()
options.binary_location = "/usr/bin/chromium"
for flag in [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    f"--user-data-dir={tempfile.mkdtemp()}", "--window-size=1200,800",
]:
    options.add_argument(flag)
# Some traffic first, so the page has counts, quota and a circuit to show.
import json
import urllib.request

for _ in range(4):
    request = urllib.request.Request(
        base + "/v1beta/models/gemini-2.0-flash:generateContent",
        data=json.dumps({"contents": [{"parts": [{"text": "hello"}]}]}).encode(),
        headers={"content-type": "application/json", "x-goog-api-key": sys.argv[4]},
    )
    urllib.request.urlopen(request, timeout=10).read()

driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    driver.get(base + "/")
    assert "gemini-gateway" in driver.title
    driver.find_element(By.ID, "token").send_keys(admin)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()
    WebDriverWait(driver, 10).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#keys tbody tr")) >= 2
    )
    rows = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#keys tbody tr")]
    assert any("…0003" in r for r in rows) and any("…0004" in r for r in rows), rows
    WebDriverWait(driver, 10).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#quota tbody tr")) >= 1
    )
    quota = driver.find_element(By.CSS_SELECTOR, "#quota tbody").text
    assert "proj-small" in quota and "rpm" in quota, quota
    WebDriverWait(driver, 10).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#spend tbody tr")) >= 1
    )
    spend = driver.find_element(By.CSS_SELECTOR, "#spend tbody").text
    assert "pool" in spend, spend
    assert driver.find_element(By.ID, "cache").text.startswith("cache:"), driver.find_element(By.ID, "cache").text
    assert admin not in driver.page_source, "the admin token was written into the page"
    assert driver.find_element(By.ID, "token").get_attribute("value") == "", "token kept in the field"
    # Never framed by another site.
    page = urllib.request.urlopen(base + "/", timeout=10)
    assert page.headers["x-frame-options"] == "DENY", dict(page.headers)
    # Manage keys from the page: add one (its value never shown), reset one, re-check the
    # disabled, remove the one added.
    driver.find_element(By.ID, "new-key").send_keys("test-key-0002")
    driver.find_element(By.ID, "new-project").send_keys("proj-broke")
    driver.find_element(By.CSS_SELECTOR, "#add-key button[type=submit]").click()
    # (The table is redrawn every 2 s: read its body's text, and click through the page's own
    # script, so no element goes stale between finding and using it.)
    keys_text = lambda d: d.execute_script("return document.querySelector('#keys tbody').textContent")
    click = lambda selector: driver.execute_script(f"document.querySelector(\"{selector}\").click()")
    WebDriverWait(driver, 10).until(lambda d: "…0002" in keys_text(d))
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "action").text.startswith("added …0002"))
    assert driver.find_element(By.ID, "action").text.startswith("added …0002"), driver.find_element(By.ID, "action").text
    assert driver.find_element(By.ID, "new-key").get_attribute("value") == "", "key kept in the field"
    assert "test-key-0002" not in driver.page_source, "a key was written into the page"
    click("button.reset[data-key='…0003']")
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "action").text.startswith("reset 1 key"))
    driver.find_element(By.ID, "recheck").click()
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "action").text.startswith("re-checked"))
    click("button.remove[data-key='…0002']")
    WebDriverWait(driver, 10).until(lambda d: "…0002" not in keys_text(d))
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "action").text.startswith("removed 1 key(s) like …0002")), driver.find_element(By.ID, "action").text
    # Reload the configuration file from the page: a raised client limit is applied, and the
    # page says so, with the file and the last reload.
    config_file = sys.argv[5]
    with open(config_file + ".partial", "w") as f:
        f.write("[gateway]\nclient_limits = { rpm = 2000 }\n")
    import os
    os.replace(config_file + ".partial", config_file)
    click("#reload")
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "action").text.startswith("reloaded: applied client_limits"))
    WebDriverWait(driver, 10).until(lambda d: "applied client_limits" in d.find_element(By.ID, "config").text)
    assert config_file in driver.find_element(By.ID, "config").text, driver.find_element(By.ID, "config").text
    # A broken file: refused, and said so; the page shows the refusal.
    with open(config_file + ".partial", "w") as f:
        f.write("[gateway]\nclient_limits = { rpm = \"many\" }\n")
    os.replace(config_file + ".partial", config_file)
    click("#reload")
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "action").text.startswith("reload: not reloaded"))
    WebDriverWait(driver, 10).until(lambda d: "refused:" in d.find_element(By.ID, "config").text)
    driver.save_screenshot(screenshot)
    print(f"dashboard: {len(rows)} keys shown; a key added, reset, re-checked and removed from the page; the configuration reloaded, and a broken one refused; screenshot {screenshot}")
finally:
    driver.quit()
