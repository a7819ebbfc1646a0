"""A small informer: list, then watch from the list's resourceVersion, re-list on 410 Gone.

Like client-go's reflector in miniature: a background thread keeps a cache of raw objects
(dicts, exactly as the API server sent them) that readers take snapshots of without any API
call, and tells a shared ``Changes`` whenever something changed.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

__all__ = ["Changes", "Informer"]

log = logging.getLogger("orch.kube")
GONE = 410


class Changes:
    """A version number that informers bump and the controller waits on."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self.version = 0

    def bump(self) -> None:
        with self._condition:
            self.version += 1
            self._condition.notify_all()

    def wait(self, since: int, timeout_s: float) -> int:
        with self._condition:
            if self.version <= since and timeout_s > 0:
                self._condition.wait(timeout_s)
            return self.version


def _key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


class Informer:
    """Caches one kind of object, kept current by a watch; ``relists`` counts recoveries from 410."""

    def __init__(
        self,
        list_fn: Callable[..., Any],
        *args: Any,
        changes: Changes,
        watch_timeout_s: int = 5,
        **selectors: str,
    ) -> None:
        self._list_fn = list_fn
        self._args = args
        self._selectors = {k: v for k, v in selectors.items() if v}
        self._changes = changes
        self._watch_timeout_s = watch_timeout_s
        self._objects: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stopped = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread: threading.Thread | None = None
        self.resource_version = ""
        self.relists = 0

    def start(self) -> Informer:
        self._thread = threading.Thread(
            target=self._run, name=f"informer-{self._list_fn.__name__}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        current = self._watch
        if current is not None:
            current.stop()
        if self._thread is not None:
            self._thread.join(timeout=self._watch_timeout_s + 2)

    def wait_synced(self, timeout_s: float = 10.0) -> bool:
        return self._synced.wait(timeout_s)

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get(f"{namespace}/{name}")

    def _relist(self) -> None:
        response = self._list_fn(*self._args, _preload_content=False, **self._selectors)
        listed = json.loads(response.data)
        with self._lock:
            self._objects = {_key(obj): obj for obj in listed.get("items") or []}
            self.resource_version = listed["metadata"]["resourceVersion"]
        self._synced.set()
        self._changes.bump()

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        with self._lock:
            if kind == "DELETED":
                self._objects.pop(_key(obj), None)
            elif kind in ("ADDED", "MODIFIED"):
                self._objects[_key(obj)] = obj
            self.resource_version = obj["metadata"].get("resourceVersion", self.resource_version)
        if kind != "BOOKMARK":
            self._changes.bump()

    def _watch_once(self) -> None:
        self._watch = watch.Watch()
        try:
            for event in self._watch.stream(
                self._list_fn,
                *self._args,
                resource_version=self.resource_version,
                timeout_seconds=self._watch_timeout_s,
                _request_timeout=self._watch_timeout_s + 5,
                **self._selectors,
            ):
                if self._stopped.is_set():
                    break
                self._apply(event["type"], event["raw_object"])
        finally:
            self._watch = None

    def _run(self) -> None:
        must_list = True
        while not self._stopped.is_set():
            try:
                if must_list:
                    self._relist()
                    must_list = False
                self._watch_once()
            except ApiException as error:
                if error.status == GONE:
                    log.info(
                        "watch from resourceVersion %s expired (410); listing again", self.resource_version
                    )
                    self.relists += 1
                else:
                    log.warning("watch failed (%s %s); listing again", error.status, error.reason)
                    self._stopped.wait(0.5)
                must_list = True
            except (HTTPError, OSError, ValueError) as error:
                if self._stopped.is_set():
                    return
                log.warning("watch connection failed (%s); listing again", error)
                must_list = True
                self._stopped.wait(0.5)
