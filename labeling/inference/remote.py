"""Models served over HTTP: Loupe's own small protocol (``NativeServer``) and Label Studio ML
backends used unchanged (``LabelStudioBackend``). The protocol is described in
docs/model-servers.md.

Both are Predictors. ``predict`` splits a batch into requests of at most ``batch_size`` items and
sends them (several at once, up to ``concurrency``); a request that still fails after its retries
answers every one of its items with ``ModelOutput.error`` instead of raising, so one bad request
leaves the rest of the batch predicted. Exceptions that escape are bugs or unreadable items (the
item's ``read()`` failing), which the job records for the whole batch.

Every request goes through ``storage.fetch.request_json``: the caller's ``FetchPolicy`` decides
which addresses may be reached (model servers usually live on internal networks, which the operator
allow-lists in ``allowed_networks``). Each request is bounded by the policy's ``total_timeout``,
or by this client's ``timeout`` when one is given, and its answer by ``max_response_bytes``.

Retries: connection failures (refused, reset, a broken answer), 5xx answers other than 501, and
429 are retried ``retries`` times, with exponential backoff and jitter, and never sooner than a
``Retry-After`` asks; a ``Retry-After`` beyond ``max_backoff`` ends the retries. 4xx answers are
never retried (the request itself is wrong), nor are timeouts: a server that used the whole
timeout is busy, and sending it the same work again doubles its load while the job waits.
The longest a request can take is therefore about (retries + 1) * timeout + the backoff sleeps.

Concurrency: at most ``concurrency`` requests at once to one base URL from this worker process,
whichever predictors and threads send them (the limit is per process: N Celery worker processes
may send N * concurrency). Predictors created with another limit for the same URL change it for
the whole process, the newest winning.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import threading
import time
import xml.etree.ElementTree as ET  # builds configs; parsing goes through defusedxml
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import defusedxml
import defusedxml.ElementTree as SafeET

from labeling.formats.base import ItemInfo, LabelClass, RecordError
from labeling.formats.labelstudio import results_to_regions
from labeling.inference.base import ModelInput, ModelOutput, PredictionFailed
from labeling.regions.spec import TOOLS
from labeling.regions.validate import ItemFacts
from storage.fetch import FetchPolicy, FetchRefused, JsonResponse, request_json

log = logging.getLogger(__name__)

MiB = 1024**2
_ERROR_DETAIL_CHARS = 300


# --- Limits shared by every predictor of this process ----------------------------------------------


class _Limiter:
    """At most ``limit`` requests at once; a waiting thread takes the next free slot."""

    def __init__(self, limit: int) -> None:
        self._condition = threading.Condition()
        self._active = 0
        self._limit = limit

    def set_limit(self, limit: int) -> None:
        with self._condition:
            self._limit = limit
            self._condition.notify_all()

    def __enter__(self) -> None:
        with self._condition:
            self._condition.wait_for(lambda: self._active < self._limit)
            self._active += 1

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._condition:
            self._active -= 1
            self._condition.notify()


_LIMITERS: dict[str, _Limiter] = {}
_LIMITERS_LOCK = threading.Lock()


def _limiter(key: str, limit: int) -> _Limiter:
    with _LIMITERS_LOCK:
        limiter = _LIMITERS.get(key)
        if limiter is None:
            limiter = _LIMITERS[key] = _Limiter(limit)
        else:
            limiter.set_limit(limit)
        return limiter


# --- The HTTP client both protocols share ---------------------------------------------------------


def _public_base(base_url: str) -> str:
    """``base_url`` checked, without credentials and trailing slash: safe to log and show."""
    if any(ord(char) <= 0x20 or char == "\x7f" for char in base_url):
        raise ValueError("the model server URL contains whitespace or a control character")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("the model server URL must be http:// or https:// with a host")
    if parts.query or parts.fragment:
        raise ValueError("the model server URL cannot have a query or a fragment")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date), if valid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _detail(response: JsonResponse) -> str:
    """What an error answer says, shortened for an item's error message."""
    data = response.data
    if isinstance(data, dict):
        for key in ("error", "detail", "message"):
            if isinstance(data.get(key), str):
                return data[key][:_ERROR_DETAIL_CHARS]
    text = response.text if data is None else str(data)
    return " ".join(text.split())[:_ERROR_DETAIL_CHARS]


class _Server:
    """The part every model server client shares: URLs, auth, limits, retries, batching."""

    def __init__(
        self,
        base_url: str,
        *,
        policy: FetchPolicy,
        token: str | None,
        timeout: float | None,
        retries: int,
        backoff: float,
        max_backoff: float,
        concurrency: int,
        batch_size: int,
        max_response_bytes: int,
    ) -> None:
        if (timeout is not None and timeout <= 0) or backoff < 0 or max_backoff < 0:
            raise ValueError("timeout must be positive, backoff and max_backoff not negative")
        if retries < 0 or concurrency < 1 or batch_size < 1 or max_response_bytes < 1:
            raise ValueError("retries must be >= 0; concurrency, batch_size and max_response_bytes >= 1")
        if token is not None and (not token or any(ord(c) < 0x21 or c == "\x7f" for c in token)):
            raise ValueError("the token must be non-empty, without spaces or control characters")
        self.url = _public_base(base_url)  # for messages and the concurrency limit
        self._base = base_url.rstrip("/")  # for requests: may carry credentials (Basic auth)
        # Each request gets this client's timeout (when given) and response limit on top of the
        # caller's policy, which decides where requests may go.
        self._policy = replace(policy, max_bytes=min(policy.max_bytes, max_response_bytes))
        if timeout is not None:
            self._policy = replace(
                self._policy, total_timeout=timeout, read_timeout=min(policy.read_timeout, timeout)
            )
        self._headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.concurrency = concurrency
        self.batch_size = batch_size
        self._limiter = _limiter(self.url, concurrency)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        """The parsed body of a 2xx answer to ``method /path``, retried as the module says.

        Raises PredictionFailed with what went wrong, once retrying is over or pointless.
        """
        what = f"{method} {self.url}/{path}"
        attempt = 0
        while True:
            attempt += 1
            tries = f" (after {attempt} attempts)" if attempt > 1 else ""
            try:
                with self._limiter:
                    response = request_json(
                        method, f"{self._base}/{path}", body, policy=self._policy, headers=self._headers
                    )
            except FetchRefused as exc:
                if exc.code != "connection_failed" or attempt > self.retries:
                    raise PredictionFailed(f"{what} failed{tries}: {exc.code}: {exc.message}") from exc
                delay = self._delay(attempt, None)
                log.info("model server %s failed (%s), retry %d in %.2fs", what, exc.code, attempt, delay)
            else:
                if 200 <= response.status < 300:
                    return response.data
                detail = _detail(response)
                failed = f"{what} answered {response.status}{tries}" + (f": {detail}" if detail else "")
                retryable = response.status == 429 or (response.status >= 500 and response.status != 501)
                if not retryable or attempt > self.retries:
                    raise PredictionFailed(failed)
                wait = _retry_after(response.headers.get("retry-after"))
                if wait is not None and wait > self.max_backoff:
                    raise PredictionFailed(
                        f"{failed}; it asks to retry after {wait:.0f}s, more than max_backoff "
                        f"({self.max_backoff:.0f}s)"
                    )
                delay = self._delay(attempt, wait)
                log.info(
                    "model server %s answered %d, retry %d in %.2fs", what, response.status, attempt, delay
                )
            time.sleep(delay)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter (half to all of the step), never under Retry-After."""
        step = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        # Jitter spreads the retries of many workers; it needs no cryptographic randomness.
        delay = step * random.uniform(0.5, 1.0)  # noqa: S311
        return max(delay, retry_after or 0.0)

    def predict(self, batch: Sequence[ModelInput]) -> list[ModelOutput]:
        """One output per input, in order; see the module docstring for what fails how."""
        outputs: list[ModelOutput | None] = [None] * len(batch)
        groups: dict[str, list[int]] = {}
        for index, item in enumerate(batch):
            group = self._group(item)
            if isinstance(group, ModelOutput):
                outputs[index] = group
            else:
                groups.setdefault(group, []).append(index)
        requests: list[tuple[str, list[int]]] = []
        for group, indices in groups.items():
            try:
                self._prepare(group)
            except PredictionFailed as exc:
                for index in indices:
                    outputs[index] = ModelOutput(error=str(exc))
                continue
            step = self.batch_size
            requests.extend((group, indices[i : i + step]) for i in range(0, len(indices), step))

        def send(request: tuple[str, list[int]]) -> list[ModelOutput]:
            group, indices = request
            chunk = [batch[index] for index in indices]
            try:
                answer = self._predict_request(group, chunk)
            except PredictionFailed as exc:
                return [ModelOutput(error=str(exc)) for _ in chunk]
            assert len(answer) == len(chunk)
            return answer

        if len(requests) <= 1 or self.concurrency == 1:
            answers = [send(request) for request in requests]
        else:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
                answers = list(pool.map(send, requests))
        for (_, indices), answer in zip(requests, answers, strict=True):
            for index, output in zip(indices, answer, strict=True):
                outputs[index] = output
        return [output if output is not None else ModelOutput(error="not predicted") for output in outputs]

    def _group(self, item: ModelInput) -> str | ModelOutput:
        """Which request group ``item`` goes in (items of one group may share a request), or its
        output already when it cannot be sent."""
        raise NotImplementedError

    def _prepare(self, group: str) -> None:
        """What must happen before a group's first request (Label Studio's /setup)."""

    def _predict_request(self, group: str, chunk: Sequence[ModelInput]) -> list[ModelOutput]:
        """One output per item of ``chunk``; PredictionFailed when the request as a whole failed."""
        raise NotImplementedError


_NO_URL = "the item has no URL a model server could read it from"


def _number_or_none(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


# --- Loupe's protocol -----------------------------------------------------------------------------


class NativeServer(_Server):
    """A model server speaking Loupe's protocol (docs/model-servers.md).

    ``GET {base}/health`` answers ``{"status": "ok", "model": …, "labels": […]}``;
    ``POST {base}/predict`` takes ``{"model_version", "params", "schema", "items": […]}`` and
    answers ``{"results": [{"key", "regions", "score", "error"}, …]}``, matched to the items by key.
    Media items are sent as their short-lived ``url``; text items also carry their ``text`` inline.
    A result's regions are returned as the server gave them: the pre-label job validates them.
    """

    def __init__(
        self,
        base_url: str,
        *,
        policy: FetchPolicy,
        model_version: str = "",
        params: Mapping[str, Any] | None = None,
        schema: Mapping[str, Any] | None = None,
        token: str | None = None,
        timeout: float | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        concurrency: int = 4,
        batch_size: int = 8,
        max_response_bytes: int = 64 * MiB,
    ) -> None:
        super().__init__(
            base_url,
            policy=policy,
            token=token,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            concurrency=concurrency,
            batch_size=batch_size,
            max_response_bytes=max_response_bytes,
        )
        self.model_version = model_version
        self.params = dict(params or {})
        self.schema = dict(schema) if schema is not None else None

    def health(self) -> dict[str, Any]:
        """The server's health answer; PredictionFailed when it is unreachable or not ok."""
        data = self._call("GET", "health")
        if not isinstance(data, dict) or data.get("status") != "ok":
            raise PredictionFailed(f"{self.url}/health is not ok: {str(data)[:_ERROR_DETAIL_CHARS]}")
        return data

    def _group(self, item: ModelInput) -> str | ModelOutput:
        return "" if item.url or item.modality == "text" else ModelOutput(error=_NO_URL)

    def _predict_request(self, group: str, chunk: Sequence[ModelInput]) -> list[ModelOutput]:
        items: list[dict[str, Any]] = []
        for item in chunk:
            entry: dict[str, Any] = {
                "key": item.key,
                "modality": item.modality,
                "media_type": item.media_type,
                "meta": item.meta,
                "name": item.name,
            }
            if item.url:
                entry["url"] = item.url
            if item.modality == "text":
                entry["text"] = item.text()
            items.append(entry)
        body = {
            "model_version": self.model_version,
            "params": self.params,
            "schema": self.schema,
            "items": items,
        }
        data = self._call("POST", "predict", body)
        results = data.get("results") if isinstance(data, dict) else None
        if not isinstance(results, list):
            raise PredictionFailed(f"POST {self.url}/predict answered without a `results` list")
        by_key: dict[str, Any] = {}
        for result in results:
            key = result.get("key") if isinstance(result, dict) else None
            if isinstance(key, int) and not isinstance(key, bool):
                key = str(key)
            if isinstance(key, str):
                by_key.setdefault(key, result)
        return [_native_output(by_key.get(item.key)) for item in chunk]


def _native_output(result: Mapping[str, Any] | None) -> ModelOutput:
    if result is None:
        return ModelOutput(error="the model server returned no result for this item")
    error = result.get("error")
    if error is not None:
        return ModelOutput(error=str(error)[:_ERROR_DETAIL_CHARS] or "the model server reported an error")
    regions = result.get("regions", [])
    if not isinstance(regions, list) or not all(isinstance(region, dict) for region in regions):
        return ModelOutput(
            error="malformed result from the model server: `regions` must be a list of objects"
        )
    score = result.get("score")
    if score is not None and _number_or_none(score) is None:
        return ModelOutput(error="malformed result from the model server: `score` must be a number or null")
    return ModelOutput(regions=regions, score=_number_or_none(score))


# --- Label Studio ML backends ---------------------------------------------------------------------
#
# The protocol as label-studio-ml-backend serves it and Label Studio speaks it, checked against
# their sources (HumanSignal/label-studio-ml-backend label_studio_ml/api.py and response.py;
# HumanSignal/label-studio label_studio/ml/api_connector.py MLApi.setup/_prep_prediction_req and
# ml/models.py _get_predictions_from_ml_backend):
# - POST /setup {"project": "<id>.<created-at timestamp>", "schema": <label config XML>,
#   "hostname", "access_token", "extra_params"} → {"model_version": …}. The backend takes the
#   project id from before the first "." and builds its model from the config.
# - POST /predict {"tasks": [{"id", "data": {<field>: …}}], "project", "label_config",
#   "params": {"context": null, …}} → {"results": [<one prediction or a list of them>, …]}, in
#   task order; a prediction is {"result": [<Label Studio results>], "score", "model_version"}.
#   Label Studio pairs tasks and results by position. Older backends answer a bare list.
# - GET /health → {"status": "UP", …}. Protection is HTTP Basic auth (BASIC_AUTH_USER/PASS on
#   the backend): give it as credentials in the base URL (http://user:pass@host:9090).
# - Media reach the backend as URLs in the task data, which it downloads; Loupe sends short-lived
#   URLs of the object store, so hostname and access_token (Label Studio's own address and a
#   user's API token, for files uploaded into Label Studio) are not needed and empty by default.

_OBJECT_TAGS = {
    "image": ("Image", "image"),
    "text": ("Text", "text"),
    "audio": ("Audio", "audio"),
    "video": ("Video", "video"),
}
_READS_OBJECTS = frozenset(
    {"Image", "Text", "HyperText", "Audio", "AudioPlus", "Video", "Paragraphs", "TimeSeries", "Pdf"}
)
_INLINE_OBJECTS = frozenset({"Text", "HyperText", "Paragraphs"})
# (region type, modality) → the controls asking for it: (tag, name, tag of its labels or None).
_CONTROLS: dict[tuple[str, str], tuple[tuple[str, str, str | None], ...]] = {
    ("bbox", "image"): (("RectangleLabels", "bbox", "Label"),),
    ("rotated_bbox", "image"): (("RectangleLabels", "bbox", "Label"),),
    ("polygon", "image"): (("PolygonLabels", "polygon", "Label"),),
    ("keypoints", "image"): (("KeyPointLabels", "keypoint", "Label"),),
    ("span", "text"): (("Labels", "label", "Label"),),
    ("time_segment", "audio"): (("Labels", "segment", "Label"),),
    ("time_segment", "video"): (("TimelineLabels", "segment", "Label"),),
    ("video_track", "video"): (("Labels", "track_labels", "Label"), ("VideoRectangle", "track", None)),
    **{("classification", m): (("Choices", "choice", "Choice"),) for m in _OBJECT_TAGS},
    **{("transcription", m): (("TextArea", "transcription", None),) for m in _OBJECT_TAGS},
}


def label_config(
    *, modality: str, outputs: Sequence[str], labels: Sequence[str] | Mapping[str, Sequence[str]] = ()
) -> str:
    """A minimal Label Studio labeling config (XML) for a model version.

    One object tag reads the item from the task field named after the modality (``$image``,
    ``$text``, ``$audio``, ``$video``); one control per kind of region the model returns lists
    the labels: ``labels`` for every control, or per region type (``{"bbox": [...],
    "classification": [...]}``); none for an open vocabulary. Control names follow Loupe's Label
    Studio export:

    ==============================  ==================================================
    ``bbox``, ``rotated_bbox``      ``<RectangleLabels name="bbox">`` (image)
    ``polygon``                     ``<PolygonLabels name="polygon">`` (image)
    ``keypoints``                   ``<KeyPointLabels name="keypoint">`` (image)
    ``span``                        ``<Labels name="label">`` (text)
    ``time_segment``                ``<Labels name="segment">`` (audio),
                                    ``<TimelineLabels name="segment">`` (video)
    ``video_track``                 ``<VideoRectangle name="track">`` with
                                    ``<Labels name="track_labels">`` (video)
    ``classification``              ``<Choices name="choice" choice="multiple">``
    ``transcription``               ``<TextArea name="transcription">``
    ==============================  ==================================================

    Raises ValueError for a modality or a region type Label Studio has no tag for here (DICOM,
    point clouds; masks, polylines, cuboids, relations). An operator can give a config of their
    own instead; ``task_field`` reads which task field it uses.
    """
    if modality not in _OBJECT_TAGS:
        raise ValueError(f"no Label Studio object tag for {modality!r} items")
    if not outputs:
        raise ValueError("a model returns at least one kind of region")
    tag, name = _OBJECT_TAGS[modality]
    view = ET.Element("View")
    ET.SubElement(view, tag, name=name, value=f"${name}")
    controls: dict[str, ET.Element] = {}
    for output in outputs:
        wanted = _CONTROLS.get((output, modality))
        if wanted is None:
            raise ValueError(f"no Label Studio control for {output!r} regions of {modality} items")
        names = labels.get(output, ()) if isinstance(labels, Mapping) else labels
        for control_tag, control_name, child in wanted:
            control = controls.get(control_name)
            if control is None:
                attributes = {"name": control_name, "toName": name}
                if control_tag == "Choices":
                    attributes["choice"] = "multiple"
                control = controls[control_name] = ET.SubElement(view, control_tag, attributes)
            if child is None:
                continue
            present = {element.get("value") for element in control}
            for label in names:
                if label not in present:
                    ET.SubElement(control, child, value=label)
                    present.add(label)
    return ET.tostring(view, encoding="unicode")


def task_field(config: str) -> tuple[str, bool]:
    """The task data field a Label Studio config reads the item from (``image`` for
    ``<Image value="$image"/>``), and whether the item goes there as inline text (a ``Text``,
    ``HyperText`` or ``Paragraphs`` tag without ``valueType="url"``) rather than as a URL.

    Raises ValueError when the config is not XML or no object tag reads a task field.
    """
    try:
        root = SafeET.fromstring(config)
    except (ET.ParseError, defusedxml.DefusedXmlException) as exc:
        raise ValueError(f"the Label Studio config is not valid XML: {exc}") from exc
    for element in root.iter():
        value = element.get("value") or ""
        if element.tag in _READS_OBJECTS and value.startswith("$") and len(value) > 1:
            inline = element.tag in _INLINE_OBJECTS and element.get("valueType") != "url"
            return value[1:], inline
    raise ValueError(
        "the Label Studio config has no object tag (Image, Text, Audio, Video…) reading a task field"
    )


def project_uid(project_id: int, created_at: datetime) -> str:
    """A project as Label Studio names it to backends: ``<id>.<created-at Unix timestamp>``."""
    return f"{project_id}.{int(created_at.timestamp())}"


class _EveryLabel(Mapping[str, LabelClass]):
    """Stands for the schema in the Label Studio converter: a model speaks its own labels, which
    the pre-label job maps onto the project's classes later, so every label is accepted here.
    A transcription (textarea) result is labelled with its control's ``from_name``."""

    def __getitem__(self, label: str) -> LabelClass:
        if not isinstance(label, str):
            raise KeyError(label)
        # One keypoint: a Label Studio keypoint is a single point.
        return LabelClass(name=label, tools=TOOLS, keypoints=("point",))

    def __contains__(self, label: object) -> bool:
        return isinstance(label, str)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


_EVERY_LABEL = _EveryLabel()


def ls_results_to_regions(
    results: list[Any], item: ModelInput, score: float | None = None
) -> tuple[list[dict[str, Any]], list[RecordError]]:
    """Label Studio results (one prediction's ``result`` list) as Loupe regions with the model's
    labels, and a RecordError (``where`` = ``result[k]``) for each result not converted.

    The conversion is the Label Studio import's (labeling/formats/labelstudio.py): percentages
    become pixels with the item's probed size (else the result's ``original_width/height``),
    rotated rectangles become ``rotated_bbox``, choices become classifications; each region's
    score is its result's ``score``, else the ``score`` given here (the prediction's).
    """
    facts = ItemFacts.from_item(item.modality, item.meta)
    info = ItemInfo(
        id=0,
        name=item.name,
        modality=item.modality,
        width=facts.width,
        height=facts.height,
        length=facts.length,
        duration=facts.duration,
        frames=facts.frames,
    )
    regions, errors = results_to_regions(results, info, _EVERY_LABEL, prediction=True, score=score)
    return regions, [replace(error, where=error.where.lstrip(".")) for error in errors]


class LabelStudioBackend(_Server):
    """A Label Studio ML backend (label-studio-ml-backend), used as it is.

    The backend builds its model from a Label Studio labeling config: ``label_config``, the
    operator's own, used for every item; else one made by ``label_config()`` for each modality
    met, from the model version's ``outputs`` (region types) and ``labels``, with the outputs
    that apply to that modality (an item none applies to gets an error). Items of different
    configs never share a request. ``/setup`` is sent once per config before its first request
    (again after it failed); the model version it answers is kept in ``setup_model_version``.

    ``project`` is sent as Label Studio's project id (see ``project_uid``): backends keep one model
    per project id, and one predictor serves every Loupe project, hence one id. ``params`` go to
    the backend's ``predict(tasks, context, **params)`` through the request's ``params``.

    Each item is a task ``{"id", "data": {<field>: <url, or the text inline>}}`` whose id is the
    item's key when every key of the request is an integer, else its position. Predictions come
    back in task order; a backend answering another number of predictions than tasks fails the
    whole request (pairing by position would give predictions to the wrong items). When a backend
    gives several predictions for a task, the first is used. Results that cannot be converted
    (brush masks, ellipses…) are logged and left out; an item none of whose results converted
    gets an error.
    """

    def __init__(
        self,
        base_url: str,
        *,
        policy: FetchPolicy,
        label_config: str | None = None,
        outputs: Sequence[str] = (),
        labels: Sequence[str] | Mapping[str, Sequence[str]] = (),
        project: str = "0.0",
        model_version: str = "",
        params: Mapping[str, Any] | None = None,
        hostname: str = "",
        access_token: str = "",
        extra_params: Mapping[str, Any] | None = None,
        token: str | None = None,
        timeout: float | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        concurrency: int = 4,
        batch_size: int = 8,
        max_response_bytes: int = 64 * MiB,
    ) -> None:
        super().__init__(
            base_url,
            policy=policy,
            token=token,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            concurrency=concurrency,
            batch_size=batch_size,
            max_response_bytes=max_response_bytes,
        )
        if label_config is None and not outputs:
            raise ValueError("give the backend a label_config, or the outputs to build one from")
        self._fields: dict[str, tuple[str, bool]] = {}  # config → (task field, inline text)
        if label_config is not None:
            self._fields[label_config] = task_field(label_config)
        self.label_config = label_config
        self.outputs = tuple(outputs)
        self.labels = labels
        self.project = project
        self.model_version = model_version
        self.params = dict(params or {})
        self.hostname = hostname
        self.access_token = access_token
        self.extra_params = dict(extra_params) if extra_params is not None else None
        self.setup_model_version: str | None = None
        self._by_modality: dict[str, str | ModelOutput] = {}
        self._set_up: set[str] = set()
        self._lock = threading.Lock()

    def config_for(self, modality: str) -> str:
        """The labeling config sent for items of ``modality``; ValueError when there is none."""
        if self.label_config is not None:
            return self.label_config
        fitting = [output for output in self.outputs if (output, modality) in _CONTROLS]
        if not fitting:
            raise ValueError(f"the model returns no region type Label Studio has for {modality} items")
        return label_config(modality=modality, outputs=fitting, labels=self.labels)

    def health(self) -> dict[str, Any]:
        """The backend's health answer (``{"status": "UP", …}``); PredictionFailed otherwise."""
        data = self._call("GET", "health")
        if not isinstance(data, dict) or str(data.get("status", "")).upper() not in ("UP", "OK"):
            raise PredictionFailed(f"{self.url}/health is not up: {str(data)[:_ERROR_DETAIL_CHARS]}")
        return data

    def setup(self, config: str | None = None) -> str | None:
        """Send ``/setup`` for ``config`` (the operator's by default) now; the model version the
        backend answers (None if it gives none)."""
        config = config if config is not None else self.label_config
        if config is None:
            raise ValueError("this backend builds a config per modality: say which to set up")
        body: dict[str, Any] = {
            "project": self.project,
            "schema": config,
            "hostname": self.hostname,
            "access_token": self.access_token,
            "extra_params": self.extra_params,
        }
        if self.model_version:
            body["model_version"] = self.model_version
        data = self._call("POST", "setup", body)
        version = data.get("model_version") if isinstance(data, dict) else None
        self.setup_model_version = str(version) if version not in (None, "") else None
        return self.setup_model_version

    def _group(self, item: ModelInput) -> str | ModelOutput:
        with self._lock:
            config = self._by_modality.get(item.modality)
            if config is None:
                try:
                    config = self.config_for(item.modality)
                    self._fields.setdefault(config, task_field(config))
                except ValueError as exc:
                    config = ModelOutput(error=str(exc))
                self._by_modality[item.modality] = config
        if isinstance(config, ModelOutput):
            return ModelOutput(error=config.error)
        _, inline = self._fields[config]
        if not (item.url or (inline and item.modality == "text")):
            return ModelOutput(error=_NO_URL)
        return config

    def _prepare(self, group: str) -> None:
        with self._lock:
            if group in self._set_up:
                return
        # Outside the lock: a slow /setup must not hold up other configs; two threads may both
        # send it the first time, which backends take as they take Label Studio's repeated setups.
        self.setup(group)
        with self._lock:
            self._set_up.add(group)

    def _predict_request(self, group: str, chunk: Sequence[ModelInput]) -> list[ModelOutput]:
        field, inline = self._fields[group]
        numeric = all(item.key.isascii() and item.key.isdigit() for item in chunk)
        tasks: list[dict[str, Any]] = []
        for position, item in enumerate(chunk, start=1):
            value = item.text() if inline and item.modality == "text" else item.url
            tasks.append({"id": int(item.key) if numeric else position, "data": {field: value}})
        body: dict[str, Any] = {
            "tasks": tasks,
            "project": self.project,
            "label_config": group,
            "params": {**self.params, "context": None},
        }
        if self.model_version:
            body["model_version"] = self.model_version
        data = self._call("POST", "predict", body)
        predictions = data.get("results") if isinstance(data, dict) else data
        if not isinstance(predictions, list):
            raise PredictionFailed(f"POST {self.url}/predict answered without a `results` list")
        if len(predictions) != len(tasks):
            raise PredictionFailed(
                f"POST {self.url}/predict answered {len(predictions)} predictions for {len(tasks)} tasks"
            )
        return [self._output(entry, item) for entry, item in zip(predictions, chunk, strict=True)]

    def _output(self, entry: Any, item: ModelInput) -> ModelOutput:
        if isinstance(entry, list) and not any(isinstance(p, dict) and "result" in p for p in entry):
            entry = {"result": entry}  # a bare list of results, or no prediction at all
        elif isinstance(entry, list):
            entry = next(p for p in entry if isinstance(p, dict) and "result" in p)
        if not isinstance(entry, dict) or not isinstance(entry.get("result"), list):
            return ModelOutput(error="malformed prediction from the backend: no `result` list")
        results = entry["result"]
        score = _number_or_none(entry.get("score"))
        regions, errors = ls_results_to_regions(results, item, score)
        if errors:
            codes = Counter(error.code for error in errors)
            summary = ", ".join(f"{n} {code}" for code, n in sorted(codes.items()))
            if not regions:
                first = errors[0]
                return ModelOutput(
                    score=score,
                    error=f"no result of the backend could be converted ({summary}): {first.message}",
                )
            log.warning(
                "Label Studio backend %s: %d of %d results for item %s not converted (%s): %s",
                self.url,
                len(errors),
                len(results),
                item.key,
                summary,
                errors[0].message,
            )
        return ModelOutput(regions=regions, score=score)
