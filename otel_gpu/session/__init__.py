"""``otel_gpu.start()`` in a training script: the training process and its collector process.

The property the design keeps: the training loop never pays for collection or export. Reading
/proc, cgroup files, sockets and the driver means a system call at every step, and a thread gives
up the interpreter's lock at each one; next to a CPU-bound loop the lock comes back only when the
loop's thread is made to switch (every 5 ms in CPython), so a collection of a few milliseconds
stretches over seconds. Turning a Snapshot into hundreds of points and encoding them is
milliseconds of CPU every interval too. So a child process does that work.

The child (``child_main``) is a fresh interpreter, ``python -m otel_gpu.session.child_main``, not
a fork or a ``multiprocessing`` spawn, which would copy the training process or import its main
module. It starts with the SDK and auto-instrumentation off, so that it never starts a session
of its own, speaks the messages of ``protocol`` over a socket pair, and ends when the pipe
closes. The training process's handle on it (``child.CollectorChild``) spawns it, waits for it
to be ready and starts it again after a back-off (1 s, 5 s, 30 s, 2 min, 5 min) when it dies,
whatever its role. A child serves one of two roles:

- ``export`` (``Mode.EXPORT_CHILD``, the default, when the session builds its own providers,
  and when the application's MeterProvider only exports as the environment says, which
  ``mirror`` tells; the child then takes that provider's resource and interval):
  the child assembles the whole pipeline with the training process's resource and the same
  ``OTEL_*`` settings, and exports on the interval. The training process keeps its tracker, which
  only writes each step into a ``steps.StepBuffer``; twice per interval the handle sends the
  steps written since the last time and the tracker's recorded failures (a ``StepReport``, a few
  kilobytes). The child replays the steps into the training instruments and derives the training
  signals for the insight rules from them (each step carries its data-wait ratio; the child
  counts steps). The training process's own OTLP exporters are relays (``relay``), so it loads
  neither gRPC nor protobuf.
- ``sources`` (``Mode.SOURCES_CHILD``, when the application brings other providers or
  ``metric_exporters=``): the instruments live on those providers in the training process
  (``in_process``), and each collection asks the child for a Snapshot of the sources. The
  tracker writes into its ``StepBuffer`` here too, and a drain thread (``drain``) replays the
  steps into the training instruments on those providers twice per interval.

``Mode.IN_PROCESS`` (``OTEL_GPU_COLLECT_IN_PROCESS=true``, or no child could start) collects in
the training process. The mode is chosen once (``modes.choose_mode``), with the fallbacks as a
list. Under torchrun each rank reports its own device and local rank 0 the host (``scope``).
"""
