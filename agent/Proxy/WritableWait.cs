using System.Net.Sockets;
using System.Threading.Tasks.Sources;

namespace Weft.Proxy;

/// <summary>
/// One socket's reusable wait for room to send in <see cref="ReadWatch.Writable"/>, for a writer that sends with
/// send(2) without waiting and waits only when the socket is full. Not <c>Socket.SendAsync</c>: a send that has to
/// wait there puts the socket in .NET's socket engine's epoll set for the rest of its life, and the engine's thread
/// then wakes for every segment the socket receives, though the agent reads it through <see cref="ReadWatch.Shared"/>.
/// The writer goes on on the thread pool, never on the watch's one thread. One wait at a time; disposing ends it.
/// </summary>
internal sealed class WritableWait(Socket socket) : IRunOnWatch, IValueTaskSource, IDisposable
{
    private const long NotWatched = -1;  // ReadWatch ids are a generation and a slot, both from 0: never -1

    private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = true };
    private int _waiting;                 // 1 from arming until woken
    private long _watch = NotWatched;     // from the first wait until disposed
    private volatile bool _disposed;
    private CancellationTokenRegistration _cancel;

    /// <summary>Completes when the socket has room to send, an error or a hang-up; throws when cancelled or disposed.</summary>
    public ValueTask WaitAsync(CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        ObjectDisposedException.ThrowIf(_disposed, this);
        _core.Reset();
        var version = _core.Version;
        Volatile.Write(ref _waiting, 1);
        if (cancellationToken.CanBeCanceled)
        {
            _cancel = cancellationToken.UnsafeRegister(static (state, token) => ((WritableWait)state!).Wake(new OperationCanceledException(token)), this);
        }

        var first = _watch == NotWatched;
        if (first)
        {
            Interlocked.Exchange(ref _watch, ReadWatch.Writable.Register(this));
        }

        if (!ReadWatch.Writable.Arm(socket, _watch, first) || _disposed)
        {
            // Closed (nothing of it is watched now) or disposed meanwhile: the registration is freed either way.
            Wake(new ObjectDisposedException(nameof(Socket), "the socket was closed"));
            Free();
        }

        return new ValueTask(this, version);
    }

    void IThreadPoolWorkItem.Execute() => Wake(null);

    private void Wake(Exception? error)
    {
        if (Interlocked.Exchange(ref _waiting, 0) != 1)
        {
            return;
        }

        _cancel.Unregister();
        if (error is null)
        {
            _core.SetResult(true);
        }
        else
        {
            _core.SetException(error);
        }
    }

    void IValueTaskSource.GetResult(short token) => _core.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);

    /// <summary>Ends a wait under way and frees the registration (call once the socket is closed).</summary>
    public void Dispose()
    {
        _disposed = true;
        Wake(new ObjectDisposedException(nameof(Socket), "the socket was closed"));
        Free();
    }

    private void Free()
    {
        if (Interlocked.Exchange(ref _watch, NotWatched) is var watch and not NotWatched)
        {
            ReadWatch.Writable.Remove(watch);
        }
    }
}
