using System.Buffers;
using System.Net.Sockets;

namespace Weft.Proxy;

/// <summary>
/// A client's first bytes, sent on its tunnel stream before the stream's answer (<see cref="Hbone.HboneClientConnection.ConnectAsync"/>),
/// so that a new connection's first round trip crosses the tunnel once, not twice: what the client has sent when the
/// stream opens is read by a recv(2) that never waits and goes with the CONNECT request; when it has sent nothing yet (the
/// agent usually opens the stream before a client's first write), its socket waits in the read watch until the answer
/// comes, and bytes that come first go out at once. A client whose server speaks first is never held up. At most
/// <see cref="Size"/> bytes; what follows them, and everything when the budget is spent, goes through the relay once the
/// stream is answered.
/// </summary>
internal sealed class FirstBytes(Socket client, FirstBytesBudget budget) : IRunOnWatch, IDisposable
{
    /// <summary>The most taken ahead of the answer: a request's headers, or a TLS ClientHello with a post-quantum key share.</summary>
    public const int Size = 4096;

    // The wait of LaterAsync: not started, the socket armed in the read watch, or over (read, cancelled or closed).
    private const int NotWaiting = 0, Watching = 1, Over = 2;

    private byte[]? _buffer;
    private int _length = -1;   // -1 until read
    private bool _budgetSpent;  // no buffer was free: the bytes wait for the answer
    private int _late;
    private long _watch;
    private TaskCompletionSource<ReadOnlyMemory<byte>>? _lateBytes;
    private CancellationTokenRegistration _stopWatching;

    /// <summary>How many bytes <see cref="Read"/> took from the client (0 before it ran).</summary>
    public int Length => Math.Max(_length, 0);

    /// <summary>True once a read found the client's connection reset: the stream carries nothing of it.</summary>
    public bool ClientFailed { get; private set; }

    /// <summary>
    /// Reads the client's first bytes the first time (empty when it has sent none yet, or the budget is spent); later calls,
    /// for a stream opened again after a refusal, give the same bytes. Throws <see cref="SocketException"/> when the client
    /// reset its connection.
    /// </summary>
    public ReadOnlyMemory<byte> Read()
    {
        if (_length < 0)
        {
            _length = 0;
            _budgetSpent = !budget.TryTake();
            if (!_budgetSpent)
            {
                _buffer = ArrayPool<byte>.Shared.Rent(Size);
                try
                {
                    _length = Math.Max(RelayPumps.ReceiveNow(client, _buffer.AsSpan(0, Size)), 0);
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException)
                {
                    ClientFailed = true;
                    Release();
                    throw new SocketException((int)SocketError.ConnectionReset);
                }
                if (_length == 0)
                {
                    // Nothing sent yet (or the client half-closed, which the relay reads again): no buffer is kept.
                    Release();
                }
            }
        }
        return Current;
    }

    /// <summary>
    /// For a client that had sent nothing when its stream opened: completes with its first bytes as soon as they come
    /// (read on the watch thread that sees them, at most <see cref="Size"/>), or empty once <paramref name="cancellationToken"/>
    /// is cancelled (the stream's answer came first: the bytes then go through the relay) or the client closed. Either
    /// way the socket has left the read watch when the task completes, so a relay may add it as its own. Once.
    /// </summary>
    public Task<ReadOnlyMemory<byte>> LaterAsync(CancellationToken cancellationToken)
    {
        if (_length > 0 || ClientFailed || _budgetSpent || _late != NotWaiting)
        {
            return Task.FromResult(Current);
        }

        _lateBytes = new TaskCompletionSource<ReadOnlyMemory<byte>>(TaskCreationOptions.RunContinuationsAsynchronously);
        _watch = ReadWatch.Shared.Register(this);
        Volatile.Write(ref _late, Watching);
        if (!ReadWatch.Shared.Arm(client, _watch, first: true) && Interlocked.CompareExchange(ref _late, Over, Watching) == Watching)
        {
            // Closed already: nothing of it is watched.
            ReadWatch.Shared.Remove(_watch);
            _lateBytes.TrySetResult(default);
        }

        _stopWatching = cancellationToken.UnsafeRegister(static state => ((FirstBytes)state!).StopWatching(), this);
        return _lateBytes.Task;
    }

    /// <summary>The client's bytes came (or its end, or an error): read them here, on the watch's thread.</summary>
    void IThreadPoolWorkItem.Execute()
    {
        if (Interlocked.CompareExchange(ref _late, Over, Watching) != Watching)
        {
            return;
        }

        ReadWatch.Shared.Leave(client, _watch);
        _length = -1;
        try
        {
            Read();
        }
        catch (SocketException)
        {
            // ClientFailed says so; the opener resets the stream.
        }
        _lateBytes!.TrySetResult(Current);
    }

    private void StopWatching()
    {
        if (Interlocked.CompareExchange(ref _late, Over, Watching) != Watching)
        {
            return;
        }

        ReadWatch.Shared.Leave(client, _watch);
        _lateBytes!.TrySetResult(default);
    }

    private ReadOnlyMemory<byte> Current => _buffer is null ? default : _buffer.AsMemory(0, Math.Max(_length, 0));

    public void Dispose()
    {
        _stopWatching.Dispose();
        StopWatching();
        Release();
    }

    private void Release()
    {
        if (_buffer is { } buffer)
        {
            _buffer = null;
            ArrayPool<byte>.Shared.Return(buffer);
            budget.Return();
        }
    }
}

/// <summary>
/// How many connections may hold their first bytes at once (<see cref="FirstBytes"/>), per agent: a burst of new
/// connections to destinations whose tunnels are slow to dial would otherwise hold a buffer each. Past the limit a
/// connection's first bytes wait for its stream's answer, as every connection's did before.
/// </summary>
internal sealed class FirstBytesBudget(int max)
{
    /// <summary>The agent's limit: 1,024 buffers, 4 MiB.</summary>
    public const int DefaultMax = 1024;

    private int _held;
    private long _carried;
    private long _spent;

    /// <summary>Buffers held now.</summary>
    public int Held => Volatile.Read(ref _held);

    /// <summary>Streams opened with the client's first bytes in their request.</summary>
    public long Carried => Interlocked.Read(ref _carried);

    /// <summary>Connections whose first bytes waited for the answer because every buffer was held.</summary>
    public long Spent => Interlocked.Read(ref _spent);

    public bool TryTake()
    {
        if (Limit.TryTake(ref _held, max))
        {
            return true;
        }
        Interlocked.Increment(ref _spent);
        return false;
    }

    public void Return() => Interlocked.Decrement(ref _held);

    public void StreamCarried() => Interlocked.Increment(ref _carried);
}
