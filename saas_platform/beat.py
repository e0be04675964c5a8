"""Celery beat with its schedule and a lock in one Redis (celery-redbeat): however many workers
start with -B, one beat sends the schedule, and no schedule file is written.

redbeat's own lock blocks a beat's start until the lock is free and ends the beat when a
renewal fails; here each tick takes or renews it instead. A beat that does not hold it stands
by and tries again every CELERY_BEAT_MAX_LOOP_INTERVAL; one that stops (SIGTERM, a worker's
warm shutdown) releases it; a killed one's lapses after BEAT_LOCK_TIMEOUT_SECONDS.

The schedule in settings is the truth. Entries missing from Redis (deleted, Redis restarted
without its data) are written again on the next tick; keys that cannot be read (corrupt JSON,
another type) are deleted and the schedule is rebuilt from settings; a Redis that does not
answer is waited out. A beat never exits over its schedule: the worker it runs in would go on
without it, and nothing would say so.
"""

import logging

import redis
from redbeat.schedulers import RedBeatScheduler, ensure_conf
from redis.exceptions import LockError

from saas_platform.redis_clients import sync_client

logger = logging.getLogger("celery.beat")

# How long a beat waits after Redis failed to answer before it tries again.
RETRY_SECONDS = 1.0

# A lock key without an expiry is not a lock: every beat takes it with one (SET NX PX). Such a
# key (written by hand, or corrupt) is deleted, atomically, so it cannot block every beat for
# ever, and a real lock taken in between is left alone.
_DELETE_IF_NO_EXPIRY = """
if redis.call('pttl', KEYS[1]) == -1 then return redis.call('del', KEYS[1]) end
return 0
"""


class LockedRedisScheduler(RedBeatScheduler):
    def __init__(self, app, **kwargs):
        # redbeat's Redis is the platform's client for that URL (redis_clients builds them all).
        app.redbeat_redis = sync_client(ensure_conf(app).redis_url, decode_responses=True)
        self._set_up = False
        super().__init__(app, **kwargs)
        self._lock_name, self.lock_key = self.lock_key, None  # redbeat's lock code stays idle

    def setup_schedule(self):
        # Called as the scheduler is made: the schedule is written under the lock, in tick().
        self._set_up = False

    def tick(self, *args, **kwargs):
        try:
            if not self._hold_lock():
                return self.max_interval
            if self._set_up:
                self._restore_missing_entries()
            else:
                super().setup_schedule()
                self._set_up = True
            return super().tick(*args, **kwargs)
        except redis.ResponseError as error:  # WRONGTYPE: a key of the schedule holds another type
            return self._rebuild(error)
        except (redis.RedisError, OSError) as error:
            logger.warning("beat: Redis did not answer (%s); trying again", error)
            return RETRY_SECONDS
        except (ValueError, TypeError, KeyError, AttributeError) as error:  # does not decode
            return self._rebuild(error)
        except Exception:  # a beat that ends leaves its worker without one, and says nothing
            logger.exception("beat: tick failed; trying again")
            return self.max_interval

    def _hold_lock(self) -> bool:
        client = self.app.redbeat_redis
        if self.lock is not None:
            try:
                self.lock.extend(int(self.lock_timeout), replace_ttl=True)
                return True
            except LockError:
                logger.warning("beat: lost the lock (it lapsed or Redis lost it); standing by")
                self.lock = None
        client.eval(_DELETE_IF_NO_EXPIRY, 1, self._lock_name)
        lock = client.lock(self._lock_name, timeout=self.lock_timeout, thread_local=False)
        if not lock.acquire(blocking=False):
            return False
        self.lock = lock
        self._set_up = False
        logger.info("beat: holds the lock %s; sending the schedule", self._lock_name)
        return True

    def _static_keys(self) -> dict[str, str]:
        return {
            name: self.Entry.generate_key(self.app, name) for name in self.app.conf.beat_schedule
        }

    def _restore_missing_entries(self) -> None:
        """Write again the entries of settings that Redis lost (one round trip when none is)."""
        client = self.app.redbeat_redis
        keys = self._static_keys()
        schedule_key = self.app.redbeat_conf.schedule_key
        with client.pipeline(transaction=False) as pipe:
            for key in keys.values():
                pipe.zscore(schedule_key, key)
                pipe.hexists(key, "definition")
            found = pipe.execute()
        missing = [
            name
            for index, name in enumerate(keys)
            if found[2 * index] is None or not found[2 * index + 1]
        ]
        if missing:
            logger.warning("beat: entries missing from Redis, written again: %s", missing)
            schedule = self.app.conf.beat_schedule
            self.update_from_dict({name: schedule[name] for name in missing})
            client.sadd(self.app.redbeat_conf.statics_key, *missing)

    def _rebuild(self, error: Exception) -> float:
        """Delete the schedule's keys and write them again from settings (each entry then runs
        once at once: every scheduled task is idempotent)."""
        logger.error(
            "beat: the schedule in Redis cannot be read (%s); rebuilt from settings", error
        )
        conf = self.app.redbeat_conf
        try:
            self.app.redbeat_redis.delete(
                conf.schedule_key, conf.statics_key, *self._static_keys().values()
            )
            super().setup_schedule()
        except redis.RedisError as again:
            logger.warning("beat: could not rebuild the schedule yet (%s)", again)
        return RETRY_SECONDS
