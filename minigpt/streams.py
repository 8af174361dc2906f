"""CUDA streams and events, and their stand-ins on the CPU, so that chapter 5's code runs on both.

On a GPU, work queued on a stream runs in order, later; an event recorded on a stream marks a point in that
order, which another stream can wait for (`wait`) and the CPU can block on (`synchronize`). On the CPU work is
done when the call returns: a `HostEvent` only notes the time it was recorded, for the timelines. A step queued
on a worker thread (chapter 5 on the CPU) ends at a `WorkerEvent`, which waits for that thread."""
from __future__ import annotations

import contextlib
import time

import torch


class HostEvent:
    """A CUDA event's stand-in on the CPU: recording notes the time (`time.perf_counter`); nothing to wait for."""

    time = 0.0

    def record(self, stream=None):
        self.time = time.perf_counter()

    def synchronize(self): ...


class WorkerEvent:
    """The end of work queued on a worker thread: `synchronize()` waits for it and raises what it raised."""

    def __init__(self, future):
        self.future = future

    def synchronize(self):
        self.future.result()


def new_event(cuda: bool, timing: bool = False):
    return torch.cuda.Event(enable_timing=timing) if cuda else HostEvent()


def on(stream):
    """`with on(stream):` queues the work that follows on `stream` (nothing to do on the CPU)."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def wait(stream, event):
    """Queue a wait for `event` on `stream`; with no stream (the CPU), wait for it here."""
    if stream is not None:
        stream.wait_event(event)
    else:
        event.synchronize()


class StepTimeline:
    """Each step's host times (when the CPU began, prepared, launched, resolved it) and the events around its
    device work, kept per step as they resolve, and turned into seconds on the run's clock at the end."""

    def __init__(self, cuda: bool):
        self.cuda, self.steps, self.ref = cuda, [], None

    def events(self, stream, clock) -> tuple:
        """(start, end) events for a step's device work; the first call also records the device clock's zero,
        matched to `clock`, the run's."""
        if self.ref is None:
            self.clock, self.ref, self.ref_host = clock, new_event(self.cuda, timing=True), clock.now()
            with on(stream):
                self.ref.record()
        return new_event(self.cuda, timing=True), new_event(self.cuda, timing=True)

    def add(self, host_times: dict, events: tuple):
        self.steps.append((host_times, events))

    def seconds(self) -> list[dict]:
        """Every step's host times, with "gpu_start" and "gpu_end": its device work, in seconds on the clock."""
        if self.cuda:
            torch.cuda.synchronize()
        return [{**times, "gpu_start": self.at_seconds(start), "gpu_end": self.at_seconds(end)}
                for times, (start, end) in self.steps]

    def at_seconds(self, event) -> float:
        """When `event` was reached, in seconds on the run's clock: a CUDA event by its time since the zero
        event (recorded `ref_host` seconds into the run), a host event by its own time."""
        if isinstance(event, HostEvent):
            return event.time - self.clock.start
        return self.ref.elapsed_time(event) / 1e3 + self.ref_host
