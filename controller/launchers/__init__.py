"""Launchers run one query each: `local` (a subprocess per query) is the embedded default, `kubernetes` runs
one pod per query."""

from __future__ import annotations

from controller.launchers.base import Launcher
from controller.settings import Settings


def make_launcher(settings: Settings) -> Launcher:
    if settings.launcher == "kubernetes":
        from controller.launchers.kubernetes.launcher import KubernetesLauncher

        return KubernetesLauncher(settings)

    from controller.launchers.local.launcher import LocalLauncher

    return LocalLauncher(
        python=settings.worker_python,
        work_dir=settings.data_dir / "scratch",
        enable_test_hooks=settings.enable_test_hooks,
        memory_enforcement=settings.memory_enforcement,
    )
