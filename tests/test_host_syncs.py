"""Honest timing on a device that runs behind the host: the phase clock waits for it where it is read, and the
training steps' host synchronisations can be counted (train.count_host_syncs)."""
import warnings

import pytest
import torch


def test_phase_clock_charges_queued_device_work_to_the_phase_that_queued_it(monkeypatch):
    """The host leaves the training loop at t=2 but the device finishes the queued steps at t=5: training took 5 s,
    not 2, and the evaluation that follows only its own 1 s."""
    from stitchkit.training import clock

    now, device_done = [0.0], [0.0]
    monkeypatch.setattr(clock.time, "perf_counter", lambda: now[0])

    def synchronize():  # waiting for the device: the host's time moves on to when the device is done
        now[0] = max(now[0], device_done[0])

    c = clock.PhaseClock(synchronize=synchronize)
    c.switch("train")
    now[0], device_done[0] = 2.0, 5.0
    with c.phase("evaluation"):
        now[0] = device_done[0] = 6.0
    assert c.seconds()["train"] == 5.0 and c.seconds()["evaluation"] == 1.0

    unsynchronised = clock.PhaseClock()  # what the clock would say without waiting
    now[0] = 0.0
    unsynchronised.switch("train")
    now[0], device_done[0] = 2.0, 5.0
    with unsynchronised.phase("evaluation"):
        now[0] = 6.0
    assert unsynchronised.seconds()["train"] == 2.0


def test_device_synchronizer_only_where_work_is_queued():
    from stitchkit.training.clock import device_synchronizer

    assert device_synchronizer(torch.device("cpu")) is None
    assert callable(device_synchronizer(torch.device("cuda", 0)))  # not called here: no driver needed


def test_host_sync_counter_counts_sync_warnings_inside_steps_and_passes_others_on():
    from stitchkit.training.host_syncs import HostSyncCounter

    modes = []
    counter = HostSyncCounter(True, set_mode=modes.append)
    with warnings.catch_warnings(record=True) as outside:
        warnings.simplefilter("always")
        for syncs in (0, 2, 1):
            with counter.step():
                for _ in range(syncs):
                    warnings.warn("called a synchronizing CUDA operation", UserWarning)
                warnings.warn("a user's own warning", UserWarning)
        warnings.warn("called a synchronizing CUDA operation", UserWarning)  # outside a step: not counted
    assert counter.steps == 3 and counter.syncs == 3 and counter.per_step == 1.0
    assert modes == ["warn", "default"] * 3
    assert [str(w.message) for w in outside].count("a user's own warning") == 3

    with pytest.raises(RuntimeError, match="boom"):
        with counter.step():
            warnings.warn("called a synchronizing CUDA operation", UserWarning)
            raise RuntimeError("boom")
    assert counter.steps == 3 and counter.syncs == 3 and modes[-1] == "default"  # a failed step is not counted

    off = HostSyncCounter(False, set_mode=modes.append)
    with pytest.warns(UserWarning, match="synchronizing"), off.step():  # not counting: the warning is not touched
        warnings.warn("called a synchronizing CUDA operation", UserWarning)
    assert off.per_step is None and modes[-1] == "default" and len(modes) == 8
