"""Running blocking database work from async views.

Thread-pool threads are not request threads, so Django's request signals never close their
stale connections; after a database restart such a thread would keep a dead connection.
Each call here first closes this thread's connections that are broken or past CONN_MAX_AGE.
"""

from asgiref.sync import sync_to_async
from django.db import close_old_connections


def in_db_thread(fn):
    """An async version of `fn` that runs in the thread pool (not serialized on one thread, as
    Django's default would), on a usable database connection."""

    def call(*args, **kwargs):
        close_old_connections()
        return fn(*args, **kwargs)

    return sync_to_async(call, thread_sensitive=False)
