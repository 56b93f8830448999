"""The WSGI application gunicorn serves (each worker imports this module once, after it forks)."""

import gc
import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()


def settle() -> int:
    """Load what every request needs (the URLconf imports every view, serializer and service),
    then move what is loaded out of the garbage collector's sight; returns how many objects.

    Those objects live as long as the process, yet a full collection would walk all of them
    (some 170k in a worker): about 100 ms during which the worker answers nobody, once every few
    hundred requests. Frozen, they are never scanned again and a full collection only walks what
    requests left behind. Garbage is collected first, so nothing freed is kept for ever."""
    get_resolver().url_patterns  # noqa: B018  (the import is the point)
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


settle()
