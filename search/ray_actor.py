"""The Ray actor wrapping a TrialWorker (defined lazily so ``import search`` never imports ray)."""

from __future__ import annotations

from typing import Any


def make_actor_class() -> Any:
    import ray

    from .workers import TrialTask, TrialWorker, WorkerResult

    @ray.remote
    class TrialActor:
        def __init__(self, config_yaml: str, base_dir: str | None, worker_id: str):
            import socket

            ctx = ray.get_runtime_context()
            node = ctx.get_node_id()
            self.name = f"{worker_id}@{socket.gethostname()}:{node[:8]}"
            self.worker = TrialWorker(config_yaml, base_dir, self.name)

        def ready(self) -> str:
            return self.name

        def run(self, task: TrialTask) -> WorkerResult:
            return self.worker.run(task)

    return TrialActor
