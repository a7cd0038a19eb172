using System.Buffers;
using System.Net.Sockets;

namespace Weft.Proxy;

/// <summary>
/// A client's first bytes, read from its socket just before its tunnel stream opens so that they go out with the CONNECT
/// request instead of after its answer (<see cref="Hbone.HboneClientConnection.ConnectAsync"/>): a new connection's first
/// round trip then crosses the tunnel once, not twice. Only what the client has already sent is taken, by a recv(2) that
/// never waits, so a client that waits for its server to speak first is not held up. At most <see cref="Size"/> bytes;
/// what follows them, and everything when the budget is spent, goes through the relay once the stream is answered.
/// </summary>
internal sealed class FirstBytes(Socket client, FirstBytesBudget budget) : IDisposable
{
    /// <summary>The most taken ahead of the answer: a request's headers, or a TLS ClientHello with a post-quantum key share.</summary>
    public const int Size = 4096;

    private byte[]? _buffer;
    private int _length = -1;   // -1 until read

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
            if (budget.TryTake())
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
        return _buffer is null ? default : _buffer.AsMemory(0, _length);
    }

    public void Dispose() => Release();

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
        if (Interlocked.Increment(ref _held) <= max)
        {
            return true;
        }
        Interlocked.Decrement(ref _held);
        Interlocked.Increment(ref _spent);
        return false;
    }

    public void Return() => Interlocked.Decrement(ref _held);

    public void StreamCarried() => Interlocked.Increment(ref _carried);
}
