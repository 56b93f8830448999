"""Model server clients against real HTTP servers on 127.0.0.1: Loupe's protocol and a server
speaking the Label Studio ML backend protocol. No mock of the HTTP layer: every request crosses a
socket and goes through storage.fetch's guard, which lets loopback in only through the allow-list.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import defusedxml.ElementTree as SafeET
import pytest

from labeling.inference.base import ModelInput, ModelOutput, PredictionFailed
from labeling.inference.remote import (
    LabelStudioBackend,
    NativeServer,
    label_config,
    ls_results_to_regions,
    project_uid,
    task_field,
)
from storage.fetch import FetchPolicy
from tests.labeling.modelserver import Answer, Request


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"the client asked a resolver about {host!r}")


REFUSING = FetchPolicy(connect_timeout=2.0, read_timeout=5.0, total_timeout=10.0, resolver=no_dns)
ALLOWED = replace(REFUSING, allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),))
FAST: dict[str, Any] = {"backoff": 0.01, "max_backoff": 2.0}  # retries that do not slow the suite down


def image(key: str, name: str = "", width: int = 640, height: int = 480) -> ModelInput:
    return ModelInput(
        key=key,
        modality="image",
        media_type="image/jpeg",
        meta={"width": width, "height": height},
        read=lambda: b"\xff\xd8",
        url=f"https://objects.example/{key}.jpg?signature=abc",
        name=name or f"{key}.jpg",
    )


def text(key: str, content: str) -> ModelInput:
    return ModelInput(
        key=key,
        modality="text",
        media_type="text/plain",
        meta={"encoding": "utf-8", "length": len(content)},
        read=lambda: ("\ufeff" + content).encode(),
        url=None,
        name=f"{key}.txt",
    )


# --- A native server -------------------------------------------------------------------------------


def face_detector(request: Request, n: int) -> Answer:
    """One face per image; an item whose name contains "fail" is answered with its own error."""
    if request.path == "/health":
        return 200, {"status": "ok", "model": "faces", "labels": ["face"]}
    results = []
    for item in request.body["items"]:
        if "fail" in item["name"]:
            results.append({"key": item["key"], "regions": [], "score": None, "error": "cannot decode"})
            continue
        box = {"x": 1, "y": 2, "width": item["meta"]["width"] / 2, "height": 10}
        region = {"id": "p1", "type": "bbox", "label": "face", "geometry": box, "score": 0.9}
        results.append({"key": item["key"], "regions": [region], "score": 0.9, "error": None})
    return 200, {"results": results[::-1]}  # out of order: results are matched by key


def test_a_native_server_predicts_each_item_and_one_item_can_fail_alone(serve: Callable) -> None:
    server = serve(face_detector)
    client = NativeServer(
        server.url, policy=ALLOWED, model_version="faces-2", params={"threshold": 0.5}, token="s3cret"
    )

    outputs = client.predict([image("1"), image("2", name="fail.jpg"), image("3", width=100)])

    assert [o.error for o in outputs] == [None, "cannot decode", None]
    assert outputs[0].regions[0]["geometry"] == {"x": 1, "y": 2, "width": 320, "height": 10}
    assert outputs[2].regions[0]["geometry"]["width"] == 50
    assert outputs[0].score == 0.9
    [request] = server.requests
    assert request.method == "POST" and request.path == "/predict"
    assert request.headers["Authorization"] == "Bearer s3cret"
    assert request.body["model_version"] == "faces-2"
    assert request.body["params"] == {"threshold": 0.5}
    assert request.body["schema"] is None
    assert request.body["items"][0] == {
        "key": "1",
        "modality": "image",
        "media_type": "image/jpeg",
        "meta": {"width": 640, "height": 480},
        "name": "1.jpg",
        "url": "https://objects.example/1.jpg?signature=abc",
    }


def test_text_items_go_inline_and_media_without_a_url_are_not_sent(serve: Callable) -> None:
    server = serve(lambda request, n: (200, {"results": [{"key": "t", "regions": []}]}))
    client = NativeServer(server.url, policy=ALLOWED)

    outputs = client.predict([text("t", "héllo world"), replace(image("i"), url=None)])

    assert outputs[0] == ModelOutput(regions=[], score=None, error=None)
    assert outputs[1].error is not None and "no URL" in outputs[1].error
    [sent] = server.requests[0].body["items"]
    assert sent["text"] == "héllo world"  # decoded, without the byte order mark
    assert "url" not in sent


def test_an_item_the_server_does_not_answer_gets_an_error(serve: Callable) -> None:
    def forgetful(request: Request, n: int) -> Answer:
        first = request.body["items"][0]
        return 200, {"results": [{"key": first["key"], "regions": [], "score": 0.5}]}

    server = serve(forgetful)
    outputs = NativeServer(server.url, policy=ALLOWED).predict([image("1"), image("2")])

    assert outputs[0].error is None and outputs[0].score == 0.5
    assert outputs[1].error == "the model server returned no result for this item"


def test_malformed_results_are_errors_of_their_items(serve: Callable) -> None:
    def sloppy(request: Request, n: int) -> Answer:
        return 200, {"results": [{"key": "1", "regions": "box"}, {"key": "2", "regions": [], "score": "hi"}]}

    server = serve(sloppy)
    outputs = NativeServer(server.url, policy=ALLOWED).predict([image("1"), image("2")])

    assert "`regions` must be a list" in (outputs[0].error or "")
    assert "`score` must be a number" in (outputs[1].error or "")


def test_a_batch_is_split_into_requests_of_batch_size(serve: Callable) -> None:
    server = serve(face_detector)
    client = NativeServer(server.url, policy=ALLOWED, batch_size=2, concurrency=1)

    outputs = client.predict([image(str(k)) for k in range(5)])

    assert [len(r.body["items"]) for r in server.requests] == [2, 2, 1]
    assert [item["key"] for r in server.requests for item in r.body["items"]] == ["0", "1", "2", "3", "4"]
    assert all(o.error is None and o.regions for o in outputs)


def test_a_failed_request_marks_only_its_own_items(serve: Callable) -> None:
    def picky(request: Request, n: int) -> Answer:
        if any(item["key"] == "2" for item in request.body["items"]):
            return 400, {"detail": "item 2 is too large"}
        return face_detector(request, n)

    server = serve(picky)
    client = NativeServer(server.url, policy=ALLOWED, batch_size=2, concurrency=1, **FAST)

    outputs = client.predict([image(str(k)) for k in range(4)])

    assert [o.error is None for o in outputs] == [True, True, False, False]
    assert outputs[2].error == f"POST {server.url}/predict answered 400: item 2 is too large"
    assert outputs[3].error == outputs[2].error
    assert len(server.requests) == 2  # a 4xx is never retried


def test_server_errors_are_retried_until_the_server_recovers(serve: Callable) -> None:
    def flaky(request: Request, n: int) -> Answer:
        return (500, b"Internal Server Error") if n <= 2 else face_detector(request, n)

    server = serve(flaky)
    outputs = NativeServer(server.url, policy=ALLOWED, retries=3, **FAST).predict([image("1")])

    assert outputs[0].error is None and outputs[0].regions
    assert len(server.requests) == 3


def test_server_errors_past_the_retries_become_item_errors(serve: Callable) -> None:
    server = serve(lambda request, n: (503, {"error": "overloaded"}))

    outputs = NativeServer(server.url, policy=ALLOWED, retries=2, **FAST).predict([image("1"), image("2")])

    assert len(server.requests) == 3
    assert outputs[0].error == f"POST {server.url}/predict answered 503 (after 3 attempts): overloaded"
    assert outputs[1].error == outputs[0].error


def test_retry_after_is_honoured(serve: Callable) -> None:
    def throttled(request: Request, n: int) -> Answer:
        return (429, {"detail": "slow down"}, {"Retry-After": "1"}) if n == 1 else face_detector(request, n)

    server = serve(throttled)
    outputs = NativeServer(server.url, policy=ALLOWED, **FAST).predict([image("1")])

    assert outputs[0].error is None
    first, second = server.requests
    assert second.at - first.at >= 1.0  # the backoff alone would have waited 0.01 s


def test_a_retry_after_beyond_max_backoff_ends_the_retries(serve: Callable) -> None:
    server = serve(lambda request, n: (503, {"detail": "maintenance"}, {"Retry-After": "3600"}))

    started = time.monotonic()
    outputs = NativeServer(server.url, policy=ALLOWED, **FAST).predict([image("1")])

    assert time.monotonic() - started < 2
    assert len(server.requests) == 1
    assert "retry after 3600s" in (outputs[0].error or "")


def test_a_server_slower_than_the_timeout_gives_errors_within_the_deadline(serve: Callable) -> None:
    def sleepy(request: Request, n: int) -> Answer:
        server.stop.wait(10)
        return 200, {"results": []}

    server = serve(sleepy)
    client = NativeServer(server.url, policy=ALLOWED, timeout=0.5, retries=3, batch_size=2, **FAST)

    started = time.monotonic()
    outputs = client.predict([image("1"), image("2"), image("3"), image("4")])
    elapsed = time.monotonic() - started

    assert elapsed < 2.0  # two requests at once, each cut at 0.5 s, timeouts not retried
    assert len(server.requests) == 2
    assert all("timeout" in (o.error or "") for o in outputs)


def test_connection_failures_are_retried_then_reported(serve: Callable) -> None:
    with socket.socket() as probe:  # a port bound and released: nothing listens there
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"

    outputs = NativeServer(url, policy=ALLOWED, retries=2, **FAST).predict([image("1")])

    assert "(after 3 attempts): connection_failed" in (outputs[0].error or "")


def test_requests_to_one_server_never_exceed_its_concurrency_limit(serve: Callable) -> None:
    def slow(request: Request, n: int) -> Answer:
        time.sleep(0.1)
        return face_detector(request, n)

    server = serve(slow)
    clients = [NativeServer(server.url, policy=ALLOWED, concurrency=2, batch_size=1) for _ in range(2)]

    def run(k: int) -> list[ModelOutput]:
        return clients[k % 2].predict([image(f"{k}-{i}") for i in range(3)])

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, range(4)))

    assert len(server.requests) == 12
    assert server.max_active == 2  # used, and never passed, by 4 threads and 2 predictors
    assert all(o.error is None for outputs in results for o in outputs)


def test_an_address_outside_the_allow_list_is_refused_without_a_request(serve: Callable) -> None:
    server = serve(face_detector)
    client = NativeServer(server.url, policy=REFUSING, **FAST)

    outputs = client.predict([image("1")])
    with pytest.raises(PredictionFailed, match="address_not_allowed"):
        client.health()

    assert "address_not_allowed" in (outputs[0].error or "")
    assert server.requests == []


def test_health_returns_the_servers_answer_or_fails(serve: Callable) -> None:
    healthy = serve(face_detector)
    starting = serve(lambda request, n: (200, {"status": "loading"}))

    assert NativeServer(healthy.url, policy=ALLOWED).health() == {
        "status": "ok",
        "model": "faces",
        "labels": ["face"],
    }
    with pytest.raises(PredictionFailed, match="not ok"):
        NativeServer(starting.url, policy=ALLOWED).health()


def test_a_success_that_is_not_json_fails_the_request(serve: Callable) -> None:
    server = serve(lambda request, n: (200, b"<html>login</html>"))

    outputs = NativeServer(server.url, policy=ALLOWED, **FAST).predict([image("1")])

    assert "not_json" in (outputs[0].error or "")
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"concurrency": 0}, "concurrency"),
        ({"token": "a\r\nX-Injected: 1"}, "token"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_settings_that_cannot_work_are_refused_up_front(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NativeServer("http://127.0.0.1:9", policy=ALLOWED, **kwargs)


@pytest.mark.parametrize("url", ["ftp://models/", "http:///predict", "http://models/?x=1"])
def test_base_urls_that_are_not_http_servers_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        NativeServer(url, policy=ALLOWED)


# --- A Label Studio ML backend ---------------------------------------------------------------------


def ls_backend(request: Request, n: int) -> Answer:
    """Answers like label-studio-ml-backend: a box in percentages and a choice per task."""
    if request.path == "/health":
        return 200, {"status": "UP", "model_class": "Detector"}
    if request.path == "/setup":
        return 200, {"model_version": "detector-7"}
    predictions = []
    for task in request.body["tasks"]:
        box = {
            "id": f"b{task['id']}",
            "from_name": "bbox",
            "to_name": "image",
            "type": "rectanglelabels",
            "original_width": 10,
            "original_height": 10,
            "value": {"x": 10, "y": 20, "width": 50, "height": 25, "rotation": 0, "rectanglelabels": ["car"]},
            "score": 0.8,
        }
        rotated = {
            "id": f"r{task['id']}",
            "from_name": "bbox",
            "to_name": "image",
            "type": "rectanglelabels",
            "value": {"x": 0, "y": 0, "width": 50, "height": 50, "rotation": 90, "rectanglelabels": ["bus"]},
        }
        choice = {"from_name": "choice", "to_name": "image", "type": "choices", "value": {"choices": ["day"]}}
        predictions.append({"result": [box, rotated, choice], "score": 0.7, "model_version": "detector-7"})
    return 200, {"results": predictions}


def test_a_label_studio_backend_is_set_up_then_predicts_in_pixels(serve: Callable) -> None:
    server = serve(ls_backend)
    config = label_config(modality="image", outputs=["bbox", "classification"], labels=["car", "bus", "day"])
    client = LabelStudioBackend(
        server.url,
        policy=ALLOWED,
        label_config=config,
        project=project_uid(12, datetime(2024, 1, 2, tzinfo=UTC)),
        model_version="v1",
        params={"threshold": 0.4},
    )

    outputs = client.predict([image("41", width=200, height=100), image("42", width=400, height=300)])
    client.predict([image("43")])

    assert server.paths() == ["/setup", "/predict", "/predict"]  # set up once
    setup, predict, _ = server.requests
    assert setup.body == {
        "project": "12.1704153600",
        "schema": config,
        "hostname": "",
        "access_token": "",
        "extra_params": None,
        "model_version": "v1",
    }
    assert client.setup_model_version == "detector-7"
    assert predict.body["tasks"] == [
        {"id": 41, "data": {"image": "https://objects.example/41.jpg?signature=abc"}},
        {"id": 42, "data": {"image": "https://objects.example/42.jpg?signature=abc"}},
    ]
    assert predict.body["label_config"] == config
    assert predict.body["project"] == "12.1704153600"
    assert predict.body["params"] == {"threshold": 0.4, "context": None}

    first, second = outputs
    assert first.error is None and first.score == 0.7
    box, rotated, choice = first.regions
    # Percentages of the item's probed size (not of original_width/height), in pixels.
    assert box == {
        "id": "b41",
        "type": "bbox",
        "label": "car",
        "attributes": {},
        "geometry": {"x": 20.0, "y": 20.0, "width": 100.0, "height": 25.0},
        "score": 0.8,
    }
    # Label Studio rotates about the top-left corner; Loupe keeps the centre.
    assert rotated["type"] == "rotated_bbox" and rotated["label"] == "bus"
    assert rotated["geometry"] == {"cx": -25.0, "cy": 50.0, "width": 100.0, "height": 50.0, "angle": 90.0}
    assert rotated["score"] == 0.7  # the prediction's score, lacking its own
    assert choice["type"] == "classification" and choice["label"] == "day"
    assert second.regions[0]["geometry"] == {"x": 40.0, "y": 60.0, "width": 200.0, "height": 75.0}


def test_a_label_studio_backend_builds_a_config_per_modality(serve: Callable) -> None:
    def spans(request: Request, n: int) -> Answer:
        if request.path == "/setup":
            return 200, {"model_version": "ner"}
        results = [
            {
                "result": [
                    {
                        "from_name": "label",
                        "to_name": "text",
                        "type": "labels",
                        "value": {"start": 0, "end": 5, "text": "héllo", "labels": ["GREETING"]},
                    }
                ]
            }
            for _ in request.body["tasks"]
        ]
        return 200, results  # an older backend: a bare list

    server = serve(spans)
    client = LabelStudioBackend(
        server.url, policy=ALLOWED, outputs=["span", "classification"], labels=["GREETING"]
    )

    outputs = client.predict([text("a", "héllo world"), replace(image("b"), modality="pointcloud")])

    assert outputs[0].regions == [
        {
            "id": "r1",
            "type": "span",
            "label": "GREETING",
            "attributes": {},
            "geometry": {"start": 0, "end": 5, "text": "héllo"},
        }
    ]
    assert "pointcloud" in (outputs[1].error or "")
    setup, predict = server.requests
    assert task_field(setup.body["schema"]) == ("text", True)
    assert predict.body["tasks"] == [{"id": 1, "data": {"text": "héllo world"}}]  # key "a": a position


def test_a_label_studio_backend_answering_another_number_of_predictions_fails_the_request(
    serve: Callable,
) -> None:
    def short(request: Request, n: int) -> Answer:
        if request.path == "/setup":
            return 200, {}
        return 200, {"results": [{"result": []}]}

    server = serve(short)
    client = LabelStudioBackend(server.url, policy=ALLOWED, outputs=["bbox"], labels=["car"])

    outputs = client.predict([image("1"), image("2")])

    assert all(o.error == f"POST {server.url}/predict answered 1 predictions for 2 tasks" for o in outputs)


def test_a_failed_setup_fails_the_items_and_is_tried_again_next_time(serve: Callable) -> None:
    def broken_then_fine(request: Request, n: int) -> Answer:
        if n == 1:
            return 422, {"detail": "no RectangleLabels in the config"}
        return ls_backend(request, n)

    server = serve(broken_then_fine)
    client = LabelStudioBackend(server.url, policy=ALLOWED, outputs=["bbox"], labels=["car"], **FAST)

    failed = client.predict([image("1")])
    worked = client.predict([image("1")])

    assert "answered 422: no RectangleLabels in the config" in (failed[0].error or "")
    assert worked[0].error is None
    assert server.paths() == ["/setup", "/setup", "/predict"]


def test_results_that_cannot_be_converted_are_left_out_or_fail_their_item(serve: Callable) -> None:
    def brushes(request: Request, n: int) -> Answer:
        if request.path == "/setup":
            return 200, {}
        brush = {"type": "brushlabels", "value": {"format": "rle", "rle": [1, 2], "brushlabels": ["car"]}}
        square = {"x": 0, "y": 0, "width": 10, "height": 10, "rectanglelabels": ["car"]}
        box = {"type": "rectanglelabels", "value": square}
        return 200, {"results": [{"result": [brush, box]}, [{"result": [brush]}, {"result": [box]}]]}

    server = serve(brushes)
    client = LabelStudioBackend(server.url, policy=ALLOWED, outputs=["bbox"])

    outputs = client.predict([image("1"), image("2")])

    assert [r["type"] for r in outputs[0].regions] == ["bbox"] and outputs[0].error is None
    # Several predictions for a task: the first is used.
    assert outputs[1].regions == []
    assert "no result of the backend could be converted (1 unsupported)" in (outputs[1].error or "")


def test_label_studio_basic_auth_comes_from_the_url_credentials(serve: Callable) -> None:
    server = serve(ls_backend)
    url = server.url.replace("http://", "http://ml:p%40ss@")
    client = LabelStudioBackend(url, policy=ALLOWED, outputs=["bbox"])

    assert client.health() == {"status": "UP", "model_class": "Detector"}
    assert server.requests[0].headers["Authorization"] == "Basic bWw6cEBzcw=="
    assert "p%40ss" not in client.url and client.url == server.url


def test_a_label_studio_backend_needs_a_config_or_outputs() -> None:
    with pytest.raises(ValueError, match="label_config"):
        LabelStudioBackend("http://127.0.0.1:9", policy=ALLOWED)
    with pytest.raises(ValueError, match="object tag"):
        LabelStudioBackend("http://127.0.0.1:9", policy=ALLOWED, label_config="<View><Header/></View>")


# --- Label Studio configs and conversion, no server -------------------------------------------------


def test_label_config_lists_the_labels_under_one_control_per_region_type() -> None:
    config = label_config(
        modality="image",
        outputs=["bbox", "rotated_bbox", "classification"],
        labels={"bbox": ["car", 'a "quoted" & <odd> label'], "classification": ["day", "night"]},
    )

    root = SafeET.fromstring(config)
    assert [(el.tag, el.get("name"), el.get("toName")) for el in root] == [
        ("Image", "image", None),
        ("RectangleLabels", "bbox", "image"),
        ("Choices", "choice", "image"),
    ]
    assert [el.get("value") for el in root[1]] == ["car", 'a "quoted" & <odd> label']
    assert [el.get("value") for el in root[2]] == ["day", "night"]
    assert task_field(config) == ("image", False)


def test_label_config_for_video_tracks_pairs_a_rectangle_with_its_labels() -> None:
    root = SafeET.fromstring(label_config(modality="video", outputs=["video_track"], labels=["car"]))

    assert [el.tag for el in root] == ["Video", "Labels", "VideoRectangle"]


@pytest.mark.parametrize(
    ("modality", "outputs"),
    [("pointcloud", ["cuboid"]), ("image", ["mask"]), ("text", ["bbox"]), ("image", [])],
)
def test_label_config_refuses_what_label_studio_cannot_express(modality: str, outputs: list[str]) -> None:
    with pytest.raises(ValueError):
        label_config(modality=modality, outputs=outputs)


def test_task_field_reads_an_operators_config() -> None:
    assert task_field('<View><Text name="t" value="$review"/><Choices name="c" toName="t"/></View>') == (
        "review",
        True,
    )
    assert task_field('<View><Text name="t" value="$doc" valueType="url"/></View>') == ("doc", False)
    with pytest.raises(ValueError, match="not valid XML"):
        task_field('<!DOCTYPE x [<!ENTITY a "aaaa">]><View><Image value="&a;"/></View>')


def test_keypoints_and_textareas_keep_the_models_vocabulary() -> None:
    results = [
        {"id": "k", "type": "keypointlabels", "value": {"x": 50, "y": 50, "keypointlabels": ["nose"]}},
        {"id": "k", "from_name": "ocr", "type": "textarea", "value": {"text": ["A1"]}},
    ]

    regions, errors = ls_results_to_regions(results, image("1", width=10, height=20), 0.6)

    assert errors == []
    assert regions[0]["geometry"] == {"points": [[5.0, 10.0, 2]]}
    assert regions[1]["type"] == "transcription" and regions[1]["label"] == "ocr"
    assert regions[1]["geometry"] == {"text": "A1", "region": "k"}
