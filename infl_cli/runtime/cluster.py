"""Leave-one-out on a Dask cluster (``--cluster``; needs ``pip install -e '.[cluster]'``).

``--cluster tcp://HOST:PORT`` sends the LOO chunks to the workers of a running Dask scheduler;
``--cluster local:N`` starts a ``LocalCluster`` of N worker processes, one thread each, and
shuts it down afterwards. Without ``--cluster`` none of this module's Dask code runs (Dask is
not even imported).

**What reaches a worker, once.** The driver builds the factored Hessian (the float32 inverse,
204 MB on MNIST) and scatters it to every worker with the model weights (``broadcast=True``).
Each worker loads the training data itself from the data folder the model records (it must
be visible at the same path; ``mnist-tiny`` ships with the package), checks its fingerprint,
and builds the rest of the problem (the core/rim design and the exact gradient at Ŵ, about
5 s on MNIST), cached for all the chunks it runs. That ships 204 MB per worker instead of
the ~760 MB of derived arrays, and everything a worker builds is computed with exact
integer products, so it equals the driver's bit for bit.

**Nothing lost, nothing twice.** Chunks are tasks; results stream back as they finish, in any
order, into ``loo.partial.safetensors`` (:class:`~infl_cli.runtime.chunks.PartialResults`). A killed
worker's tasks are rerun elsewhere by the scheduler (a LocalCluster's nanny also restarts the
worker); a killed driver is rerun and continues from the checkpoint. A chunk's result does
not depend on where it ran or on the number of threads (:func:`~infl_cli.engines.logreg.loo.delta_pass`),
so the artifact equals an in-process run's.
"""

from __future__ import annotations

import re
import time

from infl_cli.errors import BadInput, InflError

CONNECT_TIMEOUT = 10.0  # seconds to reach a scheduler, and for a LocalCluster to start
_ADDRESS = re.compile(r"^(tcp|tls)://([A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(\d{1,5})$")
_LOCAL = re.compile(r"^local:(-?\d+)$")
_PROBLEMS: dict = {}  # on a worker: the problem of each run it serves, built once


def parse(spec: str) -> tuple[str, object]:
    """("local", N) or ("address", "tcp://host:port") from a ``--cluster`` value."""
    spec = spec.strip()
    local = _LOCAL.match(spec)
    if local:
        n = int(local.group(1))
        if n < 1:
            raise BadInput(f"--cluster local:N needs N ≥ 1 worker processes, got {spec!r}")
        return "local", n
    address = _ADDRESS.match(spec)
    if address and 0 < int(address.group(3)) < 65536:
        return "address", spec
    raise BadInput(f"--cluster must be local:N or tcp://HOST:PORT (a Dask scheduler), "
                    f"got {spec!r}")


def validate_cluster(cluster: str | None, timeout: float | None, device: str | None = None,
                     check_installed: bool = True) -> None:
    """A bad ``--cluster`` fails before anything runs (Dask is imported only with one). The
    workers solve on their CPUs: ``--cluster`` with a CUDA ``device`` (a name or a torch
    device) is refused."""
    if cluster is None:
        return
    parse(cluster)
    if device is not None and not str(device).strip().lower().startswith(("cpu", "auto")):
        raise BadInput(f"--cluster solves the LOO chunks on the Dask workers' CPUs; it does "
                       f"not combine with --device {device} (one GPU runs all 55,000 MNIST "
                       "removals in seconds: leave out --cluster, or use --device cpu)")
    if timeout is not None and not timeout > 0:
        raise BadInput(f"--cluster-timeout must be > 0, got {timeout}")
    if check_installed:
        check_available()


def check_available() -> None:
    """A one-line error when the ``cluster`` extra (Dask distributed) is not installed."""
    try:
        import distributed  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("distributed", "dask"):
            raise InflError("--cluster needs the cluster extra (Dask distributed): "
                            "pip install -e '.[cluster]'") from None
        raise InflError(f"--cluster: Dask distributed failed to import ({exc}); reinstall it "
                        "with pip install -e '.[cluster]'") from None
    except Exception as exc:  # installed but broken
        raise InflError(f"--cluster: Dask distributed failed to import "
                        f"({type(exc).__name__}: {exc}); reinstall it with "
                        "pip install -e '.[cluster]'") from None


def _solve_remote(recipe, shared, lo: int, hi: int, removed, selected, job):
    """A Dask task: one chunk, on a worker's cached copy of the problem."""
    from infl_cli.runtime.chunks import timed_chunk

    problem = _PROBLEMS.get(recipe.key)
    if problem is None:
        _PROBLEMS.clear()  # one run at a time per worker: free the previous one
        problem = _PROBLEMS[recipe.key] = recipe.build(shared)
    results, stats = timed_chunk(job, problem, removed, selected)
    return lo, hi, results, stats


class ClusterRunner:
    """A ``runner`` of a chunked stage's store (:func:`~infl_cli.stages.loo.solve_store`) that
    solves the chunks on Dask. ``recipe_factory()`` gives the picklable recipe from which each
    worker rebuilds the problem once: ``recipe.key`` names the problem across tasks,
    ``recipe.shared(problem)`` is what the driver's problem broadcasts to every worker (the
    logistic model's factored Hessian), ``recipe.build(shared)`` the worker's problem
    (:class:`~infl_cli.engines.logreg.remote.ProblemRecipe`)."""

    def __init__(self, spec: str, recipe_factory, timeout: float = CONNECT_TIMEOUT):
        self.kind, self.target = parse(spec)
        self.spec, self.recipe_factory, self.timeout = spec, recipe_factory, timeout
        self.facts = {}

    def _connect(self):
        import logging

        import distributed

        if self.kind == "local":
            try:
                cluster = distributed.LocalCluster(
                    n_workers=self.target, threads_per_worker=1, processes=True,
                    dashboard_address=None, silence_logs=logging.ERROR)
            except Exception as exc:
                raise InflError(f"could not start a local cluster of {self.target} workers "
                                f"({type(exc).__name__}: {exc})") from None
            return distributed.Client(cluster, timeout=f"{self.timeout}s"), cluster
        try:
            return distributed.Client(self.target, timeout=f"{self.timeout}s"), None
        except (OSError, TimeoutError) as exc:
            raise InflError(f"could not reach a Dask scheduler at {self.target} within "
                            f"{self.timeout:g} s ({type(exc).__name__})") from None

    def __call__(self, problem_factory, store, job, update) -> dict:
        import distributed

        client, cluster = self._connect()
        try:
            workers = len(client.scheduler_info()["workers"])
            if workers == 0:
                client.wait_for_workers(1, timeout=self.timeout)
                workers = len(client.scheduler_info()["workers"])
            problem = problem_factory()  # the driver's copy: its factored Hessian is shipped
            start = time.perf_counter()
            made = self.recipe_factory()
            shared = client.scatter(made.shared(problem), broadcast=True, hash=False)
            recipe = client.scatter(made, broadcast=True, hash=False)
            scatter_seconds = time.perf_counter() - start
            start = time.perf_counter()
            futures = []
            for i, lo, hi in store.pending():
                removed, selected = store.chunk_inputs(lo, hi)
                futures.append(client.submit(_solve_remote, recipe, shared, lo, hi, removed,
                                             selected, job, pure=False, retries=2,
                                             key=f"infl-loo-chunk-{i}-{id(store)}"))
            solved = 0
            for future in distributed.as_completed(futures):
                try:
                    lo, hi, results, stats = future.result()
                except InflError:
                    raise
                except Exception as exc:
                    raise InflError(f"a LOO chunk failed on the cluster "
                                    f"({type(exc).__name__}: {exc})") from None
                status = store.finish(lo, hi, results, stats)
                solved += hi - lo
                update(advance=hi - lo,
                       status=f"{status}, {len(client.scheduler_info()['workers'])} workers")
            seconds = time.perf_counter() - start
            return {"workers": workers, "solved": solved, "seconds": seconds,
                    "scatter_seconds": scatter_seconds, "cluster": self.spec}
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
