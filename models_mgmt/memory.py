"""What a loaded model really holds, to check against its declared VRAM bytes.

With an NVIDIA GPU (NVML, through nvidia-ml-py), the GPU memory used by the engine's processes;
without one, their resident memory (VmRSS), which is what a CPU engine holds instead.
"""

import logging

logger = logging.getLogger(__name__)


def _gpu_bytes(pids: set[int]) -> int | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no GPU, no library: use resident memory
        return None
    try:
        used = 0
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if process.pid in pids and process.usedGpuMemory:
                    used += process.usedGpuMemory
        return used
    finally:
        pynvml.nvmlShutdown()


def measured_bytes(processes, model_id: str) -> tuple[int | None, str]:
    """(bytes, source) for a process engine's model: source is "gpu" or "resident"."""
    running = {engine.model_id: engine for engine in processes.running()}
    engine = running.get(model_id)
    if engine is None:
        return None, "none"
    gpu = _gpu_bytes({engine.pid})
    if gpu:
        return gpu, "gpu"
    return processes.resident_bytes(model_id), "resident"
