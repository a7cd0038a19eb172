using System.Buffers;
using System.Net.Sockets;

namespace Weft.Proxy;

/// <summary>
/// A tunnel's socket under its <see cref="System.Net.Security.SslStream"/>, which reads one TLS record (at most
/// 16 KiB and its header) at a time: when the socket holds more than the read asks for, the read takes it, up to
/// <see cref="ReadAheadBytes"/>, into a pooled buffer that the next record reads are served from, so records that
/// arrived together cost one receive. The buffer goes back to the pool as soon as it is empty, and is never held
/// while waiting: a read that must wait does so in the caller's buffer, and a zero-byte read (how the HTTP/2
/// reader waits) in none. Writes go straight to the socket (SslStream writes a record at a time; gathering a
/// flush's records into one send measured no better).
/// </summary>
internal sealed class TunnelSocketStream(Socket socket) : Stream
{
    public const int ReadAheadBytes = 64 * 1024;

    private byte[]? _in;
    private int _inStart;
    private int _inEnd;

    public Socket Socket => socket;

    /// <summary>Receives that brought bytes (zero-byte waits not counted).</summary>
    internal long Receives { get; private set; }

    internal bool HoldsReadBuffer => _in is not null;

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
        if (_inEnd == _inStart)
        {
            if (buffer.Length == 0)
            {
                return await socket.ReceiveAsync(buffer, SocketFlags.None, cancellationToken).ConfigureAwait(false);
            }

            // Only bytes already waiting are read ahead: a read that has to wait (a handshake's, a stalled peer's)
            // waits in the caller's buffer, as on a NetworkStream, so a peer that sends nothing holds no pooled buffer.
            if (buffer.Length >= ReadAheadBytes || socket.Available <= buffer.Length)
            {
                var direct = await socket.ReceiveAsync(buffer, SocketFlags.None, cancellationToken).ConfigureAwait(false);
                Receives += direct > 0 ? 1 : 0;
                return direct;
            }

            _in ??= ArrayPool<byte>.Shared.Rent(ReadAheadBytes);
            int received;
            try
            {
                received = await socket.ReceiveAsync(_in.AsMemory(0, ReadAheadBytes), SocketFlags.None, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                ReturnIn();
                throw;
            }

            if (received == 0)
            {
                ReturnIn();
                return 0;
            }

            (_inStart, _inEnd) = (0, received);
            Receives++;
        }

        return Serve(buffer.Span);
    }

    public override int Read(Span<byte> buffer)
    {
        if (_inEnd == _inStart)
        {
            return socket.Receive(buffer, SocketFlags.None);
        }

        return Serve(buffer);
    }

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        try
        {
            while (!buffer.IsEmpty)
            {
                var sent = await socket.SendAsync(buffer, SocketFlags.None, cancellationToken).ConfigureAwait(false);
                buffer = buffer[sent..];
            }
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
            // back to the pool under it.
            socket.Dispose();
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
            ArrayPool<byte>.Shared.Return(held);
        }
    }
}
