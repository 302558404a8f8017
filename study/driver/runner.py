"""Configurations trained outside a study: ``study.rerun``'s seeds and ``study.compare``'s paired folds, one after the
other in this process or all at once as Ray tasks (``parallel``). Either way a run trains with its configuration's
own thread count (``TrainConfig.threads``, which changes a seeded run's numbers), so both give the same numbers; a
Ray task asks for that many CPUs, and for the study's GPU share where the cluster has GPUs (and is held to it).

Each distinct decoded image set goes to Ray's object store once. A task's progress lines come back through a Ray
queue and this process prints them: Ray's own streaming of a worker's output may drop a task's last lines when Ray
shuts down right after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from trainable import UserError


def run_each(task: Callable, jobs: list[dict], data_for: Callable, parallel: bool = False, gpus: float = 0.0,
             log=print) -> Iterator[tuple[dict, dict]]:
    """``task(cfg=..., data=..., report=..., gpu_share=..., **rest)`` for each job (a dict of its keyword arguments,
    ``cfg`` among them), on ``data_for(cfg)``; yields (job, result) as each ends: in order here, as they finish on Ray."""
    if not parallel:
        for job in jobs:
            yield job, task(data=data_for(job["cfg"]), report=log, gpu_share=0.0, **job)
        return
    import ray
    from ray.util.queue import Queue

    from study.driver.session import start_ray

    log(start_ray(None, log_to_driver=True))  # anything else a task prints (a warning) still reaches this console
    try:
        share = gpus if ray.cluster_resources().get("GPU", 0) else 0.0
        stored: dict[tuple, object] = {}

        def ref(cfg):
            key = (cfg.data_dir, cfg.image_size, cfg.split_seed)
            if key not in stored:
                stored[key] = ray.put(data_for(cfg))
            return stored[key]

        threads = max(job["cfg"].threads for job in jobs)
        log(f"{len(jobs)} run(s) as Ray tasks, each with {threads} CPU(s)" + (f" and {share:g} GPU" if share else ""))
        lines = Queue(actor_options={"num_cpus": 0})  # takes no CPU from the runs
        remote = ray.remote(task)
        pending = {remote.options(num_cpus=job["cfg"].threads, num_gpus=share).remote(data=ref(job["cfg"]), report=lines.put,
                                                                                      gpu_share=share, **job): job for job in jobs}
        while pending:
            finished, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            # a task puts each line before it goes on (put waits), so a finished task's lines are all here now
            for line in lines.get_nowait_batch(lines.qsize()):
                log(line)
            if finished:
                job = pending.pop(finished[0])
                try:
                    result = ray.get(finished[0])
                except ray.exceptions.RayTaskError as exc:  # a run that cannot train as asked: its one line, not Ray's traceback
                    from study.driver.adapter import TrialError

                    if isinstance(exc.cause, (TrialError, UserError)):
                        raise UserError(str(exc.cause)) from None
                    raise
                yield job, result
    finally:
        ray.shutdown()


def hold_to_gpu_share(gpu_share: float) -> None:
    """In a task given ``gpu_share`` of a GPU: it runs on it or fails at once, and is held to its share of its memory
    (as a study's trials are)."""
    if gpu_share:
        import ray

        from study.driver.adapter import cap_gpu_memory, check_gpu

        check_gpu(ray.get_gpu_ids())
        cap_gpu_memory(gpu_share)
