"""The documentation site in headless Chromium, served over HTTP as a reader gets it: from the home
page one click on "Score a catalog file" reaches the page that shows `attrx score`; the site's search
finds a flag; the generated API reference renders. Screenshots go to ATTRX_SCREENSHOTS when set
(`ATTRX_SCREENSHOTS=docs/images pytest tests/integration/test_docs_browser.py`)."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest
from helpers import build_site, shot


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def site_url(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="the documentation site needs the docs extra: pip install -e '.[docs]'")
    site = build_site(tmp_path_factory.mktemp("site"))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_scoring_a_file_is_one_click_from_the_home_page(browser, site_url, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(1280, 1000)
    browser.get(site_url + "/index.html")
    shot(browser, "site-home.png", tmp_path)
    browser.find_element(By.LINK_TEXT, "Score a catalog file").click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith("/scoring-and-scale.html"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Scoring catalog files"
    article = browser.find_element(By.CSS_SELECTOR, "article").text
    assert "attrx score catalog.csv --bundle" in article and "--resume" in article
    shot(browser, "site-scoring.png", tmp_path)


def test_the_search_finds_a_flag_on_its_page(browser, site_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.set_window_size(1280, 1000)
    browser.get(site_url + "/index.html")
    browser.find_element(By.CSS_SELECTOR, "label.md-search__icon, .md-search__input").click()
    box = WebDriverWait(browser, 10).until(lambda d: d.find_element(By.CSS_SELECTOR, "input.md-search__input"))
    box.send_keys("drift-min-products")

    def pages_found(d):  # read in one script call: the results re-render while the index loads
        hrefs = d.execute_script("return [...document.querySelectorAll('.md-search-result__item a')]"
                                 ".map(a => a.href)")
        found = {h.split("#")[0].split("?")[0].rsplit("/", 1)[-1] for h in hrefs}
        return found if {"scoring-and-scale.html", "cli.html"} & found else None

    assert WebDriverWait(browser, 20).until(pages_found, "the search never listed the page with the flag")


def test_the_api_reference_renders_every_route(browser, site_url, tmp_path):
    from selenium.webdriver.common.by import By

    from attrx.service.http.app import openapi_document

    browser.set_window_size(1280, 1000)
    browser.get(site_url + "/reference/http.html")
    headings = {h.text.strip() for h in browser.find_elements(By.CSS_SELECTOR, "article h2")}
    routes = {f"{m.upper()} {p}" for p, ops in openapi_document()["paths"].items() for m in ops}
    assert routes <= headings, routes - headings
    shot(browser, "site-api-reference.png", tmp_path)
