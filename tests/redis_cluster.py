"""A real three-master Redis Cluster on loopback, for the contract tests that must hold on a
cluster as well as on one Redis.

`redis_cluster` (session scope) starts three `redis-server --cluster-enabled yes` on free ports,
joins them with `redis-cli --cluster create`, waits for `cluster_state:ok`, yields the URL
(`redis+cluster://127.0.0.1:P1`) and stops the servers at the end. `redis_url` runs a test once
on the single Redis of REDIS_URL and once on the cluster, with settings.REDIS_URL set to it and
its data flushed.
"""

import random
import shutil
import signal
import socket
import subprocess
import time

import pytest
import redis
from redis.cluster import RedisCluster

from saas_platform.redis_clients import is_cluster

MASTERS = 3
BUS_OFFSET = 10000  # a cluster node also listens on its port + 10000 (the cluster bus)


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_cluster_ports(count: int) -> list[int]:
    """Free ports below the ephemeral range whose cluster-bus port (port + 10000) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        port = random.randrange(20000, 30000)  # noqa: S311 - not for security
        if port not in ports and _is_free(port) and _is_free(port + BUS_OFFSET):
            ports.append(port)
    return ports


def _wait_until(check, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready in {timeout}s")
        time.sleep(0.1)


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """The URL of a three-master Redis Cluster, started for this test session."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if not server or not cli:
        pytest.skip("redis-server and redis-cli are needed for the Redis Cluster tests")
    folder = tmp_path_factory.mktemp("redis-cluster")
    processes: list[subprocess.Popen] = []
    ports = _free_cluster_ports(MASTERS)
    try:
        for port in ports:
            log = open(folder / f"redis-{port}.log", "wb")  # noqa: SIM115 - closed below
            with log:
                processes.append(subprocess.Popen(
                    [server, "--port", str(port), "--bind", "127.0.0.1",
                     "--cluster-enabled", "yes",
                     "--cluster-config-file", str(folder / f"nodes-{port}.conf"),
                     "--cluster-node-timeout", "5000", "--dir", str(folder),
                     "--save", "", "--appendonly", "no", "--daemonize", "no"],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                ))  # fmt: skip
        for port in ports:
            node = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
            _wait_until(node.ping, f"redis-server on {port}")
            node.close()
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        for port in ports:
            node = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
            _wait_until(
                lambda node=node: node.cluster("INFO").get("cluster_state") == "ok",
                f"the cluster, as node {port} sees it",
            )
            node.close()
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        _stop(processes)


def flush(url: str) -> None:
    """Empty the Redis (every master of a cluster) that `url` names."""
    if is_cluster(url):
        client = RedisCluster.from_url(url.replace("+cluster://", "://", 1))
        try:
            client.flushdb(target_nodes=RedisCluster.PRIMARIES)
        finally:
            client.close()
    else:
        with redis.Redis.from_url(url) as client:
            client.flushdb()


def url_of(request, which: str) -> str:
    """The URL for `which`: "single" (REDIS_URL, the test Redis) or "cluster" (started once)."""
    from django.conf import settings

    if which == "cluster":
        return request.getfixturevalue("redis_cluster")
    if not settings.REDIS_URL or is_cluster(settings.REDIS_URL):
        pytest.skip("REDIS_URL names no single Redis")
    return settings.REDIS_URL


@pytest.fixture(params=["single", "cluster"])
def redis_url(request, settings):
    """Each test that takes it runs on one Redis and on a Redis Cluster, as settings.REDIS_URL,
    starting empty."""
    url = url_of(request, request.param)
    settings.REDIS_URL = url
    flush(url)
    return url
