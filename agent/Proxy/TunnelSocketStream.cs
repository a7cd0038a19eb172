using System.Diagnostics;
using System.Net.Sockets;
using System.Threading.Tasks.Sources;
using Weft.Hbone;

namespace Weft.Proxy;

/// <summary>
/// A tunnel's socket under its <see cref="System.Net.Security.SslStream"/>, which reads one TLS record (at most
/// 16 KiB and its header) at a time: when the socket holds more than the read asks for, the read takes it, up to
/// <see cref="ReadAheadBytes"/>, into a pooled buffer that the next record reads are served from, so records that
/// arrived together cost one receive. The buffer goes back to the pool as soon as it is empty, and is never held
/// while waiting: a read that must wait, a zero-byte one (how the HTTP/2 reader waits) included, waits for readiness
/// holding no buffer. Writes go straight to the socket with send(2) without waiting (SslStream writes a record at a
/// time; gathering a flush's records into one send measured no better), and only a full socket makes a write wait, in
/// <see cref="ReadWatch.Writable"/> (<see cref="WritableWait"/>): the socket never enters .NET's socket engine.
/// <para>
/// A read waits for bytes in <see cref="ReadWatch.Shared"/> (recv(2) without waiting, then one readiness), not in a
/// pending .NET receive: the socket engine would wake its thread and then a thread-pool worker for every record that
/// arrives. Until <see cref="ReadOnWatch"/> (the handshake: certificate checks are not for the watch's threads) the
/// reader goes on on the thread pool; after it, on the watch thread that saw the bytes, so the HTTP/2 reader decrypts,
/// parses and hands each DATA frame to its socket without a hop. The HTTP/2 read loop never blocks (every wait in
/// it is an await). One readiness runs the reader for at most <see cref="WatchTurnBytes"/> or, counted at each read,
/// <see cref="WatchTurnTime"/> (a peer's tiny records make much work of few bytes: each is a DATA frame and a send);
/// past that it goes on on the thread pool, so a busy tunnel does not keep a watch thread from the agent's other sockets.
/// </para>
/// <para>
/// It tells the HTTP/2 reader when records are read ahead, so that a stream's DATA frames in them go to the stream's
/// socket together, and calls the reader back before a read waits or a turn moves to the thread pool, so that nothing
/// joined is held meanwhile (<see cref="IReadAheadTransport"/>).
/// </para>
/// </summary>
internal sealed class TunnelSocketStream(Socket socket, int watchTurnBytes = TunnelSocketStream.WatchTurnBytes, TimeSpan? watchTurnTime = null)
    : Stream, IRunOnWatch, IValueTaskSource, IReadAheadTransport
{
    public const int ReadAheadBytes = DataBuffers.Size;

    /// <summary>What the reader may read in one turn of a watch thread before it moves to the thread pool (tests give less).</summary>
    public const int WatchTurnBytes = 256 * 1024;

    /// <summary>
    /// How long one turn may last, checked before each read. 256 KiB of full records take about 0.3 ms here; the same
    /// bytes as one-byte records are some 12,000 DATA frames and sends, tens of milliseconds.
    /// </summary>
    public static readonly TimeSpan WatchTurnTime = TimeSpan.FromMilliseconds(1);

    private readonly long _turnTicks = (long)((watchTurnTime ?? WatchTurnTime).TotalSeconds * Stopwatch.Frequency);

    private byte[]? _in;
    private int _inStart;
    private int _inEnd;

    // The one wait for readiness at a time (SslStream reads one at a time): 1 from arming until woken.
    private ManualResetValueTaskSourceCore<bool> _wait;
    private int _waiting;
    private const long NotWatched = -1;  // ReadWatch ids are a generation, a shard and a slot below the last: never -1
    private long _watch = NotWatched;    // the registration in ReadWatch.Shared, from the first wait until disposed
    private readonly int _shard = ReadWatch.Shared.NextShard();
    private volatile bool _onWatch;      // after the handshake: a readiness runs the reader on the watch thread
    private volatile bool _disposed;
    private CancellationTokenRegistration _cancel;
    private readonly WritableWait _room = new(socket);  // a writer's wait for room to send (registered when first used)
    private int _turnBytes;              // read since the last readiness, while on a watch thread
    private long _turnStart;             // when the last readiness ran the reader on a watch thread
    private Action? _beforeWait;         // the HTTP/2 reader's: hands over the DATA it joined before the reader waits

    public Socket Socket => socket;

    /// <summary>The read watch's shard that waits for this socket: the streams it carries wait for their sockets there too.</summary>
    public int Shard => _shard;

    /// <summary>The shard of the tunnel under <paramref name="transport"/> (an HBONE connection's stream), or -1 (any).</summary>
    public static int ShardUnder(Stream transport) => transport switch
    {
        TunnelSocketStream tunnel => tunnel.Shard,
        TunnelTlsStream tls => tls.Tunnel.Shard,
        _ => -1,
    };

    /// <summary>Receives that brought bytes (zero-byte waits not counted).</summary>
    internal long Receives { get; private set; }

    /// <summary>Readinesses after which the reader ran on the watch's thread.</summary>
    internal long WatchTurns { get; private set; }

    internal bool HoldsReadBuffer => _in is not null;

    public bool HasReadAhead => _inEnd != _inStart;

    public Action? BeforeWait
    {
        set => _beforeWait = value;
    }

    /// <summary>Holds a registration in the read watch (from its first wait until disposed).</summary>
    internal bool Watched => Interlocked.Read(ref _watch) != NotWatched;

    /// <summary>From now on a readiness runs the reader on the watch thread that saw it (call after the handshake).</summary>
    public void ReadOnWatch() => _onWatch = true;

    public override bool CanRead => true;

    public override bool CanWrite => true;

    public override bool CanSeek => false;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        try
        {
            return await ReadCoreAsync(buffer, cancellationToken).ConfigureAwait(false);
        }
        catch (SocketException e)
        {
            // As NetworkStream reports it: the caller (SslStream, then the HTTP/2 reader) sees an IOException.
            throw new IOException($"reading the tunnel's socket failed: {e.Message}", e);
        }
    }

    private async ValueTask<int> ReadCoreAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        if (ReadWatch.OnWatchThread && (_turnBytes >= watchTurnBytes || Stopwatch.GetTimestamp() - _turnStart >= _turnTicks))
        {
            // This readiness has run the reader long enough: the rest of the burst goes on on the thread pool.
            _turnBytes = 0;
            _beforeWait?.Invoke();
            await Task.Yield();
        }

        while (_inEnd == _inStart)
        {
            if (buffer.Length == 0)
            {
                // The HTTP/2 reader's wait: bytes (or the end) are there, or will be after one readiness.
                if (socket.Available == 0)
                {
                    _beforeWait?.Invoke();
                    await WaitReadableAsync(cancellationToken).ConfigureAwait(false);
                }

                return 0;
            }

            // Only bytes already waiting are read ahead: a read that has to wait (a handshake's, a stalled peer's)
            // waits holding no buffer, so a peer that sends nothing holds no pooled buffer.
            int received;
            if (buffer.Length < ReadAheadBytes && socket.Available > buffer.Length)
            {
                _in ??= DataBuffers.Default.Rent();
                received = RelayPumps.ReceiveNow(socket, _in.AsSpan(0, ReadAheadBytes));
                if (received > 0)
                {
                    (_inStart, _inEnd) = (0, received);
                    Receives++;
                    break;
                }

                ReturnIn();
            }
            else
            {
                received = RelayPumps.ReceiveNow(socket, buffer.Span);
                if (received > 0)
                {
                    Receives++;
                    Count(received);
                }
            }

            if (received >= 0)
            {
                return received;
            }

            _beforeWait?.Invoke();
            await WaitReadableAsync(cancellationToken).ConfigureAwait(false);
        }

        var served = Serve(buffer.Span);
        Count(served);
        return served;
    }

    private void Count(int bytes)
    {
        if (ReadWatch.OnWatchThread)
        {
            _turnBytes += bytes;
        }
    }

    /// <summary>Completes when the socket has bytes, its end or an error to read; throws when cancelled or disposed.</summary>
    private ValueTask WaitReadableAsync(CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        ObjectDisposedException.ThrowIf(_disposed, this);
        _wait.Reset();
        _turnBytes = 0;
        var version = _wait.Version;
        Volatile.Write(ref _waiting, 1);
        if (cancellationToken.CanBeCanceled)
        {
            _cancel = cancellationToken.UnsafeRegister(static (state, token) => ((TunnelSocketStream)state!).Wake(new OperationCanceledException(token)), this);
        }

        // The first wait registers, and adds the socket to the watch's epoll set; later ones re-arm it.
        var first = _watch == NotWatched;
        if (first)
        {
            Interlocked.Exchange(ref _watch, ReadWatch.Shared.Register(this, _shard));
        }

        var armed = ReadWatch.Shared.Arm(socket, _watch, first);
        if (!armed || _disposed)
        {
            Wake(new ObjectDisposedException(nameof(TunnelSocketStream), "the tunnel's socket was closed"));
            if (_disposed && Interlocked.Exchange(ref _watch, NotWatched) is var watch and not NotWatched)
            {
                // Disposed while this wait was being set up: its registration is this reader's to free.
                ReadWatch.Shared.Remove(watch);
            }
        }

        return new ValueTask(this, version);
    }

    /// <summary>The readiness, on the watch thread.</summary>
    void IThreadPoolWorkItem.Execute()
    {
        if (_onWatch)
        {
            Wake(null);
        }
        else
        {
            ThreadPool.UnsafeQueueUserWorkItem(static stream => stream.Wake(null), this, preferLocal: false);
        }
    }

    /// <summary>Ends the wait once: with the readiness on this thread, or with <paramref name="error"/> on the thread pool.</summary>
    private void Wake(Exception? error)
    {
        if (Interlocked.Exchange(ref _waiting, 0) != 1)
        {
            return;
        }

        _cancel.Unregister();
        if (error is null)
        {
            if (ReadWatch.OnWatchThread)
            {
                WatchTurns++;
                _turnStart = Stopwatch.GetTimestamp();
            }

            // The reader goes on here, on the watch thread when after the handshake.
            _wait.SetResult(true);
        }
        else
        {
            // Off the thread that cancelled or disposed: it may hold locks the reader's unwinding takes.
            ThreadPool.UnsafeQueueUserWorkItem(static state => state.Stream.Fail(state.Error), (Stream: this, Error: error), preferLocal: false);
        }
    }

    private void Fail(Exception error) => _wait.SetException(error);

    void IValueTaskSource.GetResult(short token) => _wait.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _wait.GetStatus(token);

    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _wait.OnCompleted(continuation, state, token, flags);

    public override int Read(Span<byte> buffer)
    {
        if (_inEnd == _inStart)
        {
            return socket.Receive(buffer, SocketFlags.None);
        }

        return Serve(buffer);
    }

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        // What fits goes now, on the writer's thread; only a full socket makes the write wait.
        while (!buffer.IsEmpty)
        {
            var sent = SendNow(buffer.Span);
            if (sent == 0)
            {
                return WriteWhenRoomAsync(buffer, cancellationToken);
            }

            buffer = buffer[sent..];
        }

        return default;
    }

    private async ValueTask WriteWhenRoomAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken)
    {
        while (!buffer.IsEmpty)
        {
            try
            {
                await _room.WaitAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (ObjectDisposedException e)
            {
                throw new IOException("writing to the tunnel's socket failed: it was closed", e);
            }

            buffer = buffer[SendNow(buffer.Span)..];
        }
    }

    private int SendNow(ReadOnlySpan<byte> bytes)
    {
        try
        {
            return RelayPumps.SendNow(socket, bytes);
        }
        catch (SocketException e)
        {
            throw new IOException($"writing to the tunnel's socket failed: {e.Message}", e);
        }
    }

    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        while (!buffer.IsEmpty)
        {
            buffer = buffer[socket.Send(buffer, SocketFlags.None)..];
        }
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            // A read may still be under way on another thread: its buffer is left to it (or to the GC), never given
            // back to the pool under it. A closed socket leaves the epoll set, so its wait is ended here.
            _disposed = true;
            socket.Dispose();
            _room.Dispose();
            Wake(new ObjectDisposedException(nameof(TunnelSocketStream), "the tunnel's socket was closed"));
            if (Interlocked.Exchange(ref _watch, NotWatched) is var watch and not NotWatched)
            {
                ReadWatch.Shared.Remove(watch);
            }
        }

        base.Dispose(disposing);
    }

    /// <summary>Copies from the read-ahead buffer, which is given back once empty.</summary>
    private int Serve(Span<byte> buffer)
    {
        var count = Math.Min(buffer.Length, _inEnd - _inStart);
        _in.AsSpan(_inStart, count).CopyTo(buffer);
        _inStart += count;
        if (_inStart == _inEnd)
        {
            ReturnIn();
        }

        return count;
    }

    private void ReturnIn()
    {
        if (_in is { } held)
        {
            _in = null;
            (_inStart, _inEnd) = (0, 0);
            DataBuffers.Default.Return(held);
        }
    }
}

/// <summary>A tunnel's TLS stream, which names the socket stream under it: the streams the tunnel carries wait in its shard.</summary>
internal sealed class TunnelTlsStream(TunnelSocketStream tunnel) : System.Net.Security.SslStream(tunnel, leaveInnerStreamOpen: false), IReadAheadTransport
{
    public TunnelSocketStream Tunnel => tunnel;

    /// <summary>Records read ahead by the socket stream (what SslStream itself holds is not seen: the reader then joins less).</summary>
    public bool HasReadAhead => tunnel.HasReadAhead;

    public Action? BeforeWait
    {
        set => tunnel.BeforeWait = value;
    }
}
