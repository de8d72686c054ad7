"""Drives Debian's Chromium through the dashboard and the status site, as a
person would: log in with a token, watch a service page while its primary
is crashed (the failover appears without a reload), acknowledge a page,
publish an incident update and find it on the public status page without
logging in. Screenshots of each view go to the artifacts folder.

Usage: browser.py BASE_URL ADMIN_TOKEN SERVICE PAGE_SUMMARY ARTIFACTS_DIR
Prints one line per step; exits non-zero (with the reason) on a failure.
"""

import json
import os
import sys
import time
import urllib.request

from playwright.sync_api import expect, sync_playwright

BASE, TOKEN, SERVICE, SUMMARY, ARTIFACTS = sys.argv[1:6]
CHROMIUM = os.environ.get("DROVER_CHROMIUM", "/usr/bin/chromium")


def api(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data, method=method)
    req.add_header("Authorization", "Bearer " + TOKEN)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.loads(r.read() or b"null")


def shot(page, name):
    page.screenshot(path=os.path.join(ARTIFACTS, name + ".png"), full_page=True)


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()

    # Without a session the dashboard shows the login form.
    page.goto(BASE + "/ui/")
    expect(page.locator("input[name=token]")).to_be_visible()
    shot(page, "login")
    page.fill("input[name=token]", "drv_wrong")
    page.click("button[type=submit]")
    expect(page.get_by_role("alert")).to_be_visible()
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(BASE + "/ui/")
    expect(page.get_by_role("heading", name="Fleet")).to_be_visible()
    cookie = [c for c in context.cookies() if c["name"] == "drover_session"][0]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    shot(page, "overview")
    print("logged in", flush=True)

    # A service page, watched while its primary is crashed.
    page.goto(BASE + "/ui/services/" + SERVICE)
    primary = page.locator("tr[data-role=primary]")
    expect(primary).to_have_count(1)
    old = primary.get_attribute("data-instance")
    expect(page.locator("code", has_text=old)).to_be_visible()  # the full id
    api("POST", "/v1/chaos", {"instance": old, "fault": "crash"})
    crashed_at = time.monotonic()
    new_primary = page.locator("tr[data-role=primary][data-state=available]:not([data-instance='%s'])" % old)
    expect(new_primary).to_have_count(1, timeout=30_000)
    print("failover seen on the page after %.1fs without a reload: %s -> %s"
          % (time.monotonic() - crashed_at, old, new_primary.get_attribute("data-instance")), flush=True)
    shot(page, "service")

    # The page opened by an alert, acknowledged with its button.
    page.goto(BASE + "/ui/pages")
    row = page.locator("tr", has_text=SUMMARY)
    expect(row).to_have_count(1)
    shot(page, "pages")
    row.get_by_role("button", name="Acknowledge").click()
    page.wait_for_url("**/ui/pages?acknowledged=*")
    expect(page.locator("tr", has_text=SUMMARY).locator("td").nth(2)).to_have_text("acknowledged")
    print("page acknowledged", flush=True)

    # The pager's weekly chart, server-rendered SVG.
    page.get_by_role("link", name="Pager", exact=True).click()
    page.wait_for_url(BASE + "/ui/pager")
    expect(page.get_by_role("heading", name="Pager", exact=True)).to_be_visible()
    chart = page.locator("svg[data-chart=pages-per-week]")
    expect(chart).to_be_visible()
    expect(chart.locator("rect.bot, rect.human")).not_to_have_count(0)
    shot(page, "pager")
    print("pager chart seen", flush=True)

    # Runbooks and the CVE audit, for the screenshots.
    page.goto(BASE + "/ui/runbooks")
    expect(page.get_by_role("button", name="Dry run").first).to_be_visible()
    shot(page, "runbooks")
    page.goto(BASE + "/ui/images")
    expect(page.get_by_role("heading", name="CVE audit")).to_be_visible()
    expect(page.locator("tr[data-advisory]").first).to_be_visible()
    shot(page, "images")

    # An incident declared and updated from the dashboard, by keyboard-reachable labels.
    page.goto(BASE + "/ui/incidents")
    page.get_by_label("Title").fill("Failover drill in zone a")
    page.get_by_label("Severity").select_option("minor")
    page.get_by_label("PostgreSQL").check()
    page.get_by_role("button", name="Declare and page the incident commander").click()
    page.wait_for_url("**/ui/incidents/*?posted=declared")
    expect(page.get_by_role("status")).to_contain_text("incident commander was paged")
    page.get_by_label("Status").select_option("monitoring")
    page.get_by_label("Message (public)").fill("The drill's failover finished; watching.")
    page.get_by_role("button", name="Publish update").click()
    page.wait_for_url("**/ui/incidents/*?posted=update")
    expect(page.locator("dd[data-status=monitoring]")).to_be_visible()
    page.get_by_label("Note (internal, on the timeline only)").fill("Drill run by the browser test.")
    page.get_by_role("button", name="Add note").click()
    page.wait_for_url("**/ui/incidents/*?posted=note")
    expect(page.locator("tr[data-source=note]")).to_contain_text("Drill run by the browser test.")
    expect(page.locator("tr[data-source=page]").first).to_be_visible()
    shot(page, "incident")
    page.goto(BASE + "/ui/incidents")
    shot(page, "incidents")
    print("incident update posted from the dashboard", flush=True)
    public = browser.new_context(viewport={"width": 1280, "height": 900})
    status = public.new_page()
    status.goto(BASE + "/status")
    expect(status.get_by_text("The drill's failover finished; watching.")).to_be_visible()
    expect(status.get_by_role("heading", name="Failover drill in zone a")).to_be_visible()
    assert not [c for c in public.cookies() if c["name"] == "drover_session"]
    assert status.get_by_text("Drill run by the browser test.").count() == 0, "notes stay internal"
    shot(status, "status")
    # A phone-sized screen still shows the service page's instances.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone.add_cookies([cookie])
    mobile = phone.new_page()
    mobile.goto(BASE + "/ui/services/" + SERVICE)
    expect(mobile.locator("tr[data-role=primary]")).to_have_count(1)
    shot(mobile, "service-phone")
    print("status page shows the update", flush=True)
    browser.close()
