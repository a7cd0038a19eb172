using System.Diagnostics;
using System.Runtime.CompilerServices;

namespace Weft.Harness;

/// <summary>
/// A process the harness started inside a node or pod. Its stdout and stderr are captured line by
/// line as they arrive (tests read JSON lines while it runs). Signals go to its pid only, never by name.
/// </summary>
internal sealed class ManagedProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly object _gate = new();
    private readonly List<string> _stdout = [];
    private readonly List<string> _stderr = [];
    private bool _stdoutClosed;
    private TaskCompletionSource _changed = NewSignal();
    private int _disposed;
    private int? _exitCodeAfterDispose;

    internal ManagedProcess(ProcessStartInfo info, string description)
    {
        Description = description;
        info.RedirectStandardOutput = true;
        info.RedirectStandardError = true;
        info.RedirectStandardInput = true;
        info.UseShellExecute = false;
        _process = new Process { StartInfo = info, EnableRaisingEvents = true };
        _process.OutputDataReceived += (_, e) => Append(_stdout, e.Data, isStdout: true);
        _process.ErrorDataReceived += (_, e) => Append(_stderr, e.Data, isStdout: false);
        if (!_process.Start())
        {
            throw new HarnessException($"could not start {description}");
        }

        Pid = _process.Id;
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    /// <summary>
    /// This build's <c>weft</c> (or <c>WEFT_EXECUTABLE</c>) as a plain child of the current process, in its network
    /// namespace and cgroup: for commands that need neither root nor a node, such as <c>weft gateway</c> on loopback.
    /// </summary>
    public static ManagedProcess StartWeft(params string[] args) => StartWeft(new Dictionary<string, string>(), args);

    /// <summary>As <see cref="StartWeft(string[])"/>, with these variables added to the environment it inherits.</summary>
    public static ManagedProcess StartWeft(IReadOnlyDictionary<string, string> environment, params string[] args) =>
        Start(WeftExecutable.Command(args), $"weft {args.FirstOrDefault()}", environment);

    /// <summary>
    /// A command of <see cref="WeftExecutable.Command(IEnumerable{string})"/>'s making (any program of this build) as a
    /// plain child of the current process, with <paramref name="environment"/> added to what it inherits.
    /// </summary>
    public static ManagedProcess Start((string File, IReadOnlyList<string> Arguments) command, string description,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var info = new ProcessStartInfo(command.File);
        foreach (var argument in command.Arguments)
        {
            info.ArgumentList.Add(argument);
        }

        foreach (var (name, value) in environment ?? new Dictionary<string, string>())
        {
            info.Environment[name] = value;
        }

        return new ManagedProcess(info, description);
    }

    /// <summary>SIGTERM, then the exit code within <paramref name="timeout"/> (a clean shutdown exits 0).</summary>
    public Task<int> StopAsync(TimeSpan timeout)
    {
        Stop();
        return WaitForExitAsync(timeout);
    }

    /// <summary>Everything it printed so far, stdout then stderr, for a failure message.</summary>
    public string Output => $"{Stdout}\n{Stderr}";

    public int Pid { get; }

    /// <summary>What was started and where, for messages.</summary>
    public string Description { get; }

    public bool HasExited => Volatile.Read(ref _disposed) == 1 || _process.HasExited;

    /// <summary>The exit code once exited (128 + signal number when a signal ended it).</summary>
    public int? ExitCode => Volatile.Read(ref _disposed) == 1 ? _exitCodeAfterDispose : _process.HasExited ? _process.ExitCode : null;

    /// <summary>The process's stdin, e.g. to feed a peer interactively.</summary>
    public StreamWriter StandardInput => _process.StandardInput;

    public IReadOnlyList<string> StdoutLines
    {
        get
        {
            lock (_gate)
            {
                return _stdout.ToArray();
            }
        }
    }

    public IReadOnlyList<string> StderrLines
    {
        get
        {
            lock (_gate)
            {
                return _stderr.ToArray();
            }
        }
    }

    public string Stdout => string.Join('\n', StdoutLines);

    public string Stderr => string.Join('\n', StderrLines);

    /// <summary>Every stdout line from the first, then each new one as it arrives, until stdout closes.</summary>
    public async IAsyncEnumerable<string> ReadStdoutLinesAsync([EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var index = 0;
        while (true)
        {
            string? line = null;
            Task wait;
            lock (_gate)
            {
                if (index < _stdout.Count)
                {
                    line = _stdout[index++];
                    wait = Task.CompletedTask;
                }
                else if (_stdoutClosed)
                {
                    yield break;
                }
                else
                {
                    wait = _changed.Task;
                }
            }

            if (line != null)
            {
                yield return line;
            }
            else
            {
                await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
        }
    }

    /// <summary>Waits for the first stdout line (already printed or future) that matches.</summary>
    public async Task<string> WaitForStdoutLineAsync(Func<string, bool> match, TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await foreach (var line in ReadStdoutLinesAsync(cts.Token).ConfigureAwait(false))
            {
                if (match(line))
                {
                    return line;
                }
            }
        }
        catch (OperationCanceledException) when (cts.IsCancellationRequested)
        {
            throw new TimeoutException($"{Description}: no matching stdout line within {timeout.TotalSeconds:0.#} s; stdout: {Tail(StdoutLines)}; stderr: {Tail(StderrLines)}");
        }

        throw new HarnessException($"{Description} closed stdout (exit code {ExitCode?.ToString() ?? "none yet"}) without a matching line; stdout: {Tail(StdoutLines)}; stderr: {Tail(StderrLines)}");
    }

    /// <summary>Waits for the exit and for all output to be captured; returns the exit code.</summary>
    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        if (Volatile.Read(ref _disposed) == 1)
        {
            return _exitCodeAfterDispose ?? throw new HarnessException($"{Description} (pid {Pid}) was released before it exited");
        }

        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await _process.WaitForExitAsync(cts.Token).ConfigureAwait(false);
            return _process.ExitCode;
        }
        catch (OperationCanceledException) when (cts.IsCancellationRequested)
        {
            throw new TimeoutException($"{Description} (pid {Pid}) still running after {timeout.TotalSeconds:0.#} s; stderr: {Tail(StderrLines)}");
        }
        catch (InvalidOperationException) when (Volatile.Read(ref _disposed) == 1)
        {
            // the cluster's teardown (e.g. on Ctrl-C) released the process while we waited
            return _exitCodeAfterDispose ?? throw new HarnessException($"{Description} (pid {Pid}) was released before it exited");
        }
    }

    /// <summary>SIGTERM to this pid (no-op once exited).</summary>
    public void Stop() => Signal(Tmds.Linux.LibC.SIGTERM);

    /// <summary>SIGKILL to this pid (no-op once exited).</summary>
    public void Kill() => Signal(Tmds.Linux.LibC.SIGKILL);

    /// <summary>SIGKILL, wait for the exit, release; the captured output stays readable.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Volatile.Read(ref _disposed) == 1)
        {
            return;
        }

        Kill();
        try
        {
            await WaitForExitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            // the cluster's cgroup kill and removal will report it
        }

        Release();
    }

    /// <summary>Synchronous wait, for the cluster's teardown (it may run in a signal or ProcessExit handler).</summary>
    internal void WaitForExit(TimeSpan timeout)
    {
        if (Volatile.Read(ref _disposed) == 0 && timeout > TimeSpan.Zero)
        {
            _process.WaitForExit(timeout);
        }
    }

    /// <summary>For the cluster's teardown, which may run on a ProcessExit handler and so must not await.</summary>
    internal void KillAndWait(TimeSpan timeout)
    {
        if (Volatile.Read(ref _disposed) == 1)
        {
            return;
        }

        Kill();
        if (_process.WaitForExit(timeout))
        {
            DrainOutput();
        }

        Release();
    }

    /// <summary>
    /// WaitForExit with a timeout returns before the asynchronous stdout/stderr readers have seen the
    /// last lines; give them a bounded moment (a grandchild could hold the pipe open forever).
    /// </summary>
    private void DrainOutput()
    {
        using var drained = new CancellationTokenSource(TimeSpan.FromSeconds(2));
        try
        {
            _process.WaitForExitAsync(drained.Token).Wait();
        }
        catch (AggregateException)
        {
            // still open after 2 s: keep what arrived
        }
    }

    private void Release()
    {
        lock (_gate)
        {
            if (_disposed == 1)
            {
                return;
            }

            _exitCodeAfterDispose = _process.HasExited ? _process.ExitCode : null;
            Volatile.Write(ref _disposed, 1);
        }

        _process.Dispose();
    }

    public override string ToString() => $"{Description} (pid {Pid})";

    private void Signal(int signal)
    {
        // HasExited reaps nothing new; the runtime reaps our child, so until it reports the exit the pid is still ours
        if (!HasExited)
        {
            _ = Tmds.Linux.LibC.kill(Pid, signal);
        }
    }

    private void Append(List<string> lines, string? line, bool isStdout)
    {
        TaskCompletionSource toSignal;
        lock (_gate)
        {
            if (line == null)
            {
                _stdoutClosed |= isStdout;
            }
            else
            {
                lines.Add(line);
            }

            toSignal = _changed;
            _changed = NewSignal();
        }

        toSignal.TrySetResult();
    }

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    private static string Tail(IReadOnlyList<string> lines) =>
        lines.Count == 0 ? "(empty)" : string.Join(" | ", lines.Skip(Math.Max(0, lines.Count - 10)));
}
