"""The sales API over real HTTP (a `bentoml serve` process): known series and posted histories, 4xx with a reason for
every kind of bad request, its OpenAPI document, and the Gradio "Sales" tab drawing a forecast in Chromium."""

import datetime as dt
import json

import numpy as np
import pytest

from serving.sales_predictor import PostedSeries, SalesPredictor
from serving.server import start_server, stop_server, wait_ready
from tests.conftest import assert_api_honours_its_document, free_port, post, run_cli, running_app


@pytest.fixture(scope="module")
def api(sales_ckpt, tmp_path_factory):
    port, log = free_port(), tmp_path_factory.mktemp("logs") / "serve.log"
    process = start_server("sales", sales_ckpt, port, "onnx", log=log)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log=log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process)


def test_a_known_series_is_forecast_from_its_stored_history(api, sales_ckpt):
    predictor = SalesPredictor(sales_ckpt, "torch")
    series = predictor.series.iloc[0]
    status, body = post(f"{api}/forecast", {"series_id": f"{series['item_id']}_{series['store_id']}", "horizon": 10})
    assert status == 200, body
    assert body["series_id"] == series["id"] and len(body["forecast"]) == len(body["dates"]) == 10
    assert dt.date.fromisoformat(body["dates"][0]) == predictor.last_date + dt.timedelta(days=1)
    expected = predictor.forecast_known(series["id"], 10)["forecast"]
    assert body["forecast"] == pytest.approx(expected, abs=1e-3)  # ONNX over HTTP = torch in-process
    assert all(v >= 0 for v in body["forecast"])
    low, high = body["quantiles"]["0.1"], body["quantiles"]["0.9"]  # the 80% interval unless others are asked
    assert list(body["quantiles"]) == ["0.1", "0.9"]
    assert len(low) == 10 and all(0 <= a <= b for a, b in zip(low, high, strict=True)) and low != high


def test_intervals_at_the_levels_asked_are_nested(api, sales_ckpt):
    series = SalesPredictor(sales_ckpt, "torch").series["id"].iloc[1]
    status, body = post(f"{api}/forecast", {"series_id": series, "horizon": 28, "level": [95, 50, 80]})
    assert status == 200, body
    bounds = body["quantiles"]
    assert list(bounds) == ["0.025", "0.1", "0.25", "0.75", "0.9", "0.975"]
    for inner, outer in (("0.1", "0.025"), ("0.25", "0.1")):
        assert all(0 <= o <= i for i, o in zip(bounds[inner], bounds[outer], strict=True))
        assert sum(bounds[outer]) < sum(bounds[inner]) or not any(bounds[inner])
    for inner, outer in (("0.9", "0.975"), ("0.75", "0.9")):
        assert all(i <= o for i, o in zip(bounds[inner], bounds[outer], strict=True))
        assert sum(bounds[outer]) > sum(bounds[inner])
    assert post(f"{api}/forecast", {"series_id": series, "level": []})[1]["quantiles"] is None


def test_many_series_in_one_request_answer_as_one_at_a_time(api, sales_ckpt):
    ids = SalesPredictor(sales_ckpt, "torch").series["id"].tolist()
    asked = [ids[2], ids[0], ids[2], *ids[3:6]]  # in any order, repeats answered again
    status, body = post(f"{api}/forecast_many", {"series_ids": asked, "horizon": 14, "level": [80, 95]})
    assert status == 200, body
    assert [f["series_id"] for f in body["forecasts"]] == asked
    for sid, many in zip(asked, body["forecasts"], strict=True):
        one = post(f"{api}/forecast", {"series_id": sid, "horizon": 14, "level": [80, 95]})[1]
        assert many["forecast"] == pytest.approx(one["forecast"], abs=1e-4)
        assert many["quantiles"]["0.975"] == pytest.approx(one["quantiles"]["0.975"], abs=1e-4)
        assert many["dates"] == one["dates"]


def test_known_series_get_the_reports_best_row_or_the_row_asked_for(api, sales_ckpt, tmp_path):
    report = json.loads((sales_ckpt / "report.json").read_text())
    scored_out_of_sample = [row for row in report["models"] if row["model"] != "ensemble_fitted"]
    best = min(scored_out_of_sample, key=lambda row: row["val_wrmsse"])["model"]
    assert report["served"]["model"] == best and set(report["served"]["test_coverage"]) == {"50", "80", "95"}
    predictor = SalesPredictor(sales_ckpt, "torch")
    sid = predictor.series["id"].iloc[0]
    assert post(f"{api}/forecast", {"series_id": sid})[1]["model"] == best
    start = predictor.last_date - dt.timedelta(days=99)
    posted = {"history": {"sales": predictor.sales[0, -100:].tolist(), "start_date": start.isoformat()}}
    assert post(f"{api}/forecast", posted)[1]["model"] == "lstm"  # a history no baseline was fitted on
    # a row asked for by name: seasonal naive repeats the series' last week
    port, log = free_port(), tmp_path / "naive.log"
    process = start_server("sales", sales_ckpt, port, "onnx", options={"model": "seasonal_naive"}, log=log)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log=log)
        status, body = post(f"http://127.0.0.1:{port}/forecast", {"series_id": sid, "level": [80]})
    finally:
        stop_server(process)
    assert status == 200 and body["model"] == "seasonal_naive", body
    assert body["forecast"] == pytest.approx(np.tile(predictor.sales[0, -7:], 4), abs=1e-3)
    assert all(lo <= f <= hi for lo, f, hi in zip(body["quantiles"]["0.1"], body["forecast"], body["quantiles"]["0.9"],
                                                  strict=True))


def test_serving_a_row_the_report_does_not_have_is_refused_at_start(sales_ckpt):
    result = run_cli("serve", "sales", "--checkpoint", sales_ckpt, "--port", str(free_port()), "--model", "nope")
    assert result.returncode != 0
    assert "--model nope: not one of the evaluation's rows" in result.stderr and "seasonal_naive" in result.stderr


def long_rows(uid: str, start: dt.date, sales: list[float]) -> list[dict]:
    return [{"unique_id": uid, "ds": (start + dt.timedelta(days=k)).isoformat(), "y": y} for k, y in enumerate(sales)]


def test_posted_histories_in_the_long_shape_answer_as_one_posted_history_each(api, sales_ckpt):
    predictor = SalesPredictor(sales_ckpt, "torch")
    start = predictor.last_date - dt.timedelta(days=99)
    histories = {f"store-{i}": predictor.sales[i, -100:].tolist() for i in (3, 1)}
    rows = [row for uid, sales in histories.items() for row in long_rows(uid, start, sales)]
    rows = rows[::-1]  # rows in any order: series answered in order of first appearance, days sorted
    status, body = post(f"{api}/forecast_many", {"histories": rows, "horizon": 14})
    assert status == 200, body
    assert [f["series_id"] for f in body["forecasts"]] == ["store-1", "store-3"]
    for answer in body["forecasts"]:
        one = post(f"{api}/forecast", {"history": {"sales": histories[answer["series_id"]],
                                                   "start_date": start.isoformat()}, "horizon": 14})[1]
        assert answer["forecast"] == pytest.approx(one["forecast"], abs=1e-4) and answer["model"] == "lstm"
        assert answer["quantiles"]["0.9"] == pytest.approx(one["quantiles"]["0.9"], abs=1e-4)


GAP = long_rows("a", dt.date(2015, 1, 1), [1.0] * 20) + long_rows("a", dt.date(2015, 1, 25), [1.0] * 20)
TWICE = long_rows("a", dt.date(2015, 1, 1), [1.0] * 40) + long_rows("a", dt.date(2015, 1, 5), [2.0])


@pytest.mark.parametrize(("body", "where", "fragment"), [
    ({"histories": GAP}, ["histories", 20, "ds"], "'a': no values from 2015-01-21 to 2015-01-24"),
    ({"histories": TWICE}, ["histories", 40, "ds"], "'a': 2015-01-05 is given twice"),
    ({"histories": long_rows("a", dt.date(2015, 1, 1), [1.0] * 40) + long_rows("b", dt.date(2015, 1, 1), [1.0] * 5)},
     ["histories", 40, "unique_id"], "'b': 5 days; at least 28"),
    ({"histories": long_rows("a", dt.date(2015, 1, 1), [0.0] * 40)}, ["histories", 0, "y"], "no sales at all"),
    ({"histories": long_rows("a", dt.date(2001, 1, 1), [1.0] * 40)}, ["histories", 0, "ds"], "before the calendar"),
    ({"histories": long_rows("a", dt.date(2015, 1, 1), [1.0] * 39 + [-1.0])}, ["histories", 39, "y"],
     "greater than or equal to 0"),
    ({"series_ids": ["x"], "histories": long_rows("a", dt.date(2015, 1, 1), [1.0] * 40)}, ["series_ids"],
     "exactly one of series_ids"),
    ({"series_ids": ["NOPE_1", "NOPE_2"]}, ["series_ids"], "unknown series_id 'NOPE_1', 'NOPE_2'"),
    ({"series_ids": []}, ["series_ids"], "at least 1 item"),
    ({"series_ids": ["x"] * 1001}, ["series_ids"], "at most 1000 items"),
    ({"series_ids": ["x"], "level": [100]}, ["level", 0], "less than or equal to 99"),
    ({"series_ids": ["x"], "level": [80.5]}, ["level", 0], "valid integer"),
])
def test_bad_many_series_requests_get_400_with_where_and_why(api, body, where, fragment):
    import json

    status, text = post(f"{api}/forecast_many", body)
    assert status == 400, text
    detail = json.loads(text)["detail"][0]
    assert detail["loc"][-len(where):] == where and fragment in detail["msg"], detail


def test_a_posted_history_is_forecast(api, sales_ckpt):
    predictor = SalesPredictor(sales_ckpt, "torch")
    sales = predictor.sales[0, -200:].tolist()
    start = predictor.last_date - dt.timedelta(days=199)
    body = {"history": {"sales": sales, "start_date": start.isoformat(), "state_id": predictor.series["state_id"][0],
                        "item_id": predictor.series["item_id"][0]}, "horizon": 28}
    status, answer = post(f"{api}/forecast", body)
    assert status == 200, answer
    first_day = (predictor.last_date + dt.timedelta(days=1)).isoformat()
    assert answer["series_id"] is None and answer["dates"][0] == first_day
    local = predictor.forecast_posted(PostedSeries(sales, start, None, body["history"]), 28)
    assert answer["forecast"] == pytest.approx(local["forecast"], abs=1e-3)


@pytest.mark.parametrize(("body", "where", "fragment"), [
    ({"series_id": "NOPE_1"}, ["series_id"], "unknown series_id 'NOPE_1'"),
    ({}, ["series_id"], "exactly one of series_id"),
    ({"series_id": "x", "horizon": 29}, ["horizon"], "less than or equal to 28"),
    ({"series_id": "x", "horizon": 0}, ["horizon"], "greater than or equal to 1"),
    ({"series_id": "x", "level": [0]}, ["level", 0], "greater than or equal to 1"),
    ({"series_id": "x", "level": list(range(1, 12))}, ["level"], "at most 10 items"),
    ({"history": {"sales": [1.0] * 10, "start_date": "2015-01-01"}}, ["history", "sales"], "at least 28"),
    ({"history": {"sales": [1.0] * 40 + [-1.0], "start_date": "2015-01-01"}}, ["history", "sales", 40],
     "greater than or equal to 0"),
    ({"history": {"sales": [0.0] * 40, "start_date": "2015-01-01"}}, ["history", "sales"], "no sales at all"),
    ({"history": {"sales": [1.0] * 40, "start_date": "2016-06-01"}}, ["history", "start_date"], "past the calendar"),
    ({"history": {"sales": [1.0] * 40, "start_date": "2001-01-01"}}, ["history", "start_date"], "before the calendar"),
    ({"history": {"sales": [1.0] * 40, "start_date": "not a date"}}, ["history", "start_date"], "date"),
    ({"history": {"sales": [1.0] * 40, "start_date": "2015-01-01", "prices": [1.0] * 3}}, ["history", "prices"],
     "3 prices for 40 days"),
])
def test_bad_requests_get_400_with_where_and_why(api, body, where, fragment):
    import json

    status, text = post(f"{api}/forecast", body)
    assert status == 400, text
    detail = json.loads(text)["detail"][0]
    assert detail["loc"][-len(where):] == where and fragment in detail["msg"], detail


def test_the_api_answers_what_its_openapi_document_declares(api):
    # Refusals by meaning that no schema states (an id the model does not know, dates past the calendar, both or
    # neither of series_id and history) are 400s with the documented body, so schema-valid data may be refused:
    # every other check, the 400 bodies' conformance included, still runs. For the same reason schemathesis warns
    # that most generated requests are refused (random ids are unknown); the known-id tests above cover the 200s.
    assert_api_honours_its_document(api, exclude_checks=("positive_data_acceptance",),
                                    allowed_warning="mostly rejected generated data")


def test_gradio_sales_tab_draws_history_and_forecast_in_a_headless_browser(sales_ckpt, api, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from apps.tabs.sales import SHOWN_DAYS

    predictor = SalesPredictor(sales_ckpt, "torch")
    with running_app(tmp_path, "--sales-checkpoint", sales_ckpt, "--sales-api", api) as url:
        browser.get(url)
        wait = WebDriverWait(browser, 90, poll_frequency=0.5)
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#sales-submit")).click()
        drawn = wait.until(lambda d: d.execute_script(CHART_SCRIPT) if d.execute_script(CHART_SCRIPT)["forecast"]
                           else None)
        browser.save_screenshot(str(tmp_path / "sales-tab.png"))
    store = sorted(predictor.series["store_id"])[0]  # what the tab picks first
    item = sorted(predictor.series.loc[predictor.series["store_id"] == store, "item_id"])[0]
    assert drawn["history"] >= SHOWN_DAYS - 1 and drawn["forecast"] == predictor.horizon - 1, drawn
    assert drawn["interval"], "the 80% interval is shaded"
    assert drawn["title"] == f"{item} at {store}", drawn
    served = json.loads((sales_ckpt / "report.json").read_text())["served"]["model"]
    assert drawn["legend"].startswith(f"forecast by {served} ("), drawn  # says which model answered
    assert any("-" in tick for tick in drawn["x_ticks"]), drawn  # dates on a time axis, not categories
    assert len(drawn["table_rows"]) >= 1


# What the chart draws, read from its SVG: segments of the history and forecast lines, the x ticks, the title.
CHART_SCRIPT = """
const svg = document.querySelector('#sales-chart svg');
const result = {history: 0, forecast: 0, interval: false, x_ticks: [], title: '', legend: '', table_rows: []};
if (!svg) return result;
const segments = id => {
  const path = svg.querySelector(`g[id="${id}"] path`);
  return path ? (path.getAttribute('d').match(/L/g) || []).length : 0;
};
result.history = segments('sales-history');
result.forecast = segments('sales-forecast');
result.interval = !!svg.querySelector('g[id="sales-interval"] path');
result.x_ticks = [...svg.querySelectorAll('g[id^="xtick_"] text')].map(t => t.textContent);
result.title = [...svg.querySelectorAll('text')].map(t => t.textContent).find(t => t.includes(' at ')) || '';
result.legend = [...svg.querySelectorAll('text')].map(t => t.textContent).find(t => t.startsWith('forecast by')) || '';
result.table_rows = [...document.querySelectorAll('#sales-table tbody tr')].map(r => r.textContent);
return result;
"""


def test_bentomls_client_lists_and_calls_the_route(api, sales_ckpt):
    import bentoml

    series = SalesPredictor(sales_ckpt, "torch").series.iloc[0]["id"]
    with bentoml.SyncHTTPClient(api) as client:
        assert list(client.endpoints) == ["forecast", "forecast_many"]
        answer = client.forecast(series_id=series, horizon=7)
    assert answer["forecast"] == post(f"{api}/forecast", {"series_id": series, "horizon": 7})[1]["forecast"]
